#!/usr/bin/env tclsh
# echo_server.tcl ?port? --
#
#	A pre-forked echo server: the parent listens on port (default 8888;
#	0 picks a free one) and forks two workers. Each worker echoes every
#	line back prefixed with its pid until the line "quit", then
#	closes the connection and asks for the next one.
#
#	    kill -USR1 <parent>	forks one more worker
#	    kill -TERM <parent>	(or INT, ^C) stops the parent and its workers
#
#	Try it: nc -N localhost 8888 (or telnet localhost 8888)

package require Tclx
package require socketserver

set port [expr {$argc > 0 ? [lindex $argv 0] : 8888}]
if {[catch {::socketserver::socket server $port} port]} {
    puts stderr "echo_server: $port"
    exit 1
}
set workers {}

# --- worker -------------------------------------------------------------

proc serve {chan addr peerport} {
    fconfigure $chan -buffering line -blocking 0
    fileevent $chan readable [list echoLine $chan]
}

proc echoLine {chan} {
    if {[catch {gets $chan line} n] || ($n < 0 && [eof $chan])} {
	finish $chan
    } elseif {$n < 0} {
	return
    } elseif {[string trim $line] eq "quit"} {
	finish $chan
    } elseif {[catch {puts $chan "[pid]: $line"}]} {
	finish $chan
    }
}

proc finish {chan} {
    catch {close $chan}
    ::socketserver::socket client serve
}

# The serving process is gone: nothing more will come.
proc workerError {message options} {
    if {[lrange [dict get $options -errorcode] 0 1] eq {SOCKETSERVER CLOSED}} {
	exit 0
    }
    puts stderr "echo_server worker [pid]: $message"
}

# A forked worker starts with the default signal actions: the serving
# process's ::socketserver::signal scripts are not inherited.
proc runWorker {} {
    foreach id [after info] {
	after cancel $id
    }
    set ::workers {}
    interp bgerror {} workerError
    ::socketserver::socket client serve
    vwait forever
    exit 0
}

# --- parent -------------------------------------------------------------

proc forkWorker {} {
    flush stdout
    flush stderr
    set pid [fork]
    if {$pid == 0} {
	runWorker
    }
    lappend ::workers $pid
    puts "worker $pid started"
    flush stdout
}

# On SIGCHLD: reaps every worker that has exited.
proc reapWorkers {} {
    while {![catch {wait -nohang} status] && $status ne ""} {
	set pid [lindex $status 0]
	set i [lsearch -exact $::workers $pid]
	if {$i >= 0} {
	    set ::workers [lreplace $::workers $i $i]
	    catch {
		puts "worker $pid ended: [lrange $status 1 end]"
		flush stdout
	    }
	}
    }
}

proc shutdown {} {
    foreach pid $::workers {
	catch {kill TERM $pid}
    }
    foreach pid $::workers {
	catch {wait $pid}
    }
    # Whoever read our output may be gone already.
    catch {
	puts "echo server stopped"
	flush stdout
    }
    exit 0
}

# The scripts run from the event loop, never inside a signal handler
# (TclX's 'signal trap' can deadlock threaded Tcl: see the README).
::socketserver::signal USR1 forkWorker
::socketserver::signal CHLD reapWorkers
::socketserver::signal TERM shutdown
::socketserver::signal INT shutdown
puts "echo server [pid] listening on port $port"
forkWorker
forkWorker
vwait forever
