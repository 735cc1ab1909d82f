# reusepid.tcl ?worker? --
#
#	Run by board.test as the first process of a new pid namespace
#	(unshare --pid --fork --mount-proc), where it alone starts
#	processes, so that it can hand a dead worker's pid to the next one
#	(/proc/sys/kernel/ns_last_pid, root only). It serves a port and
#	spawns a worker, which takes a connection and holds it; kills that
#	worker (SIGKILL: its slot still says serving), collects it, and
#	spawns a second worker, which gets the first one's pid and asks.
#	Prints one list: reused 1 if the pids are the same, then what
#	'info' said of the workers before the kill and after the second
#	one asked, as {pid state} pairs with the pid as P.
#
#	With "worker": the worker. It asks, prints "ready PID", and prints
#	"serving" when a connection comes, which it keeps open.

package require socketserver

if {$argv eq "worker"} {
    ::socketserver::socket client {apply {{chan addr port} {
	puts serving
	flush stdout
    }}}
    puts "ready [pid]"
    flush stdout
    vwait forever
}

set port [::socketserver::socket server -myaddr 127.0.0.1 0]

proc spawnWorker {} {
    set chan [::socketserver::socket spawn [info nameofexecutable] \
	    [info script] worker]
    if {[gets $chan line] < 0 || ![regexp {^ready (\d+)$} $line -> pid]} {
	error "the worker did not start: $line"
    }
    list $chan $pid
}

proc workers {port victim} {
    lmap worker [dict get [::socketserver::socket info $port] workers] {
	set pid [dict get $worker pid]
	list [expr {$pid == $victim ? "P" : $pid}] [dict get $worker state]
    }
}

lassign [spawnWorker] chan first
set client [socket 127.0.0.1 $port]
puts $client hello
flush $client
if {[gets $chan line] < 0 || $line ne "serving"} {
    error "the worker did not serve: $line"
}
set before [workers $port $first]
::socketserver::kill KILL $first
catch {close $chan}

# The next process started here takes the dead worker's pid.
set f [open /proc/sys/kernel/ns_last_pid w]
puts $f [expr {$first - 1}]
close $f
lassign [spawnWorker] chan second
puts [list reused [expr {$second == $first}] before $before \
	after [workers $port $first]]
close $client
::socketserver::kill KILL $second
catch {close $chan}
