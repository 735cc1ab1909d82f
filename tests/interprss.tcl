# interprss.tcl COUNT --
#
#	Memory growth over receivers that come and go, in a process of its
#	own: COUNT interpreters, one after the other, each loads the package,
#	asks for a connection, gets one (so that its reply socket becomes
#	readable and, on Tcl 8.6 with threads, its watcher thread wakes) and
#	is deleted. After a warm-up of COUNT / 5 of them, prints how much the
#	resident set grew over the COUNT, in KB. Each client connects from
#	another 127.0.X.Y address, so that the client side's TIME_WAIT sockets
#	never run out of ephemeral ports. Fails after 120 s.

package require socketserver

lassign $argv count

source [file join [file dirname [info script]] rss.tcl]

set port [::socketserver::socket server -myaddr 127.0.0.1 0]
set deadline [expr {[clock seconds] + 120}]
set made 0

# receivers n --
#	n interpreters that each receive one connection and are deleted.
proc receivers {n} {
    for {set i 0} {$i < $n} {incr i} {
	set slave [interp create]
	load {} Socketserver $slave
	interp alias $slave served {} set ::served
	# A proc of its own: Tcl 9.0 fails (with an empty message) a lambda
	# that another interpreter, deleted since, ran.
	$slave eval {proc serve {chan args} {close $chan; served 1}}
	$slave eval [list ::socketserver::socket client -port $::port serve]
	set from 127.[expr {$::made / 62500 % 250}].[expr {$::made / 250 % 250}].[expr {1 + $::made % 250}]
	incr ::made
	unset -nocomplain ::served
	set id [after [expr {1000 * ($::deadline - [clock seconds])}] {
	    set ::served timeout
	}]
	close [socket -myaddr $from 127.0.0.1 $::port]
	vwait ::served
	after cancel $id
	interp delete $slave
	if {$::served ne "1"} {
	    error "interpreter $::made got no connection in 120 s"
	}
    }
}

receivers [expr {$count / 5}]
set before [rss]
receivers $count
puts [expr {[rss] - $before}]
