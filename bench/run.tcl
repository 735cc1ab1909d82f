# run.tcl --
#
#	Benchmarks socketserver against Tcl's own servers and a C ceiling,
#	side by side in one run, with wrk opening a new connection per
#	request (-H 'Connection: close'), except in the keepalive scenario.
#	Prints markdown tables.
#
#	Settings (environment): BENCH_DURATION seconds per row (default 3),
#	BENCH_ROUNDS rounds, interleaved, whose medians are reported
#	(default 3),
#	BENCH_WORKERS worker counts for the overhead scenario (default
#	"2 8 32 64"), BENCH_SCENARIOS (default "handoff overhead blocking
#	cpu uneven supervisor keepalive slowclient"), BENCH_SILENT silent
#	connections in the slowclient scenario (default 64, at most 1000),
#	BENCH_BASELINE directories (a list) each holding another
#	build of the package (pkgIndex.tcl and library), measured in rows of
#	their own beside this one: to compare a change with what it
#	replaces (not in the slowclient scenario; in the keepalive
#	scenario only a build with ::socketserver::socket release and
#	-ready, else its rows are left out), BENCH_SYSCALLS seconds of the
#	load whose system calls are counted per row (default 1; 0: none).
#
#	The handoff scenario measures the hand-off alone: one client, one
#	connection at a time, 8 idle workers, and per thread role the CPU
#	and voluntary context switches per connection
#	(/proc/PID/task/TID/schedstat and status), for this build and each
#	BENCH_BASELINE build.
#
#	The uneven scenario (8 workers, 16 concurrent clients, a blocking
#	1 ms per request but 100 ms for one in ten) compares how each design
#	hands connections to workers: socketserver (first come, first
#	served), the inherited-listener pre-fork, a C server with one
#	SO_REUSEPORT listener per worker (the kernel hashes), and Node's
#	cluster (round-robin push), with p50, p99 and p99.9 latency.
#
#	The keepalive and slowclient scenarios run every server with an
#	HTTP/1.1 keep-alive handler (Content-Length; the connection stays
#	open unless the client says "Connection: close"; every wait for a
#	request, the first too, bounded by 5 s): socketserver started with
#	-ready 5 -keepalive 5, its worker releasing the connection to the
#	serving process after each answer ([::socketserver::socket
#	release]); Tcl's own one-process server event-driven, a fileevent
#	per connection; the inherited-listener pre-fork serving the
#	connection a child accepted to its end; Apache prefork + mod_rivet
#	with KeepAlive On, MaxKeepAliveRequests 0 (unlimited),
#	KeepAliveTimeout 5 and Timeout 5 (bench/tcl_server.tcl and
#	bench/rivet.tcl). wrk's --timeout is 1 s there: its "timeouts" are
#	the requests answered later than that (left out of its latencies).
#	wrk counts no request that is never answered: "waiting" is how many
#	connections the server had not accepted, in its listening socket's
#	queue (/proc/net/tcp), the median of readings every 100 ms during
#	the load (with a connection per request a few are always there
#	between two accepts).
#	    keepalive   wrk's own keep-alive (no Connection: close), 64
#	                connections, 4 and 16 workers (and the one-process
#	                server). A pre-fork child, and an Apache child, holds
#	                one connection until the client closes it: the other
#	                connections are never answered, and show as
#	                "waiting".
#	    slowclient  BENCH_SILENT connections that connect and send
#	                nothing, held by bench/silent.tcl for the whole row
#	                (each one the server closes is opened again), beside
#	                the connection-per-request load of 16 clients; 4
#	                workers. socketserver is measured without them too:
#	                its p99 with them should not change, where a
#	                pre-fork child waits (5 s) on each one it accepts. A
#	                row that answered nothing shows "stalled". Apache
#	                on Linux accepts a connection only once data came
#	                (its default AcceptFilter http data, TCP_DEFER_ACCEPT
#	                for 30 s or so): its children never see these
#	                clients within a row.
#
#	The supervisor scenario runs the socketserver contender under its
#	supervisor, socketserver::prefork (8 workers), beside the bare one:
#	what supervising costs per connection, for this build and each
#	BENCH_BASELINE build.
#
#	Server CPU per request: the run time in nanoseconds of every thread
#	of every process in the server's process group
#	(/proc/PID/task/TID/schedstat), read just before and just after the
#	load, divided by the requests wrk completed. (/proc/PID/stat counts
#	whole clock ticks per process, which under-reports many workers that
#	each use a little CPU and so flatters multi-process servers.)
#
#	System calls per request (every row, if strace is installed): after
#	the measured load, strace -f -c attaches to every process of the
#	server's process group (and so to their threads and any child they
#	start), the row's wrk load runs again for BENCH_SYSCALLS seconds,
#	strace is stopped with SIGINT and its counts are divided by the
#	requests wrk completed. strace slows the server many times, so this
#	load is apart from the one that measures time; the count per request
#	hardly depends on speed, and on a virtual machine every call is dear.
#	A table gives the calls of each row by name. The targets end with,
#	for each BENCH_BASELINE build, the row where this build's system
#	calls, and its CPU, per request are highest against the baseline's.

