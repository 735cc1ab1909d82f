#!/usr/bin/env tclsh
# outline.tcl ?port? --
#
#	The README's outline, runnable: a serving process forks three
#	workers; each handles one connection at a time and asks for the next
#	whatever its handler did. Listens on port 8888 (or argv 0).

package require Tclx
package require socketserver

set port [::socketserver::socket server [lindex [concat $argv 8888] 0]]

proc handle {chan addr peerport} {
    try {
	fconfigure $chan -buffering line
	puts $chan "hello $addr:$peerport, this is worker [pid]"
    } finally {
	catch {close $chan}
	askNext                       ;# even if the handler failed
    }
}

proc askNext {} {
    if {[catch {::socketserver::socket client handle} msg opts]} {
	workerError $msg $opts
    }
}

# Only the end of the serving process (SOCKETSERVER CLOSED) ends a worker.
proc workerError {msg opts} {
    if {[lrange [dict get $opts -errorcode] 0 1] eq {SOCKETSERVER CLOSED}} {
	exit 0
    }
    puts stderr "worker [pid]: $msg"
}

for {set i 0} {$i < 3} {incr i} {
    flush stdout
    if {[fork] == 0} {
	interp bgerror {} workerError
	askNext
	vwait forever
    }
}
puts "listening on port $port"
flush stdout
vwait forever
