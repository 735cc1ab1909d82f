# rssloop.tcl HANDLERS CALLS --
#
#	Memory growth over failing calls, in a process of its own. After a
#	warm-up, HANDLERS connections each go to a handler that raises an
#	error, then CALLS calls of 'info' fail on their arguments. Prints
#	"HANDLER-KB INFO-KB": how much the resident set grew over each loop.
#	Each client connects from another 127.0.X.Y address, so that the
#	client side's TIME_WAIT sockets never run out of ephemeral ports.

package require socketserver

lassign $argv handlers calls

source [file join [file dirname [info script]] rss.tcl]

set port [::socketserver::socket server -myaddr 127.0.0.1 0]
set failures 0
set round 0
interp bgerror {} {apply {args {incr ::failures}}}

proc fail {chan addr peerport} {
    ::socketserver::socket client fail
    error "handler failed"
}

# connectMany n --
#	Makes n connections that the failing handler takes, 50 at a time,
#	waiting for each batch's handlers to fail before the next batch, so
#	that what is in flight (background errors not yet reported among it)
#	stays the same however slow the machine. 60 s at most.
proc connectMany {n} {
    incr ::round
    set deadline [expr {[clock seconds] + 60}]
    ::socketserver::socket client fail
    for {set i 0} {$i < $n} {} {
	set target [expr {$::failures + min(50, $n - $i)}]
	for {set j 0} {$j < 50 && $i < $n} {incr i; incr j} {
	    set from 127.[expr {$::round % 250}].[expr {$i / 250 % 250}].[expr {1 + $i % 250}]
	    close [socket -myaddr $from 127.0.0.1 $::port]
	}
	while {$::failures < $target} {
	    if {[clock seconds] > $deadline} {
		error "only [expr {$i - ($target - $::failures)}] of $n handlers ran in 60 s"
	    }
	    after 1 {set ::tick 1}
	    vwait ::tick
	}
    }
    ::socketserver::socket cancel
}

connectMany 2000
for {set i 0} {$i < 2000} {incr i} {
    catch {::socketserver::socket info 1 2}
}
set before [rss]
connectMany $handlers
set middle [rss]
for {set i 0} {$i < $calls} {incr i} {
    catch {::socketserver::socket info 1 2}
}
puts "[expr {$middle - $before}] [expr {[rss] - $middle}]"
