#!/usr/bin/env tclsh
# spawned.tcl ?port? --
#
#	The outline without TclX, for Tcl 8.6 and Tcl 9 alike: the serving
#	process starts three workers with 'spawn', each a new tclsh running
#	this same file. A worker knows itself by the queue it adopted. Each
#	handles one connection at a time and asks for the next whatever its
#	handler did. SIGTERM or SIGINT stops the server; the workers leave
#	when it is gone. Listens on port 8888 (or argv 0).

package require socketserver

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

if {[llength [::socketserver::socket info]] > 0} {
    # Started by spawn: the queue came with us.
    interp bgerror {} workerError
    askNext
    vwait forever
}

# What a worker prints reaches our output, prefixed with its pid.
proc relay {chan} {
    if {[gets $chan line] >= 0} {
	puts "worker [pid $chan]: $line"
    } elseif {[eof $chan]} {
	close $chan
    }
}

set port [::socketserver::socket server [lindex [concat $argv 8888] 0]]
for {set i 0} {$i < 3} {incr i} {
    set chan [::socketserver::socket spawn [info nameofexecutable] \
	[file normalize [info script]]]
    fconfigure $chan -blocking 0 -buffering line
    fileevent $chan readable [list relay $chan]
}
::socketserver::signal TERM {exit 0}
::socketserver::signal INT {exit 0}
puts "listening on port $port"
flush stdout
vwait forever
