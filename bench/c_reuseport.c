/*
 * c_reuseport.c WORKERS WORK --
 *
 *	The SO_REUSEPORT contender of the uneven-work benchmark: WORKERS
 *	processes, each with its own listener on one shared port, so the
 *	kernel hashes every new connection to one of them, busy or not. Each
 *	answers an HTTP/1.0 "hello" per connection after WORK: "uneven" is
 *	1 ms of blocking wait, or 100 ms for one request in ten, chosen at
 *	random. Prints "ready PORT" once every worker listens; the benchmark
 *	stops it by killing its process group.
 *
 * Copyright (c) 2026 The socketserver authors.
 * See the file "LICENSE" for information on usage and redistribution.
 */

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char response[] = "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n"
    "Content-Length: 6\r\nConnection: close\r\n\r\nhello\n";

static int
Listen(int port)
{
    struct sockaddr_in addr;
    int fd = socket(AF_INET, SOCK_STREAM, 0), on = 1;

    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on)) < 0) {
	perror("socket");
	exit(1);
    }
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short) port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *) &addr, sizeof(addr)) < 0
	    || listen(fd, SOMAXCONN) < 0) {
	perror("bind");
	exit(1);
    }
    return fd;
}

static void
Serve(int listener, int uneven)
{
    char buf[4096];

    srand((unsigned) getpid());
    for (;;) {
	int fd = accept(listener, NULL, NULL);

	if (fd < 0) {
	    continue;
	}
	if (read(fd, buf, sizeof(buf)) > 0) {
	    if (uneven) {
		struct timespec pause = {0, (rand() % 10 == 0 ? 100 : 1) * 1000000L};

		nanosleep(&pause, NULL);
	    }
	    if (write(fd, response, sizeof(response) - 1) < 0) {
		/* The client went away. */
	    }
	}
	close(fd);
    }
}

int
main(int argc, char **argv)
{
    struct sockaddr_in addr;
    socklen_t len = sizeof(addr);
    int workers, uneven, first, i, port, readyPipe[2];

    if (argc != 3) {
	fprintf(stderr, "usage: c_reuseport WORKERS none|uneven\n");
	return 2;
    }
    workers = atoi(argv[1]);
    uneven = (strcmp(argv[2], "uneven") == 0);
    first = Listen(0);
    getsockname(first, (struct sockaddr *) &addr, &len);
    port = ntohs(addr.sin_port);
    if (pipe(readyPipe) < 0) {
	perror("pipe");
	return 1;
    }
    for (i = 0; i < workers; i++) {
	if (fork() == 0) {
	    int listener = (i == 0) ? first : Listen(port);

	    close(readyPipe[0]);
	    if (write(readyPipe[1], "", 1) != 1) {
		return 1;
	    }
	    close(readyPipe[1]);
	    Serve(listener, uneven);
	}
    }
    close(first);
    close(readyPipe[1]);
    /* Ready once every worker listens: one byte from each. */
    for (i = 0; i < workers; i++) {
	char byte;

	if (read(readyPipe[0], &byte, 1) != 1) {
	    fprintf(stderr, "c_reuseport: a worker failed to start\n");
	    return 1;
	}
    }
    printf("ready %d\n", port);
    fflush(stdout);
    while (wait(NULL) > 0) {
    }
    return 0;
}
