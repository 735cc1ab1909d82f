# spawnworker.tcl ?-log file? ?port? --
#
#	A worker that the tests start with '::socketserver::socket spawn':
#	it serves lines as the forked workers of helpers.tcl do (w_serve:
#	"PID LINE" back, "quit" or end of file to hang up and ask again),
#	prints "ready PID PORTS" once it has asked, and reports background
#	errors on its output (and to file, with -log: its output may have
#	no reader left), leaving on SOCKETSERVER CLOSED.

# tcltest, which helpers.tcl loads, would read the arguments as its own.
set log {}
if {[lindex $argv 0] eq "-log"} {
    set argv [lassign $argv - log]
}
set port $argv
set argv {}
source [file join [file dirname [file normalize [info script]]] helpers.tcl]

interp bgerror {} [list apply {{msg opts} {
    set code [dict get $opts -errorcode]
    catch {
	puts [list bgerror $msg $code]
	flush stdout
    }
    if {$::log ne ""} {
	set f [open $::log a]
	puts $f [list bgerror $msg $code]
	close $f
    }
    if {[lrange $code 0 1] eq {SOCKETSERVER CLOSED}} {
	exit 0
    }
}}]
w_ask {*}$port
puts "ready [pid] [::socketserver::socket info]"
flush stdout
vwait forever