# Every row is a wrk load: without wrk, stop before any server starts.
if {[auto_execok wrk] eq ""} {
    puts stderr "wrk is missing: make bench measures every server with it\
	(Debian: apt-get install wrk)"
    exit 1
}
set here [file dirname [file normalize [info script]]]
source [file join $here procstat.tcl]
# For ::socketserver::kill, which stops a server's process group without
# kill(1) (procps), and ::socketserver::signal (interrupted).
package require socketserver
set duration [expr {[info exists env(BENCH_DURATION)] ? $env(BENCH_DURATION) : 3}]
set rounds [expr {[info exists env(BENCH_ROUNDS)] ? $env(BENCH_ROUNDS) : 3}]
set overheadWorkers [expr {[info exists env(BENCH_WORKERS)] ? $env(BENCH_WORKERS) : "2 8 32 64"}]
set scenarios [expr {[info exists env(BENCH_SCENARIOS)] ? $env(BENCH_SCENARIOS) : "handoff overhead blocking cpu uneven supervisor keepalive slowclient"}]
set silentClients [expr {[info exists env(BENCH_SILENT)] ? $env(BENCH_SILENT) : 64}]
if {![string is integer -strict $silentClients] || $silentClients < 1 || $silentClients > 1000} {
    puts stderr "BENCH_SILENT must be a number of connections from 1 to 1000"
    exit 2
}
set baselines [expr {[info exists env(BENCH_BASELINE)] ? [lmap dir $env(BENCH_BASELINE) {file normalize $dir}] : {}}]
set syscallSeconds [expr {[info exists env(BENCH_SYSCALLS)] ? $env(BENCH_SYSCALLS) : 1}]
if {![string is integer -strict $syscallSeconds] || $syscallSeconds < 0 || $syscallSeconds > 60} {
    puts stderr "BENCH_SYSCALLS must be a number of seconds from 0 to 60"
    exit 2
}
set strace [expr {$syscallSeconds > 0 ? [auto_execok strace] : ""}]
if {$syscallSeconds > 0 && $strace eq ""} {
    puts stderr "no system call counts: strace is missing (Debian: apt-get install strace)"
}

# groupProcesses pgid --
#	A dict from the pid of every process in process group pgid to its
#	/proc/PID/stat fields (after the command name).
proc groupProcesses {pgid} {
    dict filter [processStats] script {pid fields} {
	expr {[lindex $fields 2] == $pgid}
    }
}

