// node_cluster.js WORKERS PORT WORK --
//
//	Node's cluster module, round-robin: the primary accepts every
//	connection and pushes it to the next worker, busy or not. Each worker
//	answers an HTTP/1.0 "hello" after WORK ("uneven": 1 ms of blocking
//	wait, or 100 ms for one request in ten, chosen at random; "none").
//	Prints "ready PORT" once every worker listens; the benchmark stops it
//	by killing its process group.
'use strict';
const cluster = require('node:cluster');
const http = require('node:http');

const [workers, port, work] = [Number(process.argv[2]), Number(process.argv[3]),
    process.argv[4] || 'none'];
cluster.schedulingPolicy = cluster.SCHED_RR;

if (cluster.isPrimary) {
    let listening = 0;
    for (let i = 0; i < workers; i++) {
        cluster.fork().on('listening', () => {
            if (++listening === workers) {
                console.log(`ready ${port}`);
            }
        });
    }
} else {
    const cell = new Int32Array(new SharedArrayBuffer(4));
    http.createServer((req, res) => {
        if (work === 'uneven') {
            // A blocking wait, as a synchronous database call would be.
            Atomics.wait(cell, 0, 0, Math.random() < 0.1 ? 100 : 1);
        }
        res.writeHead(200, {'Content-Type': 'text/plain', 'Content-Length': 6,
            'Connection': 'close'});
        res.end('hello\n');
    }).listen(port, '127.0.0.1');
}
