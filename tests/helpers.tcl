# helpers.tcl --
#
#	Shared by the test files: constraints, forked workers that are always
#	reaped, and clients that never wait without a deadline.

package require tcltest 2.5
namespace import -force ::tcltest::*
package require socketserver 2.0

# SOCKETSERVER_SINGLE_PROCESS=1 leaves out the tests that fork, for
# memory checkers that follow one process.
testConstraint tclx [expr {![info exists ::env(SOCKETSERVER_SINGLE_PROCESS)]
	&& ![catch {package require Tclx}]}]
testConstraint ipv6 [expr {![catch {close [socket -server {} -myaddr ::1 0]}]}]
testConstraint procfs [file isdirectory /proc/self/fd]
# A supervisor with its workers, or a chain of programs across 'reexec':
# under valgrind (make memcheck, make asan set SOCKETSERVER_SINGLE_PROCESS)
# each of their processes takes seconds to start, and their waits time out.
testConstraint fewProcesses [expr {![info exists ::env(SOCKETSERVER_SINGLE_PROCESS)]}]
testConstraint prlimit [expr {[auto_execok prlimit] ne ""}]
# Which build is tested: Linux's own interfaces (epoll, eventfd, memfd,
# prctl, SO_PEERCRED), or 'make PORTABLE=1', POSIX's alone. A test of what
# only one of them guarantees names it.
testConstraint linuxBuild [expr {$::socketserver::build eq "linux"}]
testConstraint portableBuild [expr {$::socketserver::build eq "portable"}]

# A pid reused at will: in a new pid namespace, as root, a process may say
# which pid the next one gets (ns_last_pid). ::pidNamespace goes before a
# command to run it as the namespace's first process (--kill-child: all of
# the namespace dies with unshare). --propagation unchanged: unshare makes
# /proc private itself, and in a chroot / is no mount point. The files
# that use it set the constraint: testConstraint pidNamespace
# [pidNamespaceWorks] (root, and util-linux's unshare).
set ::pidNamespace {unshare --pid --fork --mount-proc --propagation unchanged
    --kill-child}
proc pidNamespaceWorks {} {
    expr {[auto_execok unshare] ne "" && ![catch {
	exec {*}$::pidNamespace sh -c {echo 1 > /proc/sys/kernel/ns_last_pid}
    }]}
}

set ::testsDir [file dirname [file normalize [info script]]]

# The library 'make' builds for this Tcl: Tcl 9's are named "libtcl9...".
set ::libFile lib[expr {[package vsatisfies [info tclversion] 9-] ? "tcl9" : ""}]socketserver2.0[info sharedlibextension]

# The library the tests run against: the one 'package require' loaded
# (make asan's is in tests/asan).
set ::libPath [lindex [lsearch -inline -index 1 [info loaded] Socketserver] 0]
set ::workers {}

