# parkserver.tcl WORKERS --
#
#	The serving process of the keep-alive stress test: listens on a free
#	port of 127.0.0.1 with -ready and a long -keepalive, spawns WORKERS
#	keep-alive workers (tests/kaworker.tcl: "PID SEQ LINE", then
#	'release'), prints "server PID PORT", and obeys commands on standard
#	input:
#
#	    info	print "info DICT": watching, parked, closed, accepted,
#			fds (descriptors open) and rss (KB)
#	    (EOF)	kill the workers, reap them, exit
#
#	Needs no TclX: runs under Tcl 8.6 and Tcl 9.

package require socketserver

set port [::socketserver::socket server -ready 60 -keepalive 600 \
	-myaddr 127.0.0.1 0]
set kaWorker [file join [file dirname [file dirname [file normalize \
	[info script]]]] kaworker.tcl]
set workers {}
for {set i 0} {$i < [lindex $argv 0]} {incr i} {
    set chan [::socketserver::socket spawn [info nameofexecutable] $kaWorker]
    gets $chan
    lappend workers $chan
}
puts "server [pid] $port"
flush stdout

proc rss {} {
    set f [open /proc/self/status]
    regexp {VmRSS:\s+(\d+)} [read $f] -> kb
    close $f
    return $kb
}

proc command {} {
    if {[gets stdin line] < 0} {
	foreach chan $::workers {
	    catch {::socketserver::kill KILL [pid $chan]}
	    catch {close $chan}
	}
	exit 0
    }
    if {$line eq "info"} {
	set info [::socketserver::socket info $::port]
	set result [dict filter $info key watching parked closed accepted]
	dict set result fds [llength [glob /proc/self/fd/*]]
	dict set result rss [rss]
	puts "info $result"
	flush stdout
    }
}
fileevent stdin readable command
vwait forever
