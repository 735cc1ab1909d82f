# load.tcl PORT COUNT ?-concurrency N? ?-mode concurrent|burst|keep?
#	?-timeout MS? --
#
#	The client side of the stress tests. Each connection sends one line,
#	its number, and expects "PID SEQ NUMBER" back. At the end it prints
#	one line, a dict:
#
#	    attempted answered eof errors hangs dups bad
#	    workers {PID {ANSWERS MINSEQ MAXSEQ} ...}
#
#	A worker's SEQ counts the connections it took, so a (PID, SEQ) seen
#	twice is a connection answered twice (dups), and MAXSEQ - MINSEQ + 1
#	- ANSWERS is how many it took, between those, without answering.
#
#	concurrent: N connections at a time, each closed once answered.
#	burst: opens all COUNT connections and sends every line first,
#	    prints "opened COUNT", then reads the answers in order.
#	keep: one at a time, keeping each open until all are answered.
#	burst and keep read with blocking I/O (their descriptors go past
#	1023, which Tcl's notifier can't watch): run them under timeout(1).

lassign $argv port count
array set opt {-concurrency 8 -mode concurrent -timeout 10000}
array set opt [lrange $argv 2 end]
array set result {attempted 0 answered 0 eof 0 errors 0 hangs 0 dups 0 bad 0}
array set seen {}
array set workers {}

# record n reply --
#	Checks and counts one answer to connection n.
proc record {n reply} {
    if {![regexp {^(\d+) (\d+) (.*)$} $reply -> pid seq rest]
	    || ![string match "$n*" $rest]} {
	incr ::result(bad)
	return
    }
    if {[info exists ::seen($pid,$seq)]} {
	incr ::result(dups)
	return
    }
    set ::seen($pid,$seq) 1
    incr ::result(answered)
    if {![info exists ::workers($pid)]} {
	set ::workers($pid) [list 0 $seq $seq]
    }
    lassign $::workers($pid) answers min max
    set ::workers($pid) [list [incr answers] [expr {min($min, $seq)}] \
	    [expr {max($max, $seq)}]]
}

# openOne n --
#	Counts an attempt, connects and sends n. Returns the channel, or ""
#	once the failure is counted as an error.
proc openOne {n} {
    incr ::result(attempted)
    if {[catch {socket 127.0.0.1 $::port} chan]} {
	incr ::result(errors)
	return ""
    }
    fconfigure $chan -buffering line -translation lf
    if {[catch {puts $chan $n}]} {
	incr ::result(errors)
	catch {close $chan}
	return ""
    }
    return $chan
}

# answerOne chan n --
#	Blocking: reads and counts the answer to connection n.
proc answerOne {chan n} {
    if {[catch {gets $chan line} got]} {
	incr ::result(errors)
    } elseif {$got < 0} {
	incr ::result(eof)
    } else {
	record $n $line
    }
}

# --- concurrent ---------------------------------------------------------

proc startOne {} {
    if {$::next > $::count} {
	return
    }
    set n $::next
    incr ::next
    incr ::active
    set chan [openOne $n]
    if {$chan eq ""} {
	finishOne {}
	return
    }
    fconfigure $chan -blocking 0
    set timer [after $::opt(-timeout) [list hangOne $chan]]
    fileevent $chan readable [list readOne $chan $n $timer]
}

proc readOne {chan n timer} {
    if {[catch {gets $chan line} got]} {
	incr ::result(errors)
    } elseif {$got >= 0} {
	record $n $line
    } elseif {[eof $chan]} {
	incr ::result(eof)
    } else {
	return
    }
    after cancel $timer
    finishOne $chan
}

proc hangOne {chan} {
    incr ::result(hangs)
    finishOne $chan
}

proc finishOne {chan} {
    if {$chan ne ""} {
	catch {close $chan}
    }
    incr ::active -1
    if {$::next <= $::count} {
	after idle startOne
    } elseif {$::active == 0} {
	set ::done 1
    }
}

# --- burst and keep -----------------------------------------------------

proc burst {} {
    set chans {}
    for {set n 1} {$n <= $::count} {incr n} {
	set chan [openOne $n]
	if {$chan ne ""} {
	    lappend chans $n $chan
	}
    }
    puts "opened [expr {[llength $chans] / 2}]"
    flush stdout
    foreach {n chan} $chans {
	answerOne $chan $n
	catch {close $chan}
    }
}

proc keep {} {
    set chans {}
    for {set n 1} {$n <= $::count} {incr n} {
	set chan [openOne $n]
	if {$chan ne ""} {
	    lappend chans $chan
	    answerOne $chan $n
	}
    }
    foreach chan $chans {
	close $chan
    }
}

switch -- $opt(-mode) {
    concurrent {
	set next 1
	set active 0
	for {set i 0} {$i < $opt(-concurrency)} {incr i} {
	    startOne
	}
	if {$active > 0} {
	    vwait done
	}
    }
    burst {
	burst
    }
    keep {
	keep
    }
}
puts [list {*}[array get result] workers [array get workers]]
