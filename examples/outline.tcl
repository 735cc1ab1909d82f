#!/usr/bin/env tclsh
# outline.tcl --
#
#	The README's outline, runnable: a serving process forks three
#	workers; each worker handles one connection at a time and asks for
#	the next one when it is done. Listens on port 8888 (or argv 0).

package require Tclx
package require socketserver

set port [::socketserver::socket server [lindex [concat $argv 8888] 0]]

proc handle {chan addr peerport} {
    fconfigure $chan -buffering line
    puts $chan "hello $addr:$peerport, this is worker [pid]"
    close $chan
    ::socketserver::socket client handle     ;# ask for the next one
}

# The serving process is gone (SOCKETSERVER CLOSED): so are we.
proc bgerror {message} {
    exit 0
}

for {set i 0} {$i < 3} {incr i} {
    flush stdout
    if {[fork] == 0} {
	::socketserver::socket client handle
	vwait forever
    }
}
puts "listening on port $port"
flush stdout
vwait forever