# threadsOfGroup pgid --
#	A dict from "ROLE" to {nanoseconds voluntary-context-switches} summed
#	over the threads of process group pgid, by role: the serving
#	process's main thread ("serving"), its other threads ("accept"), the
#	workers' main threads ("worker") and their other threads ("worker
#	helpers": Tcl 8's notifier thread, socketserver's watcher threads). A
#	process that exits between two readings takes its time with it: the
#	servers here keep theirs for the whole load.
proc threadsOfGroup {pgid} {
    set result {}
    foreach pid [dict keys [groupProcesses $pgid]] {
	foreach task [glob -nocomplain /proc/$pid/task/*] {
	    set tid [file tail $task]
	    if {[catch {
		set f [open $task/schedstat]
		set ns [lindex [read $f] 0]
		close $f
		set f [open $task/status]
		regexp {voluntary_ctxt_switches:\s+(\d+)} [read $f] -> switches
		close $f
	    }]} {
		continue
	    }
	    set role [expr {$pid == $pgid
		? ($tid == $pid ? "serving" : "accept")
		: ($tid == $pid ? "worker" : "worker helpers")}]
	    if {![dict exists $result $role]} {
		dict set result $role {0 0}
	    }
	    lassign [dict get $result $role] n c
	    dict set result $role [list [expr {$n + $ns}] [expr {$c + $switches}]]
	}
    }
    return $result
}

# totalNs threads --
#	The nanoseconds of a threadsOfGroup result, every role together.
proc totalNs {threads} {
    set total 0
    dict for {role figures} $threads {
	incr total [lindex $figures 0]
    }
    return $total
}

# groupAlive pgid --
#	Whether any process of the group is still running (not a zombie).
proc groupAlive {pgid} {
    foreach fields [dict values [groupProcesses $pgid]] {
	if {[lindex $fields 0] ne "Z"} {
	    return 1
	}
    }
    return 0
}

# The servers running, a dict from each one's pipe to its process group:
# what interrupted stops.
set servers {}

# startServer command --
#	Runs command in a new session (so its pid is its process group) and
#	waits for its "ready PORT" line. Returns {pipe pgid port}. The new
#	session keeps a terminal's SIGINT from the server: interrupted stops
#	it. Not spawn -parentdeath, for a run killed with SIGKILL: it would
#	signal the group's leader alone, and the workers of every server
#	(c_reference's, TclX's, Apache's and Node's children) stop only with
#	their process group; and the server would get a socket for standard
#	input and its standard error in the channel its "ready" line comes
#	on.
proc startServer {command} {
    set pipe [open |[list setsid {*}$command 2>@stderr] r]
    set pgid [pid $pipe]
    dict set ::servers $pipe $pgid
    set timer [after 20000 {set ::ready timeout}]
    fileevent $pipe readable [list apply {{pipe} {
	if {[gets $pipe line] >= 0 || [eof $pipe]} {
	    set ::ready $line
	}
    }} $pipe]
    vwait ::ready
    after cancel $timer
    fileevent $pipe readable {}
    if {![regexp {^ready (\d+)$} $::ready -> port]} {
	stopServer $pipe $pgid
	error "server did not start ($command): $::ready"
    }
    return [list $pipe $pgid $port]
}

# stopServer pipe pgid --
#	Kills the whole process group and waits until none of it is left.
proc stopServer {pipe pgid} {
    catch {::socketserver::kill TERM -$pgid}
    for {set i 0} {$i < 300 && [groupAlive $pgid]} {incr i} {
	after 10
    }
    if {[groupAlive $pgid]} {
	catch {::socketserver::kill KILL -$pgid}
    }
    catch {close $pipe}
    dict unset ::servers $pipe
}

# interrupted signal status --
#	Run when this process gets signal (INT, TERM or HUP), from the event
#	loop (the next vwait, or the update after the last round): kills
#	wrk and strace if they run, stops every server still running,
#	removes the files of strace and Apache and exits with status.
proc interrupted {signal status} {
    puts stderr "SIG$signal: stopping the servers"
    foreach chan [chan names] {
	if {![dict exists $::servers $chan] && ![catch {pid $chan} pids]} {
	    foreach process $pids {
		catch {::socketserver::kill KILL $process}
	    }
	}
    }
    dict for {pipe pgid} $::servers {
	stopServer $pipe $pgid
    }
    set tmp [expr {[info exists ::env(TMPDIR)] ? $::env(TMPDIR) : "/tmp"}]
    file delete -force $tmp/socketserver-bench-strace-[pid] $tmp/socketserver-bench-rivet-[pid]
    exit $status
}
foreach {signal status} {INT 130 TERM 143 HUP 129} {
    ::socketserver::signal $signal [list interrupted $signal $status]
}

# toMs text --
#	wrk's latency ("449.00us", "1.2ms", "1.01s") in milliseconds.
proc toMs {text} {
    regexp {^([\d.]+)(us|ms|s)$} $text -> value unit
    expr {$value * [dict get {us 0.001 ms 1.0 s 1000.0} $unit]}
}

# listenQueue port --
#	How many connections to 127.0.0.1:port wait in its listening
#	socket's queue, which the server has not accepted (the rx_queue
#	field of a LISTEN line of /proc/net/tcp); 0 if there is no such
#	socket.
proc listenQueue {port} {
    set f [open /proc/net/tcp]
    set lines [split [read $f] \n]
    close $f
    set local [format 0100007F:%04X $port]
    foreach line [lrange $lines 1 end] {
	lassign $line sl address remote state queues
	if {$address eq $local && $state eq "0A"} {
	    return [expr {"0x[lindex [split $queues :] 1]"}]
	}
    }
    return 0
}

# runWrk arguments port seconds --
#	Runs wrk with those arguments for seconds; meanwhile, every 100 ms
#	after the first 500, reads how many connections wait unaccepted in
#	the queue of port's listener (wrk itself counts no request that is
#	never answered). Returns {output waiting}: wrk's output (with its
#	errors: it fails when it cannot connect at all) and the median of
#	those readings. wrk stops after its duration whatever the server
#	does; should it not have exited 30 s later, it is killed.
proc runWrk {arguments port seconds} {
    set pipe [open |[list wrk -d ${seconds}s {*}$arguments 2>@1] r]
    fconfigure $pipe -blocking 0
    set ::wrkOutput ""
    set ::wrkDone 0
    fileevent $pipe readable [list apply {{pipe} {
	append ::wrkOutput [read $pipe]
	if {[eof $pipe]} {
	    set ::wrkDone 1
	}
    }} $pipe]
    set readings {}
    set start [clock milliseconds]
    set limit [expr {$start + ($seconds + 30) * 1000}]
    while {!$::wrkDone && [clock milliseconds] < $limit} {
	set timer [after 100 {set ::wrkDone $::wrkDone}]
	vwait ::wrkDone
	after cancel $timer
	set now [clock milliseconds]
	if {!$::wrkDone && $now >= $start + 500 && $now <= $start + $seconds * 1000} {
	    lappend readings [listenQueue $port]
	}
    }
    fileevent $pipe readable {}
    if {!$::wrkDone} {
	foreach process [pid $pipe] {
	    catch {::socketserver::kill KILL $process}
	}
	append ::wrkOutput "\nwrk killed: still running [expr {$seconds + 30}] s after it started"
    }
    fconfigure $pipe -blocking 1
    catch {close $pipe}
    list $::wrkOutput [expr {[llength $readings] ? [median $readings] : 0}]
}

# alive pid --
#	Whether process pid is running (not gone, not a zombie).
proc alive {pid} {
    if {[catch {
	set f [open /proc/$pid/stat]
	set text [read $f]
	close $f
    }]} {
	return 0
    }
    expr {[lindex [string range $text [string last ) $text]+2 end] 0] ne "Z"}
}

# tracedBy pids tracer --
#	Whether every thread of every process in pids that still runs is
#	traced by process tracer.
proc tracedBy {pids tracer} {
    foreach pid $pids {
	foreach task [glob -nocomplain /proc/$pid/task/*] {
	    if {[catch {
		set f [open $task/status]
		set text [read $f]
		close $f
	    }]} {
		continue
	    }
	    if {[regexp {TracerPid:\s+(\d+)} $text -> by] && $by != $tracer} {
		return 0
	    }
	}
    }
    return 1
}

# countSyscalls pgid arguments port --
#	Counts the system calls of every process of process group pgid
#	(their threads, and any child they start) while wrk loads port
#	with those arguments for BENCH_SYSCALLS seconds: strace -f -c
#	attached to each process before the load, stopped with SIGINT after
#	it. Returns a dict: total, the calls per request wrk completed, and
#	calls, a dict from each call's name to its calls per request; or an
#	empty dict, with the reason on stderr, if strace could not count or
#	wrk completed nothing. Bounded in time: strace must attach within
#	10 s and end within 10 s of its SIGINT, or it is killed.
proc countSyscalls {pgid arguments port} {
    global strace syscallSeconds
    set pids [dict keys [dict filter [groupProcesses $pgid] script {pid fields} {
	expr {[lindex $fields 0] ne "Z"}
    }]]
    set out [file join [expr {[info exists ::env(TMPDIR)] ? $::env(TMPDIR) : "/tmp"}] \
	socketserver-bench-strace-[pid]]
    file delete $out
    set pipe [open |[list {*}$strace -q -f -c -o $out \
	{*}[concat {*}[lmap pid $pids {list -p $pid}]] 2>@1] r]
    fconfigure $pipe -blocking 0
    set tracer [pid $pipe]
    set wrk ""
    set problem ""
    try {
	set deadline [expr {[clock milliseconds] + 10000}]
	while {[alive $tracer] && ![tracedBy $pids $tracer]
		&& [clock milliseconds] < $deadline} {
	    after 20
	}
	if {![alive $tracer] || ![tracedBy $pids $tracer]} {
	    set problem "strace did not attach to every thread within 10 s"
	} else {
	    lassign [runWrk $arguments $port $syscallSeconds] wrk
	}
    } finally {
	catch {::socketserver::kill INT $tracer}
	for {set i 0} {$i < 500 && [alive $tracer]} {incr i} {
	    after 20
	}
	if {[alive $tracer]} {
	    catch {::socketserver::kill KILL $tracer}
	    set problem "strace still ran 10 s after its SIGINT"
	}
	fconfigure $pipe -blocking 1
	set said [string trim [read $pipe]]
	catch {close $pipe}
    }
    set calls {}
    set total 0
    if {![catch {open $out} f]} {
	foreach line [split [read $f] \n] {
	    # % time, seconds, usecs/call, calls, errors (if any), name.
	    if {[regexp {^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$} \
		    $line -> n name] && $name ne "total"} {
		dict incr calls $name $n
		incr total $n
	    }
	}
	close $f
	file delete $out
    }
    set requests 0
    regexp {(\d+) requests in} $wrk -> requests
    if {$problem eq "" && ($total == 0 || $requests == 0)} {
	set problem "nothing counted ([expr {$said ne "" ? $said : "$requests requests"}])"
    }
    if {$problem ne ""} {
	puts stderr "  no system call count: $problem"
	return {}
    }
    dict create total [expr {double($total) / $requests}] \
	calls [dict map {name n} $calls {expr {double($n) / $requests}}]
}

# measure scenario design workers work connections ?silent? --
#	Starts one server (and, if silent > 0, that many silent
#	connections to it), loads it with wrk, stops it all (on an error
#	too); returns a row dict.
proc measure {scenario design workers work connections {silent 0}} {
    global here duration strace
    # The servers' handlers: HTTP/1.0 one-shot, or HTTP/1.1 keep-alive.
    set http [expr {$scenario in {keepalive slowclient} ? "keepalive" : "oneshot"}]
    if {$design eq "c"} {
	set command [list [file join $here c_reference] $workers 0 $work]
    } elseif {$design eq "reuseport"} {
	set command [list [file join $here c_reuseport] $workers $work]
    } elseif {$design eq "node"} {
	set probe [socket -server {} -myaddr 127.0.0.1 0]
	set free [lindex [fconfigure $probe -sockname] 2]
	close $probe
	set command [list node [file join $here node_cluster.js] $workers $free $work]
    } elseif {$design eq "rivet"} {
	set rivetDir [file join [expr {[info exists ::env(TMPDIR)] ? $::env(TMPDIR) : "/tmp"}] \
	    socketserver-bench-rivet-[pid]]
	file delete -force $rivetDir
	set command [list [info nameofexecutable] [file join $here rivet.tcl] \
	    $workers $work $rivetDir $http]
    } elseif {[regexp {^base(\d+)(-supervised)?$} $design -> i supervised]} {
	set command [list env TCLLIBPATH=[lindex $::baselines $i] [info nameofexecutable] \
	    [file join $here tcl_server.tcl] \
	    [expr {$supervised eq "" ? "socketserver" : "supervised"}] $workers 0 $work $http]
    } else {
	set command [list [info nameofexecutable] [file join $here tcl_server.tcl] \
	    $design $workers 0 $work $http]
    }
    set options [list -H "Connection: close"]
    if {$scenario eq "keepalive"} {
	set options {}
    }
    if {$http eq "keepalive"} {
	lappend options --timeout 1s
    }
    lassign [startServer $command] pipe pgid port
    try {
	# Let forked workers reach their first request before the clock
	# runs.
	after 300
	if {$silent > 0} {
	    # Bounded in time too, should this process die before it
	    # stops them.
	    lassign [startServer [list [info nameofexecutable] [file join $here silent.tcl] \
		$port $silent [expr {$duration + 60}]]] silentPipe silentPgid
	    after 200
	}
	set wrkArguments [list -t [expr {min(2, $connections)}] -c $connections \
	    --latency -s [file join $here p999.lua] {*}$options http://127.0.0.1:$port/]
	set threadsBefore [threadsOfGroup $pgid]
	lassign [runWrk $wrkArguments $port $duration] wrk waiting
	set threadsAfter [threadsOfGroup $pgid]
	set counted {}
	if {$strace ne ""} {
	    set counted [countSyscalls $pgid $wrkArguments $port]
	}
    } finally {
	if {[info exists silentPipe]} {
	    stopServer $silentPipe $silentPgid
	}
	stopServer $pipe $pgid
	if {[info exists rivetDir]} {
	    file delete -force $rivetDir
	}
    }

    set requests 0
    set rps 0
    regexp {(\d+) requests in} $wrk -> requests
    regexp {Requests/sec:\s+([\d.]+)} $wrk -> rps
    set errors 0
    set timeouts 0
    if {[regexp {Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)} \
	    $wrk -> c r w timeouts]} {
	set errors [expr {$c + $r + $w + $timeouts}]
    }
    if {[regexp {Non-2xx or 3xx responses: (\d+)} $wrk -> bad]} {
	incr errors $bad
    }
    set p50 0us
    set p99 0us
    regexp {\n\s+50%\s+(\S+)} $wrk -> p50
    regexp {\n\s+99%\s+(\S+)} $wrk -> p99
    set p999 0
    regexp {p99.9: (\d+)} $wrk -> p999
    set cpu [expr {$requests > 0
	? ([totalNs $threadsAfter] - [totalNs $threadsBefore]) / 1e3 / $requests : 0}]
    puts stderr [format "  %-10s %-12s W=%-3s %8.0f req/s %6.1f us/req%s%s" \
	$scenario $design $workers $rps $cpu \
	[expr {[dict size $counted] ? [format " %5.1f calls/req" [dict get $counted total]] : ""}] \
	[expr {$silent > 0 ? " ($silent silent)" : ""}][expr {$errors > 0 ? " $errors errors" : ""}]]
    set row [dict create scenario $scenario design $design workers $workers silent $silent \
	rps $rps requests $requests errors $errors timeouts $timeouts waiting $waiting cpu $cpu \
	p50 [toMs $p50] p99 [toMs $p99] p999 [expr {$p999 / 1000.0}] \
	syscalls [expr {[dict size $counted] ? [dict get $counted total] : -1}] \
	calls [expr {[dict size $counted] ? [dict get $counted calls] : {}}]]
    # Per thread role: microseconds and voluntary context switches per
    # request.
    foreach role {serving accept worker "worker helpers"} {
	set ns 0
	set switches 0
	if {[dict exists $threadsAfter $role]} {
	    lassign [dict get $threadsAfter $role] ns switches
	    if {[dict exists $threadsBefore $role]} {
		lassign [dict get $threadsBefore $role] ns0 switches0
		set ns [expr {$ns - $ns0}]
		set switches [expr {$switches - $switches0}]
	    }
	}
	dict set row "$role us" [expr {$requests > 0 ? $ns / 1e3 / $requests : 0}]
	dict set row "$role cs" [expr {$requests > 0 ? double($switches) / $requests : 0}]
    }
    return $row
}

set bases {}
foreach dir $baselines {
    lappend bases base[llength $bases]
}
# The pre-fork contender forks with TclX, which Tcl 9 does not have; there,
# socketserver starts its workers with spawn (tcl_server.tcl).
set forks [expr {![catch {package require Tclx}]}]
set contenders [list socketserver {*}$bases {*}[expr {$forks ? "prefork" : ""}] c]
# Apache with mod_rivet (Debian's apache2 and libapache2-mod-rivet), if
# installed.
set rivet [expr {[file executable /usr/sbin/apache2]
	&& [file exists /usr/lib/apache2/modules/mod_rivet.so]}]
if {$rivet} {
    lappend contenders rivet
} else {
    puts stderr "no Apache prefork + mod_rivet rows: /usr/sbin/apache2 or\
	/usr/lib/apache2/modules/mod_rivet.so is missing (Debian: apt-get install\
	apache2 libapache2-mod-rivet)"
}
# The rows to measure: {scenario design workers work connections}.
set plan {}
foreach scenario $scenarios {
    switch -- $scenario {
	overhead {
	    lappend plan {overhead single 1 none 8}
	    foreach w $overheadWorkers {
		foreach design $contenders {
		    lappend plan [list overhead $design $w none 8]
		}
	    }
	}
	blocking {
	    lappend plan {blocking single 1 sleep 32}
	    foreach design $contenders {
		lappend plan [list blocking $design 16 sleep 32]
	    }
	}
	cpu {
	    lappend plan {cpu single 1 cpu 8}
	    foreach design $contenders {
		lappend plan [list cpu $design 2 cpu 8]
	    }
	}
	handoff {
	    foreach design [list socketserver {*}$bases] {
		lappend plan [list handoff $design 8 none 1]
	    }
	}
	supervisor {
	    # The same load under socketserver::prefork: what supervising
	    # costs per connection.
	    foreach design [list socketserver supervised {*}$bases \
		    {*}[lmap base $bases {string cat $base -supervised}]] {
		lappend plan [list supervisor $design 8 none 8]
	    }
	}
	keepalive {
	    # 64 keep-alive connections: the one-process server, then each
	    # pre-fork design with 4 and 16 workers.
	    lappend plan {keepalive single 1 none 64}
	    foreach w {4 16} {
		foreach design [list socketserver {*}$bases {*}[expr {$forks ? "prefork" : ""}] \
			{*}[expr {$rivet ? "rivet" : ""}]] {
		    lappend plan [list keepalive $design $w none 64]
		}
	    }
	}
	slowclient {
	    # socketserver without the silent connections, then every
	    # design with them.
	    lappend plan {slowclient socketserver 4 none 16 0}
	    foreach design [list socketserver {*}[expr {$forks ? "prefork" : ""}] \
		    {*}[expr {$rivet ? "rivet" : ""}] single] {
		lappend plan [list slowclient $design [expr {$design eq "single" ? 1 : 4}] \
		    none 16 $silentClients]
	    }
	}
	uneven {
	    set designs [list socketserver {*}$bases {*}[expr {$forks ? "prefork" : ""}] reuseport]
	    if {$rivet} {
		lappend designs rivet
	    }
	    if {[auto_execok node] ne ""} {
		lappend designs node
	    }
	    foreach design $designs {
		lappend plan [list uneven $design 8 uneven 16]
	    }
	}
    }
}

# Rounds interleave the rows, so that a slow spell of a shared machine
# falls on every row alike; each figure of a row is the median of its
# rounds.
proc median {values} {
    set values [lsort -real $values]
    lindex $values [expr {[llength $values] / 2}]
}
puts stderr "benchmark: $rounds rounds of $duration s per row, scenarios: $scenarios"
set results {}
for {set round 1} {$round <= $rounds} {incr round} {
    puts stderr "round $round"
    foreach item $plan {
	# A server that does not start (a baseline build without release
	# or -ready, in the keepalive scenario) leaves its row out.
	if {[catch {measure {*}$item} measured]} {
	    puts stderr "  [lrange $item 0 2]: left out: $measured"
	    continue
	}
	dict lappend results $item $measured
    }
}
# A signal that came while no event loop ran (stopping the last server).
update
set rows {}
dict for {item measured} $results {
    set row [lindex $measured 0]
    foreach key [dict keys $row] {
	if {$key in {scenario design workers silent syscalls calls}} {
	    continue
	}
	dict set row $key [median [lmap m $measured {dict get $m $key}]]
    }
    # System calls: the median of the rounds that counted them (-1 if
    # none did), and so for each call (0 in a round without it).
    set counted [lmap m $measured {expr {[dict get $m syscalls] >= 0 ? $m : [continue]}}]
    dict set row syscalls [expr {[llength $counted]
	? [median [lmap m $counted {dict get $m syscalls}]] : -1}]
    set calls {}
    foreach name [lsort -unique [concat {*}[lmap m $counted {dict keys [dict get $m calls]}]]] {
	dict set calls $name [median [lmap m $counted {
	    expr {[dict exists $m calls $name] ? [dict get $m calls $name] : 0}
	}]]
    }
    dict set row calls $calls
    lappend rows $row
}

# callsCell row --
#	The system calls per request of a row, or "–" if none were counted.
proc callsCell {row} {
    expr {[dict get $row syscalls] >= 0 ? [format %.1f [dict get $row syscalls]] : "–"}
}

# Ratios for socketserver rows: against the C ceiling with the same
# workers, and against the best Tcl alternative (the single-process server
# or the pre-fork one with the same workers, whichever costs less CPU).
proc find {rows scenario design workers} {
    foreach row $rows {
	if {[dict get $row scenario] eq $scenario && [dict get $row design] eq $design
		&& ($workers eq "*" || [dict get $row workers] == $workers)} {
	    return $row
	}
    }
    return {}
}

set names [list socketserver socketserver supervised "socketserver under socketserver::prefork" single "Tcl socket -server" prefork "Tcl pre-fork, inherited listener" c "C ceiling" rivet "Apache prefork + mod_rivet" reuseport "C, SO_REUSEPORT listener per worker" node "Node cluster (round-robin)"]
foreach base $bases dir $baselines {
    lappend names $base "socketserver ([file tail $dir])" \
	$base-supervised "socketserver::prefork ([file tail $dir])"
}
# rowsOf rows scenarios --
#	The rows of those scenarios.
proc rowsOf {rows scenarios} {
    lmap row $rows {expr {[dict get $row scenario] in $scenarios ? $row : [continue]}}
}
set others [rowsOf $rows {overhead blocking cpu supervisor}]
if {[llength $others]} {
    puts "| scenario | server | W | req/s | errors | CPU µs/req | calls/req | p50 ms | p99 ms | CPU vs C | CPU vs best Tcl |"
    puts "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
}
foreach row $others {
    dict with row {
	set vsC ""
	set vsTcl ""
	if {$design eq "socketserver" || $design in $bases} {
	    set c [find $rows $scenario c $workers]
	    if {$c ne "" && [dict get $c cpu] > 0} {
		set vsC [format %.2f [expr {$cpu / [dict get $c cpu]}]]
	    }
	    set best {}
	    foreach alt [list [find $rows $scenario single *] [find $rows $scenario prefork $workers]] {
		if {$alt ne "" && ($best eq "" || [dict get $alt cpu] < $best)} {
		    set best [dict get $alt cpu]
		}
	    }
	    if {$best ne "" && $best > 0} {
		set vsTcl [format %.2f [expr {$cpu / $best}]]
	    }
	}
	puts [format "| %s | %s | %s | %.0f | %d | %.0f | %s | %.2f | %.2f | %s | %s |" \
	    $scenario [dict get $names $design] [expr {$design eq "single" ? 1 : $workers}] \
	    $rps $errors $cpu [callsCell $row] $p50 $p99 $vsC $vsTcl]
    }
}

# The uneven scenario: latency is what it is about.
if {[llength [rowsOf $rows uneven]]} {
    puts ""
    puts "| uneven work, W=8, 16 clients | req/s | errors | p50 ms | p99 ms | p99.9 ms | calls/req |"
    puts "|---|---:|---:|---:|---:|---:|---:|"
    foreach row [rowsOf $rows uneven] {
	dict with row {
	    puts [format "| %s | %.0f | %d | %.2f | %.2f | %.2f | %s |" \
		[dict get $names $design] $rps $errors $p50 $p99 $p999 [callsCell $row]]
	}
    }
}

# loadCells row --
#	The req/s, waiting, timeouts, CPU, system calls, p50 and p99 cells of
#	a keepalive or slowclient row: a row that answered nothing says so in
#	the first cell.
proc loadCells {row} {
    set callCell [callsCell $row]
    dict with row {
	if {$requests == 0} {
	    return [format "stalled: 0 answered | %d | %d | – | %s | – | –" $waiting $timeouts \
		$callCell]
	}
	format "%.0f | %d | %d | %.0f | %s | %.2f | %.2f" $rps $waiting $timeouts $cpu $callCell \
	    $p50 $p99
    }
}

# Keep-alive: what each design does with 64 clients that keep their
# connections.
if {[llength [rowsOf $rows keepalive]]} {
    puts ""
    puts "| keep-alive, 64 connections | W | req/s | waiting | timeouts | CPU µs/req | calls/req | p50 ms | p99 ms |"
    puts "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    foreach row [rowsOf $rows keepalive] {
	puts [format "| %s | %s | %s |" [dict get $names [dict get $row design]] \
	    [dict get $row workers] [loadCells $row]]
    }
}

# Silent clients beside the load.
if {[llength [rowsOf $rows slowclient]]} {
    puts ""
    puts "| slow clients: silent connections + 16 clients, one request per connection | W | silent | req/s | waiting | timeouts | CPU µs/req | calls/req | p50 ms | p99 ms |"
    puts "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    foreach row [rowsOf $rows slowclient] {
	puts [format "| %s | %s | %s | %s |" [dict get $names [dict get $row design]] \
	    [dict get $row workers] [dict get $row silent] [loadCells $row]]
    }
}
if {[llength [rowsOf $rows {keepalive slowclient}]] && !$rivet} {
    puts ""
    puts "No Apache prefork + mod_rivet rows: apache2 or libapache2-mod-rivet is not installed."
}

# The hand-off alone: one connection at a time to 8 idle workers, by
# thread.
if {[llength [rowsOf $rows handoff]]} {
    puts ""
    puts "| one hand-off to an idle worker (W=8, 1 client) | conn/s | CPU µs/conn | calls/conn | accept thread µs / switches | worker's main thread µs / switches | worker's other threads µs / switches |"
    puts "|---|---:|---:|---:|---:|---:|---:|"
    foreach row [rowsOf $rows handoff] {
	puts [format "| %s | %.0f | %.1f | %s | %.1f / %.2f | %.1f / %.2f | %.1f / %.2f |" \
	    [dict get $names [dict get $row design]] [dict get $row rps] [dict get $row cpu] \
	    [callsCell $row] \
	    [dict get $row "accept us"] [dict get $row "accept cs"] \
	    [dict get $row "worker us"] [dict get $row "worker cs"] \
	    [dict get $row "worker helpers us"] [dict get $row "worker helpers cs"]]
    }
}

# Every row's system calls by name, the calls that make at least 0.05
# per request, most first.
set countedRows [lmap row $rows {expr {[dict get $row syscalls] >= 0 ? $row : [continue]}}]
if {[llength $countedRows]} {
    puts ""
    puts "| system calls per request (strace -f -c, $syscallSeconds s of load) | server | W | total | by call |"
    puts "|---|---|---:|---:|---|"
    foreach row $countedRows {
	set named {}
	foreach {name n} [lsort -stride 2 -index 1 -real -decreasing [dict get $row calls]] {
	    if {$n >= 0.05} {
		lappend named [format "%s %.2f" $name $n]
	    }
	}
	puts [format "| %s | %s | %s | %.1f | %s |" [dict get $row scenario] \
	    [dict get $names [dict get $row design]] \
	    [expr {[dict get $row design] eq "single" ? 1 : [dict get $row workers]}] \
	    [dict get $row syscalls] [join $named ", "]]
    }
}
if {[llength $rows] && [llength $countedRows] < [llength $rows]} {
    puts ""
    if {$syscallSeconds == 0} {
	puts "No system calls counted: BENCH_SYSCALLS is 0."
    } elseif {$strace eq ""} {
	puts "No system calls counted: strace is missing."
    } else {
	puts "Rows with calls/req \"–\": strace could not count them, or the load had no answer\
	    (see the messages above)."
    }
}

# The targets the issues set, each with its figure from this run.
proc valueOf {rows scenario design workers key {silent *}} {
    foreach row $rows {
	if {[dict get $row scenario] eq $scenario && [dict get $row design] eq $design
		&& ($workers eq "*" || [dict get $row workers] == $workers)
		&& ($silent eq "*" || [dict get $row silent] == $silent)} {
	    return [dict get $row $key]
	}
    }
    return ""
}
# p99Of rows scenario design workers silent --
#	The p99 of that row: Inf if it answered nothing, "" if there is no
#	such row.
proc p99Of {rows scenario design workers silent} {
    set requests [valueOf $rows $scenario $design $workers requests $silent]
    if {$requests eq ""} {
	return ""
    }
    expr {$requests > 0 ? [valueOf $rows $scenario $design $workers p99 $silent] : "Inf"}
}
# callsOf rows scenario design workers --
#	The system calls per request of that row, "" if there is no such
#	row or its calls were not counted.
proc callsOf {rows scenario design workers} {
    set calls [valueOf $rows $scenario $design $workers syscalls]
    expr {$calls ne "" && $calls >= 0 ? $calls : ""}
}
# Where Tcl 9's own server makes fewer calls, the same aims allow more.
set tcl9 [package vsatisfies [info patchlevel] 9-]
set lines {}
foreach {label a b op limit} [list \
	"overhead W=2: CPU, socketserver / Tcl socket -server" \
	    [valueOf $rows overhead socketserver 2 cpu] [valueOf $rows overhead single * cpu] <= 1.0 \
	"overhead W=8: CPU, socketserver / pre-fork" \
	    [valueOf $rows overhead socketserver 8 cpu] [valueOf $rows overhead prefork 8 cpu] <= 1.1 \
	"overhead W=8: conn/s, socketserver / pre-fork" \
	    [valueOf $rows overhead socketserver 8 rps] [valueOf $rows overhead prefork 8 rps] >= 0.9 \
	"overhead W=32: CPU, socketserver / Tcl socket -server" \
	    [valueOf $rows overhead socketserver 32 cpu] [valueOf $rows overhead single * cpu] <= 1.6 \
	"overhead W=32: CPU, socketserver / pre-fork" \
	    [valueOf $rows overhead socketserver 32 cpu] [valueOf $rows overhead prefork 32 cpu] <= 0.9 \
	"overhead W=64: CPU, socketserver / pre-fork" \
	    [valueOf $rows overhead socketserver 64 cpu] [valueOf $rows overhead prefork 64 cpu] <= 0.9 \
	"overhead W=32: conn/s, socketserver / Tcl socket -server" \
	    [valueOf $rows overhead socketserver 32 rps] [valueOf $rows overhead single * rps] >= 0.8 \
	"overhead W=32: conn/s, socketserver / pre-fork" \
	    [valueOf $rows overhead socketserver 32 rps] [valueOf $rows overhead prefork 32 rps] >= 1.0 \
	"overhead: CPU, socketserver W=64 / W=8" \
	    [valueOf $rows overhead socketserver 64 cpu] [valueOf $rows overhead socketserver 8 cpu] <= 1.15 \
	"blocking W=16: conn/s / the ideal 800" \
	    [valueOf $rows blocking socketserver 16 rps] 800.0 >= 0.98 \
	"blocking W=16: CPU, socketserver / C ceiling" \
	    [valueOf $rows blocking socketserver 16 cpu] [valueOf $rows blocking c 16 cpu] <= 1.4 \
	"keepalive W=4: req/s, socketserver / Tcl socket -server" \
	    [valueOf $rows keepalive socketserver 4 rps] [valueOf $rows keepalive single * rps] >= 1.0 \
	"keepalive W=16: req/s, socketserver / Tcl socket -server" \
	    [valueOf $rows keepalive socketserver 16 rps] [valueOf $rows keepalive single * rps] >= 1.0 \
	"keepalive W=4: req/s, socketserver / Apache prefork + mod_rivet" \
	    [valueOf $rows keepalive socketserver 4 rps] [valueOf $rows keepalive rivet 4 rps] >= 1.3 \
	"keepalive W=16: req/s, socketserver / Apache prefork + mod_rivet" \
	    [valueOf $rows keepalive socketserver 16 rps] [valueOf $rows keepalive rivet 16 rps] >= 1.3 \
	"keepalive W=4: system calls per request, socketserver" \
	    [callsOf $rows keepalive socketserver 4] 1.0 <= 10 \
	"keepalive W=16: system calls per request, socketserver" \
	    [callsOf $rows keepalive socketserver 16] 1.0 <= 10 \
	"keepalive W=4: CPU, socketserver / Tcl socket -server" \
	    [valueOf $rows keepalive socketserver 4 cpu] [valueOf $rows keepalive single * cpu] \
	    <= [expr {$tcl9 ? 1.2 : 2.5}] \
	"overhead W=8: system calls per request, socketserver / Tcl socket -server" \
	    [callsOf $rows overhead socketserver 8] [callsOf $rows overhead single *] \
	    <= [expr {$tcl9 ? 1.5 : 1.15}] \
	"slowclient W=4: p99, socketserver with $silentClients silent connections / without" \
	    [p99Of $rows slowclient socketserver 4 $silentClients] \
	    [p99Of $rows slowclient socketserver 4 0] <= 1.25] {
    if {$a ne "" && $b ne "" && $b > 0} {
	set ratio [expr {double($a) / $b}]
	set met [expr [list $ratio $op $limit]]
	lappend lines [format "- %s: %.2f (target %s %s: %s)" $label $ratio $op $limit \
	    [expr {$met ? "met" : "missed"}]]
    }
}
# No row dearer than a baseline build: of the rows this build and the
# baseline both have, the one where this build's system calls, and its
# CPU, per request are highest against the baseline's.
foreach base $bases dir $baselines {
    foreach {key what} {syscalls "system calls per request" cpu "CPU per request"} {
	set worst {}
	foreach row $rows {
	    set design [dict get $row design]
	    if {$design ni {socketserver supervised}} {
		continue
	    }
	    set a [dict get $row $key]
	    set b [valueOf $rows [dict get $row scenario] \
		[expr {$design eq "socketserver" ? $base : "$base-supervised"}] \
		[dict get $row workers] $key [dict get $row silent]]
	    if {$b eq "" || $a < 0 || $b <= 0} {
		continue
	    }
	    set ratio [expr {double($a) / $b}]
	    if {![llength $worst] || $ratio > [lindex $worst 0]} {
		set worst [list $ratio "[dict get $row scenario] [dict get $names $design]\
		    W=[dict get $row workers]"]
	    }
	}
	if {[llength $worst]} {
	    lassign $worst ratio where
	    lappend lines [format "- every row: %s, this build / %s, highest: %.2f, %s\
		(target <= 1.0: %s)" $what [file tail $dir] $ratio $where \
		[expr {$ratio <= 1.0 ? "met" : "missed"}]]
	}
    }
}
if {[llength $lines]} {
    puts ""
    puts [join $lines \n]
}
