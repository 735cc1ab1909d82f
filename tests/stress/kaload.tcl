# kaload.tcl PORT CLIENTS MAX --
#
#	Keep-alive clients for the upgrade stress tests. Opens CLIENTS
#	connections and prints "opened CLIENTS". On each, sends a line "N"
#	(N counts the requests of the whole run) and, as soon as its answer
#	"PID N ..." comes, the next one: back to back, until a line "stop"
#	on standard input or MAX requests in all. A connection that ends
#	with a request unanswered counts it as lost and is opened again;
#	one unanswered for 20 s counts as a hang and is closed. Once every
#	request sent has been answered or counted, prints "result DICT":
#	sent, answered, lost, bad (a wrong answer), hangs, refused (a
#	connection that could not be opened) and versions (the third word
#	of the answers, each once). Event-driven, one process.

lassign $argv port clients max
set result {sent 0 answered 0 lost 0 bad 0 hangs 0 refused 0}
set versions {}
set stopping 0
set open 0
set next 0

# start --
#	Opens one connection and sends its first request.
proc start {} {
    global port
    if {[catch {socket 127.0.0.1 $port} chan]} {
	dict incr ::result refused
	after 10 start
	return
    }
    incr ::open
    set ::hang($chan) {}
    fconfigure $chan -blocking 0 -buffering line -translation lf
    fileevent $chan readable [list answer $chan]
    send $chan
}

# send chan --
#	The connection's next request, unless the run is over: then it is
#	closed.
proc send {chan} {
    global result
    after cancel $::hang($chan)
    if {$::stopping || $::next >= $::max} {
	finish $chan
	return
    }
    set ::waiting($chan) [incr ::next]
    dict incr result sent
    if {[catch {puts $chan $::waiting($chan)}]} {
	dict incr result lost
	finish $chan
	start
	return
    }
    set ::hang($chan) [after 20000 [list hung $chan]]
}

# answer chan --
#	Readable: the answer to its request, or the end of the connection.
proc answer {chan} {
    global result
    if {[catch {gets $chan line} n] || ($n < 0 && [eof $chan])} {
	dict incr result lost
	finish $chan
	if {!$::stopping && $::next < $::max} {
	    start
	}
	return
    }
    if {$n < 0} {
	return
    }
    if {[regexp {^\d+ (\d+) (\S+)$} $line -> got version]
	    && $got == $::waiting($chan)} {
	dict set ::versions $version 1
	dict incr result answered
	if {[dict get $result answered] % 1000 == 0} {
	    puts "progress [dict get $result answered]"
	    flush stdout
	}
    } else {
	dict incr result bad
    }
    send $chan
}

proc hung {chan} {
    dict incr ::result hangs
    finish $chan
}

proc finish {chan} {
    after cancel $::hang($chan)
    unset ::hang($chan) ::waiting($chan)
    catch {close $chan}
    if {[incr ::open -1] == 0 && ($::stopping || $::next >= $::max)} {
	set ::done 1
    }
}

proc command {} {
    if {[gets stdin line] < 0 || $line eq "stop"} {
	fileevent stdin readable {}
	set ::stopping 1
	if {$::open == 0} {
	    set ::done 1
	}
    }
}

for {set i 0} {$i < $clients} {incr i} {
    start
}
puts "opened $clients"
flush stdout
fileevent stdin readable command
vwait done
dict set result versions [lsort [dict keys $versions]]
puts "result $result"
flush stdout