# forkWorker script --
#	Forks a worker that runs script at global level (normally ending in
#	'vwait forever') and exits: 0 if the script returned, 1 if it failed.
#	The worker inherits this interpreter's procs, so the w_* procs below
#	are at hand. The pid is remembered for reapWorkers.
proc forkWorker {script} {
    flush stdout
    flush stderr
    set pid [fork]
    if {$pid == 0} {
	foreach id [after info] {
	    after cancel $id
	}
	set code [catch {uplevel #0 $script} msg]
	if {$code == 1} {
	    puts stderr "worker [pid]: $msg"
	    flush stderr
	}
	exit [expr {$code == 1}]
    }
    lappend ::workers $pid
    return $pid
}

# reapWorkers --
#	Kills and reaps every worker this test forked.
proc reapWorkers {} {
    foreach pid $::workers {
	catch {kill KILL $pid}
	catch {wait $pid}
    }
    set ::workers {}
}

# Channels of the workers a test started with '::socketserver::socket
# spawn' (their output), for reapSpawned.
set ::spawned {}

# stopPipes chans --
#	Kills the process of each command channel in chans and closes the
#	channel, blocking, so that close reaps it; a channel already closed
#	is passed over.
proc stopPipes {chans} {
    foreach chan $chans {
	catch {::socketserver::kill KILL [pid $chan]}
	catch {fconfigure $chan -blocking 1}
	catch {close $chan}
    }
}

# reapSpawned --
#	Kills every worker spawned by the test and closes its channel (which
#	reaps it).
proc reapSpawned {} {
    stopPipes $::spawned
    set ::spawned {}
}

# Under valgrind (make memcheck sets SOCKETSERVER_SINGLE_PROCESS) every
# process takes seconds to start: the default bounds of the waits below are
# six times longer there. They bound a wait for an event, never a pause.
set ::waitScale [expr {[info exists ::env(SOCKETSERVER_SINGLE_PROCESS)] ? 6 : 1}]

# waitUntil condition ?ms? --
#	Runs the event loop until the expression holds; an error after ms.
proc waitUntil {condition {ms 10000}} {
    set deadline [expr {[clock milliseconds] + $ms * $::waitScale}]
    while {![uplevel 1 [list expr $condition]]} {
	if {[clock milliseconds] > $deadline} {
	    return -code error "timed out waiting for: $condition"
	}
	after 5 {set ::waitUntilTick 1}
	vwait ::waitUntilTick
    }
}

# settles condition ?ms? --
#	Like waitUntil, for a condition that is the assertion itself: 1 once
#	it holds, 0 if it still does not after ms.
proc settles {condition {ms 10000}} {
    expr {![catch {uplevel 1 [list waitUntil $condition $ms]}]}
}

# readLine chan ?ms? --
#	Waits for one line from chan: returns {line TEXT}, {eof} or {timeout}.
proc readLine {chan {ms 10000}} {
    fconfigure $chan -blocking 0
    set ::readResult($chan) {}
    fileevent $chan readable [list apply {{chan} {
	if {[gets $chan line] >= 0} {
	    set ::readResult($chan) [list line $line]
	} elseif {[eof $chan]} {
	    set ::readResult($chan) eof
	}
    }} $chan]
    set id [after [expr {$ms * $::waitScale}] \
	[list set ::readResult($chan) timeout]]
    vwait ::readResult($chan)
    after cancel $id
    fileevent $chan readable {}
    set result $::readResult($chan)
    unset ::readResult($chan)
    return $result
}

# connect port ?host? --
#	A line-buffered client connection.
proc connect {port {host 127.0.0.1}} {
    set chan [socket $host $port]
    fconfigure $chan -buffering line -translation {auto lf}
    return $chan
}

# ask port line --
#	One exchange on a new connection: sends line, returns what readLine
#	saw, closes.
proc ask {port line} {
    set chan [connect $port]
    puts $chan $line
    set reply [readLine $chan]
    close $chan
    return $reply
}

# accepted port / received port --
#	This process's counters for port.
proc accepted {port} {
    dict get [::socketserver::socket info $port] accepted
}
proc received {port} {
    dict get [::socketserver::socket info $port] received
}

# socketsOf pid --
#	The descriptors of process pid that are sockets.
proc socketsOf {pid} {
    set result {}
    foreach link [glob -nocomplain /proc/$pid/fd/*] {
	if {![catch {file readlink $link} target]
		&& [string match socket:* $target]} {
	    lappend result [file tail $link]
	}
    }
    return [lsort -integer $result]
}

# running pid --
#	1 if process pid exists and is not a zombie (an orphan that exited
#	may wait a while for init to reap it).
proc running {pid} {
    if {[catch {open /proc/$pid/stat} f]} {
	return 0
    }
    set stat [read $f]
    close $f
    expr {[lindex [string range $stat [string last ) $stat]+2 end] 0] ne "Z"}
}

# listenerInodes port --
#	The inodes of the sockets listening on TCP port, IPv4 and IPv6.
proc listenerInodes {port} {
    set hex [format %04X $port]
    set inodes {}
    foreach table {/proc/net/tcp /proc/net/tcp6} {
	if {[catch {open $table} f]} {
	    continue
	}
	foreach line [lrange [split [read $f] \n] 1 end] {
	    if {[lindex [split [lindex $line 1] :] end] eq $hex
		    && [lindex $line 3] eq "0A"} {
		lappend inodes [lindex $line 9]
	    }
	}
	close $f
    }
    return $inodes
}

# sendToAsker port --
#	With one ask waiting in this serving process: connects to port, sends
#	the line "kept" and waits until the serving process has sent the
#	connection to the asker. Returns the client's channel.
proc sendToAsker {port} {
    waitUntil {[dict get [::socketserver::socket info $port] waiting] == 1}
    set chan [connect $port]
    puts $chan kept
    waitUntil {[accepted $port] == 1
	&& [dict get [::socketserver::socket info $port] waiting] == 0}
    return $chan
}

# askHere port --
#	Asks for a connection from port in this process; returns the first
#	line that comes on it.
proc askHere {port} {
    set ::askedLine {}
    ::socketserver::socket client -port $port {apply {{chan args} {
	fconfigure $chan -translation lf
	set ::askedLine [list line [gets $chan]]
	close $chan
    }}}
    waitUntil {$::askedLine ne ""}
    lindex $::askedLine 1
}

# quietPorts n --
#	n loopback ports below the kernel's ephemeral range, free a moment
#	ago and never served by this process. Neither a bind to port 0 nor
#	an outgoing connection, of this process or of a test file running
#	beside it, takes such a number: a test may close one and bind it
#	again, or give it to a program that binds it later.
proc quietPorts {n} {
    set high 32768
    catch {
	set f [open /proc/sys/net/ipv4/ip_local_port_range]
	set high [lindex [read $f] 0]
	close $f
    }
    set low [expr {max(1025, $high - 16384)}]
    set ports {}
    for {set tries 0} {[llength $ports] < $n && $tries < 1000} {incr tries} {
	set port [expr {$low + int(rand() * ($high - $low))}]
	if {$port in $ports || $port in [::socketserver::socket info]} {
	    continue
	}
	if {![catch {socket -server {} -myaddr 127.0.0.1 $port} probe]} {
	    close $probe
	    lappend ports $port
	}
    }
    if {[llength $ports] < $n} {
	error "no free port from $low to [expr {$high - 1}]"
    }
    return $ports
}

# refused port ?pids? --
#	1 if none of pids (default: this process) accepts connections on
#	port any more: a connection is refused, or the listener that took it
#	belongs to another process, which may have bound the freed number
#	since (test files run side by side). 0 if one of pids still listens.
proc refused {port {pids {}}} {
    if {$pids eq ""} {
	set pids [pid]
    }
    if {[catch {socket 127.0.0.1 $port} chan]} {
	return 1
    }
    close $chan
    set inodes [listenerInodes $port]
    foreach pid $pids {
	foreach link [glob -nocomplain /proc/$pid/fd/*] {
	    if {![catch {file readlink $link} target]
		    && [regexp {^socket:\[(\d+)\]$} $target -> inode]
		    && $inode in $inodes} {
		return 0
	    }
	}
    }
    return 1
}

# fdCount pid --
proc fdCount {pid} {
    llength [glob -nocomplain /proc/$pid/fd/*]
}

# fillDescriptors --
#	Lowers this process's descriptor limit a little above what it has
#	open and opens /dev/null until no descriptor is left. Returns the
#	channels.
proc fillDescriptors {} {
    set open [dict get [::socketserver::descriptors] open]
    exec prlimit --pid [pid] --nofile=[expr {$open + 16}]:
    set fillers {}
    while {![catch {open /dev/null} chan]} {
	lappend fillers $chan
    }
    return $fillers
}

# cpuTicks pid --
#	User plus system time of pid, in clock ticks.
proc cpuTicks {pid} {
    set f [open /proc/$pid/stat]
    set stat [read $f]
    close $f
    # The command name may hold spaces: count fields after its ')'.
    set fields [string range $stat [string last ) $stat]+2 end]
    expr {[lindex $fields 11] + [lindex $fields 12]}
}

# Worker procs (run in forked workers, see forkWorker).
#
# w_serve: replies "PID LINE" to each line; "quit" or end of file closes
# the connection and asks for the next one. A worker serves one
# connection at a time.
proc w_ask {{port {}}} {
    if {$port eq ""} {
	::socketserver::socket client w_serve
    } else {
	set ::w_port $port
	::socketserver::socket client -port $port w_serve
    }
}
proc w_serve {chan addr peerport} {
    fconfigure $chan -buffering line -translation lf -blocking 0
    fileevent $chan readable [list w_line $chan]
}
# execSockets --
#	Runs a program and returns how many sockets it inherited. The program
#	(tclsh) looks at its own descriptors, which stay still while it does.
proc execSockets {} {
    exec [info nameofexecutable] << {
	set sockets 0
	foreach fd [glob /proc/self/fd/*] {
	    # The descriptor glob read the directory with is gone by now.
	    if {![catch {file readlink $fd} target]
		    && [string match socket:* $target]} {
		incr sockets
	    }
	}
	puts $sockets
    }
}

proc w_line {chan} {
    if {[gets $chan line] < 0} {
	if {[eof $chan]} {
	    w_done $chan
	}
	return
    }
    switch -- $line {
	quit {
	    w_done $chan
	}
	fds {
	    puts $chan "[pid] [llength [glob /proc/self/fd/*]]"
	}
	exec {
	    puts $chan "[pid] [execSockets]"
	}
	default {
	    puts $chan "[pid] $line"
	}
    }
}
proc w_done {chan} {
    close $chan
    if {[info exists ::w_port]} {
	w_ask $::w_port
    } else {
	w_ask
    }
}
