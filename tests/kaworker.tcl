# kaworker.tcl ?-log file? ?port? --
#
#	A keep-alive worker that the tests start with '::socketserver::socket
#	spawn'. For each connection it is handed, it answers one line with
#	"PID SEQ LINE" (SEQ counts the connections this worker has taken:
#	a (PID, SEQ) seen twice is one hand-over answered twice), then gives
#	the connection back with 'release' and asks again. Lines that do
#	more:
#
#	    close	answers, then closes the connection.
#	    unread	answers, then tries 'release' with the next line still
#			in Tcl's buffer: answers "PID SEQ refused ERRORCODE",
#			then answers that next line and releases.
#	    unflushed	tries 'release' with its answer not flushed: answers
#			"PID SEQ refused ERRORCODE" once flushed, releases.
#	    again	releases, then calls 'release' on the gone channel and
#			'close' of it: prints "again RESULT RESULT" on stdout.
#	    waitnext	answers, waits until the next request has come (unread),
#			then releases.
#	    evented	answers, and releases with a readable fileevent still
#			set on the channel.
#	    after PATH	answers, waits until file PATH exists (at most 60 s),
#			releases, and prints "released PID SEQ" (if its
#			output is still there).
#	    sleepafter MS
#			answers, waits until the next request has come,
#			releases, then sleeps MS ms (work after 'release')
#			and prints "slept PID SEQ" before it asks again.
#
#	Prints "ready PID" once it has asked; background errors go to
#	stdout as "bgerror MESSAGE ERRORCODE"; it leaves on SOCKETSERVER
#	CLOSED.

set port $argv
set argv {}
package require socketserver

set seq 0
interp bgerror {} [list apply {{msg opts} {
    set code [dict get $opts -errorcode]
    catch {
	puts [list bgerror $msg $code]
	flush stdout
    }
    if {[lrange $code 0 1] eq {SOCKETSERVER CLOSED}} {
	exit 0
    }
}}]

proc ask {} {
    ::socketserver::socket client {*}[expr {$::port eq "" ? "" : [list -port $::port]}] serve
}

proc serve {chan addr peerport} {
    incr ::seq
    fconfigure $chan -buffering line -translation lf -blocking 1
    set line [gets $chan]
    if {$line eq "" && [eof $chan]} {
	close $chan
	return [ask]
    }
    set me "[pid] $::seq"
    switch -glob -- $line {
	close {
	    puts $chan "$me $line"
	    close $chan
	    return [ask]
	}
	unread {
	    puts $chan "$me $line"
	    catch {::socketserver::socket release $chan} msg opts
	    puts $chan "$me refused [dict get $opts -errorcode]"
	    puts $chan "$me [gets $chan]"
	}
	unflushed {
	    fconfigure $chan -buffering full
	    puts $chan "$me $line"
	    catch {::socketserver::socket release $chan} msg opts
	    puts $chan "$me refused [dict get $opts -errorcode]"
	    flush $chan
	}
	again {
	    puts $chan "$me $line"
	    ::socketserver::socket release $chan
	    puts [list again [catch {::socketserver::socket release $chan}] \
		[catch {close $chan}]]
	    flush stdout
	    return [ask]
	}
	evented {
	    puts $chan "$me $line"
	    fileevent $chan readable {set ::never 1}
	}
	{sleepafter *} {
	    puts $chan "$me $line"
	    fileevent $chan readable {set ::arrived 1}
	    vwait ::arrived
	    fileevent $chan readable {}
	    ::socketserver::socket release $chan
	    after [lindex $line 1]
	    puts "slept $me"
	    flush stdout
	    return [ask]
	}
	{after *} {
	    puts $chan "$me $line"
	    set deadline [expr {[clock milliseconds] + 60000}]
	    while {![file exists [lindex $line 1]]
		    && [clock milliseconds] < $deadline} {
		after 10
	    }
	    ::socketserver::socket release $chan
	    catch {
		puts "released $me"
		flush stdout
	    }
	    return [ask]
	}
	waitnext {
	    puts $chan "$me $line"
	    fileevent $chan readable {set ::arrived 1}
	    vwait ::arrived
	    fileevent $chan readable {}
	}
	default {
	    puts $chan "$me $line"
	}
    }
    ::socketserver::socket release $chan
    ask
}

ask
puts "ready [pid]"
flush stdout
vwait forever
