# prefork.tcl --
#
#	The socketserver::prefork package: a supervised pre-fork server that
#	an application runs, as gunicorn, Unicorn and Apache's prefork MPM
#	run theirs. One call serves both roles:
#
#	    package require socketserver::prefork
#	    proc handle {chan addr port} {...}
#	    socketserver::prefork -port 8080 -workers 8 handle
#
#	Run as a program, it is the supervisor: it listens, starts its
#	workers with 'spawn' by running the same script with the same
#	arguments, and serves until stopped. In a worker (a process that
#	adopted a queue from the supervisor) the same call is the worker's
#	loop. Workers tell the supervisor what they do in lines on their
#	standard output that start with MARK; every other line they print is
#	logged with their pid.
#
# Copyright (c) 2026 The socketserver authors.
# See the file "LICENSE" for information on usage and redistribution.

package require Tcl 8.6-
package require socketserver 2.0

namespace eval ::socketserver::prefork {
    namespace export prefork

    # What a worker's status lines start with.
    variable MARK "@@socketserver::prefork"

    # The options: name, default, what it takes (for -help and checks).
    variable Options {
	-port        {}     {port number or service name (required; 0 picks one)}
	-myaddr      0.0.0.0 {address to listen on}
	-backlog     0      {listen backlog (0: the system's maximum)}
	-workers     4      {number of workers, 1 to 1024}
	-maxrequests 0      {recycle a worker after N to N+N/10 connections (0: never)}
	-timeout     0      {kill a worker busy with one connection longer than S seconds (0: never)}
	-graceful    30     {seconds stop and reload wait for connections in progress}
	-log         {}     {command prefix called with each log line (default: stderr)}
    }

    # Supervisor state.
    variable Config		;# Option values.
    variable Port		;# The port listened on.
    variable Generation 0	;# Incremented by each reload.
    variable Wanted		;# How many workers the current generation has.
    variable State running	;# running, reloading or stopping.
    variable Workers		;# Array pid -> dict: chan generation
				;# state (starting ready busy leaving)
				;# since served peer started output
    variable Backoff 0		;# ms before the next start after a crash.
    variable StartTimer {}	;# Pending start of a replacement worker.
    variable Exiting 0		;# Set when the supervisor leaves.
    variable LastError {}	;# The queue's lasterror when last looked.
}

# socketserver::prefork ?option value ...? handler --
#	The entry point: validates the options, then becomes the supervisor
#	or, in a worker, the worker's loop. Does not return in either role.
proc ::socketserver::prefork::prefork {args} {
    variable Options
    foreach word $args {
	if {$word in {-help --help -h}} {
	    puts [Usage]
	    exit 0
	}
    }
    if {[llength $args] % 2 == 0} {
	return -code error -errorcode {SOCKETSERVER PREFORK USAGE} \
	    "wrong # args: should be \"socketserver::prefork ?option value ...? handler\""
    }
    set handler [lindex $args end]
    try {
	set config [Validate [lrange $args 0 end-1]]
    } on error {msg opts} {
	return -code error -errorcode [dict get $opts -errorcode] $msg
    }
    if {[llength $handler] == 0
	    || [uplevel 1 [list namespace which [lindex $handler 0]]] eq ""} {
	return -code error -errorcode {SOCKETSERVER PREFORK HANDLER} \
	    "handler \"[lindex $handler 0]\" is not a command: define it before socketserver::prefork"
    }
    set handler [lreplace $handler 0 0 [uplevel 1 [list namespace which [lindex $handler 0]]]]
    set known [::socketserver::socket info]
    set listening 0
    foreach port $known {
	incr listening [dict get [::socketserver::socket info $port] listening]
    }
    if {[llength $known] > 0 && $listening == 0} {
	Worker $config $handler
    } else {
	Supervisor $config
    }
}

# Usage --
#	The -help text.
proc ::socketserver::prefork::Usage {} {
    variable Options
    set text "usage: socketserver::prefork ?option value ...? handler\n"
    foreach {name default help} $Options {
	append text [format "  %-13s %s%s\n" $name $help \
	    [expr {$default eq "" ? "" : " \[$default\]"}]]
    }
    append text "Signals to the supervisor: TERM, INT stop; HUP reloads;\
	TTIN, TTOU add or remove a worker; USR1 logs each worker's state."
    return $text
}

# Validate optionList --
#	Checks every option and value before anything starts; returns the
#	config dict or raises an error naming the option.
proc ::socketserver::prefork::Validate {optionList} {
    variable Options
    set config {}
    foreach {name default help} $Options {
	dict set config $name $default
    }
    foreach {name value} $optionList {
	if {![dict exists $config $name]} {
	    return -code error -errorcode [list SOCKETSERVER PREFORK OPTION $name] \
		"unknown option \"$name\": must be one of [join [dict keys $config] {, }]"
	}
	dict set config $name $value
    }
    dict for {name value} $config {
	set ok 1
	switch -- $name {
	    -port {
		set ok [expr {$value ne "" && (
		    ([string is entier -strict $value] && $value >= 0 && $value <= 65535)
		    || ![string is entier -strict $value])}]
		set want "a port number from 0 to 65535 or a service name"
	    }
	    -backlog - -maxrequests {
		set ok [expr {[string is entier -strict $value] && $value >= 0
		    && $value <= 1000000000}]
		set want "a whole number, 0 or more"
	    }
	    -workers {
		set ok [expr {[string is entier -strict $value] && $value >= 1
		    && $value <= 1024}]
		set want "a whole number from 1 to 1024"
	    }
	    -timeout - -graceful {
		set ok [expr {[string is double -strict $value] && $value >= 0
		    && $value <= 86400}]
		set want "a number of seconds from 0 to 86400"
	    }
	    -log {
		set ok [expr {![catch {llength $value}]}]
		set want "a command prefix"
	    }
	}
	if {!$ok} {
	    if {$name eq "-port" && $value eq ""} {
		set message "option -port is required"
	    } else {
		set message "bad value \"$value\" for $name: expected $want"
	    }
	    return -code error -errorcode [list SOCKETSERVER PREFORK VALUE $name] $message
	}
    }
    return $config
}

# Log message --
#	One line to the -log command, or to stderr with a time stamp and the
#	supervisor's pid.
proc ::socketserver::prefork::Log {message} {
    variable Config
    if {[info exists Config] && [dict get $Config -log] ne ""} {
	if {[catch {uplevel #0 [list {*}[dict get $Config -log] $message]} err]} {
	    puts stderr "prefork: -log failed: $err"
	}
	return
    }
    set stamp [clock format [clock seconds] -format %Y-%m-%dT%H:%M:%S]
    catch {
	puts stderr "$stamp \[[pid]\] $message"
	flush stderr
    }
}

# --- the worker ----------------------------------------------------------

namespace eval ::socketserver::prefork {
    variable Handler		;# Command prefix for each connection.
    variable Busy 0		;# 1 while the handler runs.
    variable Leaving 0		;# Set by SIGTERM: leave when idle.
    variable Served 0		;# Connections handled.
    variable Limit 0		;# Leave after this many (0: never).
}

proc ::socketserver::prefork::Worker {config handler} {
    variable Handler $handler
    variable Limit
    variable MARK
    fconfigure stdout -buffering line
    set n [dict get $config -maxrequests]
    if {$n > 0} {
	expr {srand([pid] ^ [clock microseconds])}
	set Limit [expr {$n + int(rand() * ($n / 10 + 1))}]
    }
    interp bgerror {} [namespace code WorkerError]
    ::socketserver::signal TERM [namespace code Leave]
    puts "$MARK ready"
    Ask
    vwait forever
}

# Ask --
#	Asks for the next connection; the end of the supervisor ends us.
proc ::socketserver::prefork::Ask {} {
    if {[catch {::socketserver::socket client [namespace code Serve]} msg opts]} {
	WorkerError $msg $opts
    }
}

# Serve chan addr port --
#	One connection: the handler, with blocking I/O; the channel is closed
#	after it whatever it did, and the worker asks again (or leaves).
proc ::socketserver::prefork::Serve {chan addr port} {
    variable Handler
    variable Busy 1
    variable Served
    variable Limit
    variable Leaving
    variable MARK
    puts "$MARK busy $addr $port"
    try {
	uplevel #0 [list {*}$Handler $chan $addr $port]
    } on error {msg opts} {
	puts stderr "handler error for $addr:$port: [dict get $opts -errorinfo]"
	flush stderr
    } finally {
	catch {close $chan}
	incr Served
	set Busy 0
	puts "$MARK idle $Served"
    }
    if {$Leaving || ($Limit > 0 && $Served >= $Limit)} {
	exit 0
    }
    Ask
}

# Leave --
#	SIGTERM from the supervisor: leave once idle. A request withdrawn
#	with cancel loses nothing: a connection that had already come is
#	served first (Serve then leaves).
proc ::socketserver::prefork::Leave {} {
    variable Busy
    variable Leaving 1
    if {!$Busy} {
	::socketserver::socket cancel
	exit 0
    }
}

proc ::socketserver::prefork::WorkerError {msg opts} {
    if {[lrange [dict get $opts -errorcode] 0 1] eq {SOCKETSERVER CLOSED}} {
	exit 0
    }
    catch {
	puts stderr "error: [dict get $opts -errorinfo]"
	flush stderr
    }
}

# --- the supervisor ------------------------------------------------------

proc ::socketserver::prefork::Supervisor {config} {
    variable Config $config
    variable Port
    variable Wanted [dict get $config -workers]
    set options [list -myaddr [dict get $config -myaddr]]
    if {[dict get $config -backlog] > 0} {
	lappend options -backlog [dict get $config -backlog]
    }
    if {[catch {::socketserver::socket server {*}$options [dict get $config -port]} Port]} {
	Log "couldn't listen: $Port"
	exit 1
    }
    Log "listening on port $Port, [dict get $config -workers] workers"
    ::socketserver::signal TERM [namespace code Stop]
    ::socketserver::signal INT [namespace code Stop]
    ::socketserver::signal HUP [namespace code Reload]
    ::socketserver::signal TTIN [namespace code {Resize 1}]
    ::socketserver::signal TTOU [namespace code {Resize -1}]
    ::socketserver::signal USR1 [namespace code Status]
    interp bgerror {} [list apply {{msg opts} {
	::socketserver::prefork::Log "supervisor error: [dict get $opts -errorinfo]"
    }}]
    # The first worker alone: if the application does not load, say why
    # and leave rather than start the others.
    set pid [StartWorker]
    vwait ::socketserver::prefork::FirstLoaded
    variable FirstLoaded
    if {$FirstLoaded eq "stopped"} {
	Finish
    }
    if {$FirstLoaded ne "ok"} {
	Log "the application failed to load in worker $pid:\n$FirstLoaded"
	set ::socketserver::prefork::Exiting 1
	KillAll
	exit 1
    }
    Fill
    if {[dict get $config -timeout] > 0} {
	after 200 [namespace code WatchTimeouts]
    }
    WatchQueue
    vwait forever
}

# StartWorker --
#	Spawns a worker of the current generation running this script again.
proc ::socketserver::prefork::StartWorker {} {
    variable Workers
    variable Generation
    set chan [::socketserver::socket spawn [info nameofexecutable] \
	[file normalize $::argv0] {*}$::argv]
    set pid [pid $chan]
    fconfigure $chan -blocking 0 -buffering line
    set Workers($pid) [dict create chan $chan generation $Generation \
	state starting since [clock milliseconds] served 0 peer {} \
	started [clock milliseconds] output {}]
    fileevent $chan readable [namespace code [list Output $pid]]
    Log "worker $pid started (generation $Generation)"
    return $pid
}

# Fill --
#	Starts workers until the current generation has as many as wanted
#	(not while the last crash's back-off runs).
proc ::socketserver::prefork::Fill {} {
    variable Workers
    variable Generation
    variable Wanted
    variable State
    variable StartTimer
    if {$State eq "stopping" || $StartTimer ne ""} {
	return
    }
    set have 0
    foreach pid [array names Workers] {
	if {[dict get $Workers($pid) generation] == $Generation
		&& [dict get $Workers($pid) state] ne "leaving"} {
	    incr have
	}
    }
    for {} {$have < $Wanted} {incr have} {
	StartWorker
    }
}

# Output pid --
#	A line from a worker: its status, or output to log.
proc ::socketserver::prefork::Output {pid} {
    variable Workers
    variable MARK
    variable FirstLoaded
    set chan [dict get $Workers($pid) chan]
    while {[gets $chan line] >= 0} {
	if {[string first $MARK $line] != 0} {
	    dict lappend Workers($pid) output $line
	    if {[llength [dict get $Workers($pid) output]] > 20} {
		dict set Workers($pid) output [lrange [dict get $Workers($pid) output] end-19 end]
	    }
	    Log "worker $pid: $line"
	    continue
	}
	set words [lrange [string range $line [string length $MARK] end] 0 end]
	switch -- [lindex $words 0] {
	    ready {
		dict set Workers($pid) state idle
		dict set Workers($pid) since [clock milliseconds]
		if {![info exists FirstLoaded]} {
		    set FirstLoaded ok
		}
		Loaded $pid
	    }
	    busy {
		dict set Workers($pid) state busy
		dict set Workers($pid) since [clock milliseconds]
		dict set Workers($pid) peer [join [lrange $words 1 2] :]
	    }
	    idle {
		if {[dict get $Workers($pid) state] ne "leaving"} {
		    dict set Workers($pid) state idle
		}
		dict set Workers($pid) since [clock milliseconds]
		dict set Workers($pid) served [lindex $words 1]
	    }
	}
    }
    if {[eof $chan]} {
	Exited $pid
    }
}

# Exited pid --
#	A worker's output ended: reap it, log how it ended, replace it.
proc ::socketserver::prefork::Exited {pid} {
    variable Workers
    variable State
    variable Generation
    variable Backoff
    variable StartTimer
    variable FirstLoaded
    variable Exiting
    set worker $Workers($pid)
    unset Workers($pid)
    set chan [dict get $worker chan]
    fconfigure $chan -blocking 1
    if {[catch {close $chan} msg opts]} {
	set how [dict get $opts -errorcode]
	switch -- [lindex $how 0] {
	    CHILDSTATUS {set how "exit status [lindex $how 2]"}
	    CHILDKILLED {set how "killed by [lindex $how 2]"}
	    default {set how $msg}
	}
    } else {
	set how "exit status 0"
    }
    Log "worker $pid exited: $how"
    if {![info exists FirstLoaded] && $State eq "stopping"} {
	# Stopped before the application had loaded once: not its fault.
	set FirstLoaded stopped
	return
    }
    if {![info exists FirstLoaded]} {
	set FirstLoaded [join [dict get $worker output] \n]
	if {$FirstLoaded eq ""} {
	    set FirstLoaded $how
	}
	return
    }
    if {$Exiting} {
	return
    }
    if {$State eq "stopping"} {
	if {[array size Workers] == 0} {
	    Finish
	}
	return
    }
    if {[dict get $worker state] eq "starting"
	    && [dict get $worker generation] == $Generation && $State eq "reloading"} {
	ReloadFailed $pid [join [dict get $worker output] \n]
	return
    }
    if {[dict get $worker generation] != $Generation} {
	return
    }
    if {[dict get $worker state] eq "leaving"} {
	# Retired (SIGTTOU): nothing to replace.
	Fill
	return
    }
    # Died before it served one connection to the end (before it was
    # ready, say): it may do so again at once, so back off. A machine
    # too busy to start a worker in a second must not hide that.
    set lived [expr {[clock milliseconds] - [dict get $worker started]}]
    if {([dict get $worker state] eq "starting"
	    || [dict get $worker served] == 0) && [dict get $worker state] ne "killed"} {
	set Backoff [expr {min(max(2 * $Backoff, 100), 30000)}]
	Log "worker $pid died after $lived ms having served no connection: next start in $Backoff ms"
	set StartTimer [after $Backoff [namespace code {
	    set StartTimer {}
	    Fill
	}]]
    } else {
	set Backoff 0
	Fill
    }
}

# Loaded pid --
#	A worker reported that the application loaded. During a reload, once
#	every worker of the new generation has, the old ones are retired.
proc ::socketserver::prefork::Loaded {pid} {
    variable Workers
    variable State
    variable Generation
    if {$State ne "reloading"} {
	return
    }
    foreach other [array names Workers] {
	if {[dict get $Workers($other) generation] == $Generation
		&& [dict get $Workers($other) state] eq "starting"} {
	    return
	}
    }
    set State running
    Log "generation $Generation loaded: retiring the old workers"
    foreach other [array names Workers] {
	if {[dict get $Workers($other) generation] != $Generation} {
	    Retire $other
	}
    }
}

# Retire pid --
#	Tells a worker to leave once idle; kills it after -graceful seconds.
proc ::socketserver::prefork::Retire {pid} {
    variable Workers
    variable Config
    if {![info exists Workers($pid)]} {
	return
    }
    dict set Workers($pid) state leaving
    Kill TERM $pid
    after [expr {int([dict get $Config -graceful] * 1000)}] \
	[namespace code [list Overdue $pid]]
}

proc ::socketserver::prefork::Overdue {pid} {
    variable Workers
    if {[info exists Workers($pid)]} {
	Log "worker $pid still busy after -graceful: killed"
	Kill KILL $pid
    }
}

proc ::socketserver::prefork::Kill {signal pid} {
    catch {exec kill -$signal $pid}
}

# Reload --
#	SIGHUP: a new generation; the old one is retired only once the new
#	one has loaded the application.
proc ::socketserver::prefork::Reload {} {
    variable State
    variable Generation
    variable StartTimer
    if {$State eq "stopping"} {
	return
    }
    if {$State eq "reloading"} {
	Log "reload already in progress"
	return
    }
    incr Generation
    set State reloading
    after cancel $StartTimer
    set StartTimer {}
    Log "reloading: starting generation $Generation"
    Fill
}

# ReloadFailed pid output --
#	A worker of the new generation died before it loaded: the old
#	generation keeps serving, the rest of the new one is stopped.
proc ::socketserver::prefork::ReloadFailed {pid output} {
    variable Workers
    variable Generation
    variable State running
    Log "reload failed, the old workers keep serving: worker $pid did not load the application:\n$output"
    foreach other [array names Workers] {
	if {[dict get $Workers($other) generation] == $Generation} {
	    dict set Workers($other) state leaving
	    Kill KILL $other
	}
    }
    # The surviving generation becomes current again.
    set previous -1
    foreach other [array names Workers] {
	set g [dict get $Workers($other) generation]
	if {$g != $Generation} {
	    set previous [expr {max($previous, $g)}]
	}
    }
    if {$previous >= 0} {
	set Generation $previous
    }
    Fill
}

# Resize delta --
#	SIGTTIN / SIGTTOU: one worker more or less.
proc ::socketserver::prefork::Resize {delta} {
    variable Wanted
    variable Workers
    variable Generation
    variable State
    if {$State eq "stopping" || $Wanted + $delta < 1 || $Wanted + $delta > 1024} {
	return
    }
    incr Wanted $delta
    Log "workers: $Wanted"
    if {$delta > 0} {
	Fill
	return
    }
    # The idle one that started last goes first.
    set chosen {}
    foreach pid [lsort -integer -decreasing [array names Workers]] {
	if {[dict get $Workers($pid) generation] == $Generation
		&& [dict get $Workers($pid) state] ne "leaving"} {
	    if {$chosen eq "" || [dict get $Workers($pid) state] eq "idle"} {
		set chosen $pid
		if {[dict get $Workers($pid) state] eq "idle"} {
		    break
		}
	    }
	}
    }
    if {$chosen ne ""} {
	Retire $chosen
    }
}

# Status --
#	SIGUSR1: a line per worker, and the queue.
proc ::socketserver::prefork::Status {} {
    variable Workers
    variable Port
    set now [clock milliseconds]
    foreach pid [lsort -integer [array names Workers]] {
	set w $Workers($pid)
	set since [expr {($now - [dict get $w since]) / 1000.0}]
	set line "worker $pid generation [dict get $w generation] served [dict get $w served] [dict get $w state] for ${since}s"
	if {[dict get $w state] eq "busy"} {
	    append line " with [dict get $w peer]"
	}
	Log $line
    }
    set info [::socketserver::socket info $Port]
    set line "queue: [dict get $info waiting] workers waiting, [dict get $info queued] connections queued"
    if {[dict get $info lasterror] ne ""} {
	append line ", last error [dict get $info lasterror]"
    }
    Log $line
}

# WatchTimeouts --
#	With -timeout: kills a worker busy with one connection for longer.
proc ::socketserver::prefork::WatchTimeouts {} {
    variable Workers
    variable Config
    set limit [expr {[dict get $Config -timeout] * 1000}]
    set now [clock milliseconds]
    foreach pid [array names Workers] {
	set w $Workers($pid)
	if {[dict get $w state] eq "busy" && $now - [dict get $w since] > $limit} {
	    Log "worker $pid killed: busy [expr {($now - [dict get $w since]) / 1000.0}]s (-timeout [dict get $Config -timeout]) serving [dict get $w peer]"
	    dict set Workers($pid) state killed
	    Kill KILL $pid
	}
    }
    after 200 [namespace code WatchTimeouts]
}

# WatchQueue --
#	Every second: logs the queue's lasterror when it changes, so each
#	error the accept thread meets is logged once. Out of descriptors the
#	serving process stalls (it accepts nothing and can't take a new
#	worker's first ask until one is free) and would otherwise say
#	nothing.
proc ::socketserver::prefork::WatchQueue {} {
    variable Port
    variable LastError
    set error [dict get [::socketserver::socket info $Port] lasterror]
    if {$error ne $LastError} {
	set LastError $error
	switch -- $error {
	    "" {}
	    EMFILE - ENFILE {
		Log "out of descriptors ($error): accepting stalls until one\
			is free; raise the limit (ulimit -n, systemd's\
			LimitNOFILE) or run fewer workers"
	    }
	    default {
		Log "accepting or handing over met $error"
	    }
	}
    }
    after 1000 [namespace code WatchQueue]
}

# Stop --
#	SIGTERM, SIGINT: stop accepting at once; let the workers serve every
#	connection already accepted; then retire them; kill what is left
#	after -graceful seconds.
proc ::socketserver::prefork::Stop {} {
    variable State
    variable Port
    variable Config
    variable StartTimer
    if {$State eq "stopping"} {
	return
    }
    set State stopping
    after cancel $StartTimer
    Log "stopping"
    ::socketserver::socket close $Port
    set deadline [expr {[clock milliseconds] + int([dict get $Config -graceful] * 1000)}]
    Drain $deadline
}

# Drain deadline --
#	Waits (from the event loop) until no accepted connection is left for
#	the workers to take, then retires them all.
proc ::socketserver::prefork::Drain {deadline} {
    variable Port
    variable Workers
    if {[dict get [::socketserver::socket info $Port] queued] > 0
	    && [clock milliseconds] < $deadline && [array size Workers] > 0} {
	after 20 [namespace code [list Drain $deadline]]
	return
    }
    if {[array size Workers] == 0} {
	Finish
	return
    }
    foreach pid [array names Workers] {
	dict set Workers($pid) state leaving
	Kill TERM $pid
    }
    after [expr {max(0, $deadline - [clock milliseconds])}] [namespace code KillAll]
}

proc ::socketserver::prefork::KillAll {} {
    variable Workers
    foreach pid [array names Workers] {
	Overdue $pid
    }
}

proc ::socketserver::prefork::Finish {} {
    Log "stopped"
    exit 0
}

namespace eval ::socketserver {
    namespace import ::socketserver::prefork::prefork
}
package provide socketserver::prefork 2.0
