# silent.tcl PORT N SECONDS --
#
#	The slow clients of the benchmark's slowclient scenario: holds N
#	TCP connections to 127.0.0.1:PORT that send nothing, and opens a new
#	one each time the server closes one, so that N are open all along.
#	Prints "ready N" once the first N are connected (the kernel has
#	completed them: a pre-fork server may not have accepted them yet).
#	Bounded: N at most 1000, at most 100 * N + 1000 connections opened
#	in all, and it exits by itself after SECONDS (at most 600) if the
#	benchmark has not killed it by then (it runs in a process group of
#	its own, stopped as the servers are).

lassign $argv port n seconds
if {![string is integer -strict $n] || $n < 1 || $n > 1000
	|| ![string is integer -strict $seconds] || $seconds < 1 || $seconds > 600} {
    puts stderr "usage: silent.tcl PORT N SECONDS (N 1..1000, SECONDS 1..600)"
    exit 2
}
set limit [expr {100 * $n + 1000}]
set opened 0
set connected 0
set announced 0

# open1 --
#	Opens one more silent connection, unless the bound is reached.
proc open1 {} {
    if {$::opened >= $::limit} {
	return
    }
    incr ::opened
    if {[catch {socket -async 127.0.0.1 $::port} chan]} {
	after 100 open1
	return
    }
    fconfigure $chan -blocking 0 -translation binary
    fileevent $chan writable [list connected $chan]
}

# connected chan --
#	The connection chan is complete (or failed: then another is opened
#	a little later).
proc connected {chan} {
    fileevent $chan writable {}
    if {[catch {fconfigure $chan -error} error] || $error ne ""} {
	catch {close $chan}
	after 100 open1
	return
    }
    incr ::connected
    if {!$::announced && $::connected >= $::n} {
	set ::announced 1
	puts "ready $::n"
	flush stdout
    }
    fileevent $chan readable [list closed $chan]
}

# closed chan --
#	The server sent something or closed chan: once it is closed,
#	another silent connection takes its place.
proc closed {chan} {
    if {[catch {read $chan}] || [eof $chan]} {
	catch {close $chan}
	incr ::connected -1
	open1
    }
}

for {set i 0} {$i < $n} {incr i} {
    open1
}
after [expr {$seconds * 1000}] exit
vwait forever
