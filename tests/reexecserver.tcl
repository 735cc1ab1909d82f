# reexecserver.tcl --
#
#	A serving process that replaces its program ('reexec') on command,
#	for the tests of the upgrade in place without the supervisor.
#	Listens with -keepalive 30 on a loopback port, or, once re-executed,
#	on the listener passed in SOCKETSERVER_LISTENER, and spawns one
#	tests/kaworker.tcl, whose lines it prints as "worker GEN LINE".
#	Prints "server PID PORT GEN" once it serves (GEN counts the
#	executions, from 0). Commands on standard input:
#
#	    fill	opens /dev/null until no descriptor is left (they are
#			close-on-exec), then prints "filled": its accept
#			thread can take no descriptor from the queue until
#			the exec
#	    reexec	re-executes this script
#
#	At end of input kills its worker and exits.

package require socketserver

set script [file normalize [info script]]
set gen [expr {[info exists env(REEXEC_GEN)] ? $env(REEXEC_GEN) : 0}]
if {[info exists env(SOCKETSERVER_LISTENER)]} {
    lassign $env(SOCKETSERVER_LISTENER) port fd
    ::socketserver::socket server -keepalive 30 -fd $fd $port
} else {
    set port [::socketserver::socket server -keepalive 30 -myaddr 127.0.0.1 0]
}
fconfigure stdout -buffering line

set worker [::socketserver::socket spawn [info nameofexecutable] \
	[file join [file dirname $script] kaworker.tcl] $port]
fconfigure $worker -blocking 0
fileevent $worker readable {
    while {[gets $worker line] >= 0} {
	puts "worker $gen $line"
    }
    if {[eof $worker]} {
	fileevent $worker readable {}
    }
}
puts "server [pid] $port $gen"

fileevent stdin readable {
    if {[gets stdin line] < 0} {
	catch {::socketserver::kill KILL [pid $worker]}
	exit 0
    }
    switch -- $line {
	fill {
	    set fills {}
	    while {![catch {open /dev/null} f]} {
		lappend fills $f
	    }
	    puts filled
	}
	reexec {
	    set env(REEXEC_GEN) [expr {$gen + 1}]
	    if {[catch {::socketserver::socket reexec $port \
		    [info nameofexecutable] $script} msg]} {
		puts "reexec failed: $msg"
	    }
	}
    }
}
vwait forever
