# parkload.tcl PORT COUNT --
#
#	The client side of the keep-alive stress test. Opens COUNT
#	connections and sends one line on each ("r0"), reads every answer,
#	and prints "parked RESULT". Then, for each line "wake" on standard
#	input, sends the next line ("r1", "r2"...) on every connection in a
#	random order, reads the answers in that order, and prints "woken
#	RESULT". RESULT is a dict: answered, dups (a worker's (PID, SEQ)
#	seen twice: one hand-over answered twice), bad (a wrong answer) and
#	eof. Closes everything at end of input. Blocking I/O: its
#	descriptors go past 1023 (run it under timeout(1)).

lassign $argv port count
array set seen {}
set round 0

proc check {chan line} {
    global result seen
    if {[gets $chan reply] < 0} {
	dict incr result eof
    } elseif {![regexp {^(\d+) (\d+) (\S+)$} $reply -> pid seq got] || $got ne $line} {
	dict incr result bad
    } elseif {[info exists seen($pid,$seq)]} {
	dict incr result dups
    } else {
	set seen($pid,$seq) 1
	dict incr result answered
    }
}

set result {answered 0 dups 0 bad 0 eof 0}
set chans {}
for {set i 0} {$i < $count} {incr i} {
    set chan [socket 127.0.0.1 $port]
    fconfigure $chan -buffering line -translation lf
    puts $chan r0
    lappend chans $chan
}
foreach chan $chans {
    check $chan r0
}
puts "parked $result"
flush stdout

while {[gets stdin command] >= 0} {
    incr round
    set result {answered 0 dups 0 bad 0 eof 0}
    set order [lmap chan $chans {list [expr {rand()}] $chan}]
    set order [lmap pair [lsort -real -index 0 $order] {lindex $pair 1}]
    foreach chan $order {
	puts $chan r$round
    }
    foreach chan $order {
	check $chan r$round
    }
    puts "woken $result"
    flush stdout
}
foreach chan $chans {
    close $chan
}
