#!/usr/bin/env tclsh
# twoports.tcl ?portA? ?portB? --
#
#	One serving process, two ports, each with its own queue and its own
#	workers: two workers ask on port A only, one on port B only. Every
#	line sent is answered with "PORT PID: line". Ports default to 0 (the
#	system picks); the chosen ones are printed.
#
#	SIGTERM or SIGINT to the parent stops it and its workers.

package require Tclx
package require socketserver

lassign $argv portA portB
if {$portA eq ""} {set portA 0}
if {$portB eq ""} {set portB 0}
set portA [::socketserver::socket server $portA]
set portB [::socketserver::socket server $portB]

proc serve {port chan addr peerport} {
    fconfigure $chan -buffering line -blocking 0
    fileevent $chan readable [list answer $port $chan]
}

proc answer {port chan} {
    if {[catch {gets $chan line} n] || ($n < 0 && [eof $chan])} {
	catch {close $chan}
	::socketserver::socket client -port $port [list serve $port]
    } elseif {$n >= 0} {
	puts $chan "$port [pid]: $line"
    }
}

proc workerError {message options} {
    if {[lrange [dict get $options -errorcode] 0 1] eq {SOCKETSERVER CLOSED}} {
	exit 0
    }
    puts stderr "twoports worker [pid]: $message"
}

proc startWorker {port} {
    flush stdout
    set pid [fork]
    if {$pid == 0} {
	interp bgerror {} workerError
	::socketserver::socket client -port $port [list serve $port]
	vwait forever
    }
    lappend ::pids $pid
}

proc shutdown {} {
    foreach pid $::pids {
	catch {kill TERM $pid}
    }
    foreach pid $::pids {
	catch {wait $pid}
    }
    exit 0
}

set pids {}
startWorker $portA
startWorker $portA
startWorker $portB
puts "twoports [pid] listening on ports $portA and $portB"
flush stdout
::socketserver::signal TERM shutdown
::socketserver::signal INT shutdown
vwait forever
