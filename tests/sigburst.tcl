# sigburst.tcl SECONDS --
#
#	A thousand SIGUSR1 a second for SECONDS seconds, from a shell, to
#	this process, whose ::socketserver::signal script counts them and
#	reads the sequence number the shell wrote before each. Then SIGUSR2.
#	Prints "SENT COUNT LAST USR2": signals sent, script runs, the last
#	sequence number a run saw (SENT unless the last signal was lost),
#	and 1 if the USR2 script ran (the process did not deadlock).

package require socketserver

set seconds [lindex $argv 0]
set seqFile /tmp/sigburst.[pid]
set count 0
set last 0

proc readSequence {} {
    incr ::count
    set f [open $::seqFile]
    set text [string trim [read $f]]
    close $f
    if {[string is integer -strict $text]} {
	set ::last $text
    }
}

# watch var limit --
#	Runs the event loop until var is set, or limit ms pass.
proc watch {var limit} {
    set id [after $limit [list set $var timeout]]
    vwait $var
    after cancel $id
}

::socketserver::signal USR1 readSequence
::socketserver::signal SIGUSR2 {set ::usr2 1}

set shell {
    n=0; i=0
    while [ $i -lt $3 ]; do
	j=0
	while [ $j -lt 100 ]; do
	    n=$((n + 1)); echo $n > "$2"; kill -USR1 $1; j=$((j + 1))
	done
	sleep 0.1; i=$((i + 1))
    done
    echo $n
}
set sender [open |[list sh -c $shell sh [pid] $seqFile [expr {$seconds * 10}]] r]
fileevent $sender readable [list apply {{chan} {
    if {[gets $chan line] >= 0} {
	set ::sent $line
    } elseif {[eof $chan]} {
	set ::sent eof
    }
}} $sender]
watch ::sent [expr {$seconds * 1000 + 60000}]
close $sender

# The script runs after the last signal: wait for it, not for time.
set deadline [expr {[clock milliseconds] + 10000}]
while {$last != $sent && [clock milliseconds] < $deadline} {
    after 10 {set ::tick 1}
    vwait ::tick
}
::socketserver::kill USR2 [pid]
watch ::usr2 10000
file delete $seqFile
puts [list $sent $count $last [expr {$usr2 eq "1"}]]
