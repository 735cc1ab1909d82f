# passover.tcl --
#
#	Shared by socketserver.test and stress.test: a serving program whose
#	silent connections cross a 'reexec' into a program that takes them
#	over with 'server -fd', optionally through a bash wrapper that
#	rewrites SOCKETSERVER_LISTENER in between; every process is stopped
#	by passCleanup.

testConstraint bash [expr {[auto_execok bash] ne "" && [auto_execok sed] ne ""}]

# passserve.tcl N COMMAND ?ARG ...? --
#	Serves (-ready 300) on a loopback port, prints "port PORT", and once N
#	connections are watched, re-executes itself as COMMAND.
set passServe [makeFile {
    package require socketserver
    set command [lassign $argv n]
    set port [::socketserver::socket server -ready 300 -myaddr 127.0.0.1 0]
    puts "port $port"
    flush stdout
    set deadline [expr {[clock seconds] + 300}]
    while {[dict get [::socketserver::socket info $port] watching] < $n
	    && [clock seconds] < $deadline} {
	after 10
    }
    ::socketserver::socket reexec $port {*}$command
} passserve.tcl]

# passwrap.sh: between the exec and the new program, rewrites
# SOCKETSERVER_LISTENER with the sh code in CASE, which sets V from $port,
# $fd (the listener) and $c1 $c2 $c3 (the first three connections'
# numbers, from the list 'reexec' passed, or from the variable itself before
# version 2), then runs TCLSH ADOPT.
set passWrap [makeFile {
    set -- $SOCKETSERVER_LISTENER
    port=$1 fd=$2
    case $3 in
    list=*) e=$(sed -n 2p /proc/self/fd/${3#list=}) ;;
    *) shift 2; e="$*" ;;
    esac
    set -- $e
    c1=${1#s} c2=${2#s} c3=${3#s}
    eval "$CASE"
    export SOCKETSERVER_LISTENER="$V"
    exec "$TCLSH" "$ADOPT"
} passwrap.sh]

# passadopt.tcl: the new program. Takes the listener over (-ready 300),
# prints "info WATCHING QUEUED PASSED IGNORED" (- for a key info lacks),
# "var LENGTH OPEN" (SOCKETSERVER_LISTENER's length, and 1 if the list
# it names is still open after 'server -fd' (its number still a file
# named socketserver-passed), 0 if not, - if it names none), then
# "ready"; serves three connections ("served LINE"), closes
# the port and prints "closed".
set passAdopt [makeFile {
    package require socketserver
    set value $env(SOCKETSERVER_LISTENER)
    regexp {^\d+ (\d+)} $value -> fd
    set port [::socketserver::socket server -ready 300 -fd $fd]
    set info [::socketserver::socket info $port]
    puts [list info {*}[lmap key {watching queued passed ignored} {
	expr {[dict exists $info $key] ? [dict get $info $key] : "-"}
    }]]
    puts [list var [string length $value] [expr {[regexp {list=(\d+)$} $value -> list]
	? [expr {![catch {file readlink /proc/self/fd/$list} target]
	    && [string match *socketserver-passed* $target]}] : "-"}]]
    puts ready
    flush stdout
    proc serve {chan addr peer} {
	fconfigure $chan -translation lf -buffering line
	puts $chan "served [gets $chan]"
	close $chan
	if {[incr ::served] < 3} {
	    ::socketserver::socket client serve
	}
    }
    ::socketserver::socket client serve
    vwait ::served
    while {$::served < 3} {
	vwait ::served
    }
    ::socketserver::socket close $port
    puts closed
} passadopt.tcl]

# passhold.tcl PORT N: opens N silent connections to PORT (from 127.0.0.1,
# .2, ... 25,000 each, so that the ephemeral ports suffice), prints "held
# N"; then for each line of connection indexes on standard input, sends
# "hello INDEX" on each of those and prints the replies as a list.
set passHold [makeFile {
    lassign $argv port n
    set chans {}
    for {set i 0} {$i < $n} {incr i} {
	lappend chans [socket -myaddr 127.0.0.[expr {1 + $i / 25000}] 127.0.0.1 $port]
    }
    puts "held $n"
    flush stdout
    while {[gets stdin line] >= 0} {
	puts [lmap i $line {
	    set chan [lindex $chans $i]
	    fconfigure $chan -buffering line -translation lf
	    puts $chan "hello $i"
	    gets $chan
	}]
	flush stdout
    }
} passhold.tcl]

set ::passChans {}

# passOn case ?serve? --
#	Three silent connections cross a 'reexec' whose SOCKETSERVER_LISTENER
#	the sh code case rewrites (passwrap.sh). Returns the new program's
#	info line {watching queued passed ignored} and ready line, and if
#	serve is 1, what each client got for a line, and the new program's
#	last line and end; if serve is 0, its info, var {LENGTH OPEN} and
#	ready lines. Waits up to a minute for each (three programs
#	start one after the other: slow under valgrind).
proc passOn {case {serve 1}} {
    set ::env(CASE) $case
    set ::env(TCLSH) [interpreter]
    set ::env(ADOPT) $::passAdopt
    lappend ::passChans [open |[list [interpreter] $::passServe 3 bash \
	$::passWrap 2>@1] r]
    unset ::env(CASE) ::env(TCLSH) ::env(ADOPT)
    set chan [lindex $::passChans end]
    regexp {^line \{port (\d+)\}$} [readLine $chan 60000] -> port
    set clients [lmap n {1 2 3} {connect $port}]
    lappend ::passChans {*}$clients
    set info [lrange [lindex [readLine $chan 60000] 1] 1 end]
    set var [lrange [lindex [readLine $chan 60000] 1] 1 end]
    set ready [readLine $chan 60000]
    if {!$serve} {
	return [list $info $var $ready]
    }
    set n 0
    set replies [lmap client $clients {
	puts $client "hello [incr n]"
	readLine $client 60000
    }]
    list $info $ready $replies [readLine $chan 60000] [readLine $chan 60000]
}

# passMany n ?prefix? --
#	n silent connections, held by passhold.tcl, cross a 'reexec' into
#	passadopt.tcl; both programs are run under the command prefix (to
#	raise their descriptor limit, say). Returns the info and var lines,
#	the replies of the first, middle and last connection, and the new
#	program's last line and end. Waits up to 5 minutes for each step.
proc passMany {n {prefix {}}} {
    lappend ::passChans [open |[list {*}$prefix [interpreter] $::passServe \
	$n [interpreter] $::passAdopt 2>@1] r]
    set chan [lindex $::passChans end]
    regexp {^line \{port (\d+)\}$} [readLine $chan 60000] -> port
    lappend ::passChans [open |[list {*}$prefix [interpreter] $::passHold \
	$port $n 2>@1] r+]
    set hold [lindex $::passChans end]
    set held [readLine $hold 300000]
    set info [lrange [lindex [readLine $chan 300000] 1] 1 end]
    set var [lrange [lindex [readLine $chan 60000] 1] 1 end]
    set ready [readLine $chan 60000]
    puts $hold [list 0 [expr {$n / 2}] [expr {$n - 1}]]
    flush $hold
    set replies [lindex [readLine $hold 60000] 1]
    list $held $info $var $ready $replies [readLine $chan 300000] \
	[readLine $chan 60000]
}

# passCleanup --
#	Closes every client and kills every program passOn or passMany
#	started.
proc passCleanup {} {
    stopPipes $::passChans
    set ::passChans {}
}
