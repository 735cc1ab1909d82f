# startfail.tcl --
#
#	Run by board.test with a low descriptor limit (prlimit): a serving
#	process that is its own worker. Its handler holds a connection; the
#	port is closed, then 'server' on it again fails after the listener
#	is open, for want of descriptors for the accept thread; then the
#	handler releases the connection. Nothing listens, so the release
#	must close it rather than leave it in the queue. Prints one list:
#	the errorcode of the failed 'server' and whether its message says
#	that accepting could not start, 'info''s listening, and what the
#	client saw (eof, a line, or timeout after 10 s).

package require socketserver

set port [::socketserver::socket server -myaddr 127.0.0.1 0]
::socketserver::socket client -port $port {apply {{chan addr peerPort} {
    set ::served $chan
}}}
set client [socket 127.0.0.1 $port]
fconfigure $client -translation lf -buffering line
puts $client one
vwait ::served
::socketserver::socket close $port

# Every descriptor taken, then one more free each time until 'server'
# gets past its listener.
set held {}
while {![catch {open /dev/null} f]} {
    lappend held $f
}
set failure {}
while {[llength $held] > 0} {
    close [lindex $held end]
    set held [lrange $held 0 end-1]
    if {![catch {::socketserver::socket server -myaddr 127.0.0.1 $port} msg opts]} {
	set failure "listening: nothing failed"
	break
    }
    if {[string match "couldn't start accepting*" $msg]} {
	set failure [list [dict get $opts -errorcode] 1]
	break
    }
}
foreach f $held {
    close $f
}

::socketserver::socket release $::served
set got timeout
set timer [after 10000 {set got timeout; set done 1}]
fileevent $client readable {
    set got [expr {[gets $client line] >= 0 ? [list line $line] : "eof"}]
    set done 1
}
vwait done
puts [list $failure \
	[dict get [::socketserver::socket info $port] listening] $got]
