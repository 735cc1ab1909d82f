# spread.tcl ?connections? ?workers? --
#
#	How evenly socketserver spreads sequential connections over idle
#	workers: opens connections one after another (default 10000) to
#	WORKERS (default 8) forked workers that answer with their pid, and
#	prints connections per worker, min and max.

package require Tclx
package require socketserver

lassign [concat $argv 10000 8] connections workers
set port [::socketserver::socket server -myaddr 127.0.0.1 0]

proc answer {chan addr peerport} {
    puts $chan [pid]
    close $chan
    ::socketserver::socket client answer
}

set pids {}
for {set i 0} {$i < $workers} {incr i} {
    flush stdout
    set pid [fork]
    if {$pid == 0} {
	interp bgerror {} {apply {args {exit 0}}}
	::socketserver::socket client answer
	vwait forever
    }
    lappend pids $pid
}
while {[dict get [::socketserver::socket info $port] waiting] < $workers} {
    after 10
}
foreach pid $pids {
    set count($pid) 0
}
for {set n 0} {$n < $connections} {incr n} {
    set chan [socket 127.0.0.1 $port]
    incr count([gets $chan])
    close $chan
}
foreach pid $pids {
    kill KILL $pid
    wait $pid
}
set counts [lmap pid $pids {set count($pid)}]
puts "spread: $connections sequential connections over $workers idle workers:\
	min [tcl::mathfunc::min {*}$counts], max [tcl::mathfunc::max {*}$counts]\
	(per worker: $counts)"
