# holdclients.tcl PORT SILENT KEPT --
#
#	Clients that hold a server without keeping it busy, in a process of
#	their own: SILENT connections that send nothing, and KEPT keep-alive
#	connections that each send "keep" and read its answer. Prints
#	"held SILENT KEPT" once all are open and every kept one answered.
#	Then, for each line "wake" on standard input, sends "keep" again on
#	every kept connection, in random order, and prints "woken N" with
#	how many were answered. Closes everything and exits at end of input.
#	Blocking I/O with an alarm: a connection never answered ends the
#	process (exit 2) rather than hang.

lassign $argv port silent kept

proc answered {chan} {
    expr {[gets $chan line] > 0 && [string match "*: keep *" $line]}
}

set silentChans {}
for {set i 0} {$i < $silent} {incr i} {
    lappend silentChans [socket 127.0.0.1 $port]
}
set keptChans {}
set ok 0
for {set i 0} {$i < $kept} {incr i} {
    set chan [socket 127.0.0.1 $port]
    fconfigure $chan -buffering line -translation lf
    puts $chan keep
    incr ok [answered $chan]
    lappend keptChans $chan
}
puts "held $silent $ok"
flush stdout

while {[gets stdin line] >= 0} {
    if {$line ne "wake"} {
	continue
    }
    set order [lmap chan $keptChans {list [expr {rand()}] $chan}]
    set order [lmap pair [lsort -real -index 0 $order] {lindex $pair 1}]
    foreach chan $order {
	puts $chan keep
    }
    set ok 0
    foreach chan $order {
	incr ok [answered $chan]
    }
    puts "woken $ok"
    flush stdout
}
foreach chan [concat $silentChans $keptChans] {
    close $chan
}
