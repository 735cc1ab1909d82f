# server.tcl ?-workers N? ?-backlog N? ?-mode echo|keep? ?-respawn 0|1?
#		?-paused 0|1? --
#
#	The serving process of the stress tests. It listens on a free port
#	on 127.0.0.1, forks its workers and prints
#
#	    server PID PORT
#	    worker PID			(for each worker forked)
#	    exited PID STATUS		(for each worker reaped)
#
#	and obeys commands, one per line on standard input:
#
#	    fork N	fork N more workers
#	    go		send SIGUSR1 to paused workers: they start asking
#	    info	print "info DICT" from ::socketserver::socket info
#	    exit	exit at once, leaving the workers behind
#	    (EOF)	stop: kill the workers, reap them, exit
#
#	Worker modes. echo: the first line is answered "PID SEQ LINE", SEQ
#	being the worker's count of connections so far, and the worker
#	closes the connection (so that TIME_WAIT stays on this side and
#	clients don't run short of ports) and asks again; "hold" is answered
#	and then the worker stops (it keeps the connection, asks no more);
#	end of file before a line closes and asks again. keep: the first line
#	is answered the same way but the connection is kept open, to hold
#	many descriptors.

package require Tclx
package require socketserver

array set opt {-workers 2 -backlog 4096 -mode echo -respawn 0 -paused 0}
array set opt $argv
set port [::socketserver::socket server -myaddr 127.0.0.1 \
	-backlog $opt(-backlog) 0]
set workers {}

proc say {line} {
    puts $line
    flush stdout
}

# --- workers ------------------------------------------------------------

proc ask {} {
    ::socketserver::socket client [list serve_$::opt(-mode)]
}

proc serve_echo {chan addr peerport} {
    incr ::seq
    fconfigure $chan -buffering line -translation lf -blocking 0
    fileevent $chan readable [list echoLine $chan $::seq]
}

proc echoLine {chan seq} {
    if {[catch {gets $chan line} n] || ($n < 0 && [eof $chan])} {
	catch {close $chan}
	ask
    } elseif {$n >= 0} {
	catch {puts $chan "[pid] $seq $line"}
	if {$line eq "hold"} {
	    fileevent $chan readable {}
	} else {
	    catch {close $chan}
	    ask
	}
    }
}

proc serve_keep {chan addr peerport} {
    incr ::seq
    lappend ::kept $chan
    fconfigure $chan -buffering line -translation lf -blocking 1
    set line [gets $chan]
    ask
    puts $chan "[pid] $::seq $line"
}

proc workerError {message options} {
    if {[lrange [dict get $options -errorcode] 0 1] eq {SOCKETSERVER CLOSED}} {
	exit 0
    }
    puts stderr "stress worker [pid]: $message"
    exit 1
}

proc runWorker {} {
    signal default {CHLD TERM}
    foreach id [after info] {
	after cancel $id
    }
    close stdin
    set ::workers {}
    set ::seq 0
    set ::kept {}
    interp bgerror {} workerError
    if {$::opt(-paused)} {
	signal trap USR1 {after idle ask}
    } else {
	ask
    }
    vwait forever
}

# --- serving process ----------------------------------------------------

proc forkWorker {} {
    flush stdout
    set pid [fork]
    if {$pid == 0} {
	runWorker
    }
    lappend ::workers $pid
    say "worker $pid"
}

# Every 100 ms, not on SIGCHLD: a TclX signal trap that fires while
# threaded Tcl 8.6 holds its notifier lock deadlocks the process.
proc reap {} {
    after 100 reap
    while {![catch {wait -nohang} status] && $status ne ""} {
	set pid [lindex $status 0]
	set i [lsearch -exact $::workers $pid]
	if {$i >= 0} {
	    set ::workers [lreplace $::workers $i $i]
	    say "exited $pid [lrange $status 1 end]"
	    if {$::opt(-respawn)} {
		forkWorker
	    }
	}
    }
}

proc command {} {
    if {[gets stdin line] < 0} {
	if {[eof stdin]} {
	    stop
	}
	return
    }
    switch -glob -- $line {
	"fork *" {
	    for {set i 0} {$i < [lindex $line 1]} {incr i} {
		forkWorker
	    }
	}
	go {
	    foreach pid $::workers {
		::socketserver::kill USR1 $pid
	    }
	}
	info {
	    say "info [::socketserver::socket info $::port]"
	}
	exit {
	    exit 0
	}
    }
}

proc stop {} {
    foreach pid $::workers {
	catch {::socketserver::kill KILL $pid}
    }
    foreach pid $::workers {
	catch {wait $pid}
    }
    exit 0
}

say "server [pid] $port"
for {set i 0} {$i < $opt(-workers)} {incr i} {
    forkWorker
}
reap
fileevent stdin readable command
vwait forever
