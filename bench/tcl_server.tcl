# tcl_server.tcl DESIGN WORKERS PORT WORK --
#
#	The Tcl contenders of the benchmarks, all with the same HTTP/1.0
#	"hello" handler:
#	    socketserver  the extension, WORKERS forked workers (without TclX,
#	                  as under Tcl 9: started with spawn), one-shot
#	                  requests
#	    single        Tcl's own [socket -server], one process
#	    prefork       [socket -server], then WORKERS forked children that
#	                  all keep the listening channel (the parent closes
#	                  its copy)
#	    supervised    the extension under its supervisor,
#	                  socketserver::prefork, with WORKERS workers
#	WORK is none, sleep (20 ms, as if waiting on a database), cpu (2 ms
#	of computation) or uneven (a blocking 1 ms, or 100 ms for one request
#	in ten, chosen at random). Prints "ready PORT" once every process is set
#	up. The benchmark stops it by killing its process group.

lassign $argv design workers port work

proc work {} {}
if {$work eq "sleep"} {
    proc work {} {after 20}
} elseif {$work eq "uneven"} {
    proc work {} {
	if {![info exists ::seeded]} {
	    # Forked children would all draw the same numbers.
	    expr {srand([pid])}
	    set ::seeded 1
	}
	after [expr {rand() < 0.1 ? 100 : 1}]
    }
} elseif {$work eq "cpu"} {
    proc work {} {
	set end [expr {[clock microseconds] + 2000}]
	while {[clock microseconds] < $end} {}
    }
}

proc handle {chan args} {
    fconfigure $chan -translation {auto crlf} -buffering full
    if {[gets $chan requestLine] >= 0} {
	while {[gets $chan header] > 0} {}
	work
	puts $chan "HTTP/1.0 200 OK"
	puts $chan "Content-Type: text/plain"
	puts $chan "Content-Length: 6"
	puts $chan "Connection: close"
	puts $chan ""
	# The body goes out as it is: crlf would make it 7 bytes.
	fconfigure $chan -translation binary
	puts -nonewline $chan "hello\n"
    }
    catch {close $chan}
}

# Forks n children that run script, then vwait; returns nothing.
proc forkChildren {n script} {
    package require Tclx
    for {set i 0} {$i < $n} {incr i} {
	flush stdout
	if {[fork] == 0} {
	    uplevel #0 $script
	    vwait forever
	}
    }
}

switch -- $design {
    supervised {
	# "ready" once every worker has loaded and asks: their start-up is
	# not part of what is measured.
	package require socketserver::prefork
	proc log {line} {
	    if {[regexp {^listening on port (\d+)} $line -> port]} {
		ready $port
	    }
	}
	proc ready {port} {
	    if {[dict get [::socketserver::socket info $port] waiting] < $::workers} {
		after 20 [list ready $port]
		return
	    }
	    puts "ready $port"
	    flush stdout
	}
	socketserver::prefork -port $port -myaddr 127.0.0.1 -workers $workers \
	    -log log handle
    }
    socketserver - worker {
	package require socketserver
	proc serve {chan addr peerport} {
	    handle $chan
	    ::socketserver::socket client serve
	}
	interp bgerror {} {apply {args {exit 0}}}
	if {$design eq "worker"} {
	    # Spawned: the queue is adopted.
	    ::socketserver::socket client serve
	    vwait forever
	}
	set port [::socketserver::socket server -myaddr 127.0.0.1 $port]
	if {![catch {package require Tclx}]} {
	    forkChildren $workers {::socketserver::socket client serve}
	} else {
	    for {set i 0} {$i < $workers} {incr i} {
		lappend spawned [::socketserver::socket spawn \
		    [info nameofexecutable] [info script] worker 0 0 $work]
	    }
	    set deadline [expr {[clock seconds] + 20}]
	    while {[dict get [::socketserver::socket info $port] waiting] < $workers
		    && [clock seconds] < $deadline} {
		after 20
	    }
	}
    }
    single {
	set listener [socket -server handle -myaddr 127.0.0.1 $port]
	set port [lindex [fconfigure $listener -sockname] 2]
    }
    prefork {
	set listener [socket -server handle -myaddr 127.0.0.1 $port]
	set port [lindex [fconfigure $listener -sockname] 2]
	forkChildren $workers {}
	close $listener
    }
}
puts "ready $port"
flush stdout
vwait forever
