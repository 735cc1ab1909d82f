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
#	loop. A worker prints one line that starts with READY once the
#	application has loaded; what it does after, the supervisor reads from
#	the queue's scoreboard ('info'). Every other line a worker prints is
#	logged with its pid. It needs no program but Tcl: signals go with
#	::socketserver::kill, exits come as SIGCHLD.
#
# Copyright (c) 2026 The socketserver authors.
# See the file "LICENSE" for information on usage and redistribution.

package require Tcl 8.6-
package require socketserver 2.0

#========================================================================
#
# Configuration
#
#	The package's variables: the options with their defaults, and the
#	state of whichever role this process plays.
#
#========================================================================

namespace eval ::socketserver::prefork {
    namespace export prefork

    # The line a worker prints once the application has loaded.
    variable READY "@@socketserver::prefork ready"
    # The line an upgrade's dry run prints once it reached its
    # socketserver::prefork call.
    variable CHECKED "@@socketserver::prefork checked"

    # The options: name, default, what it takes (for -help and checks).
    variable Options {
	-port        {}     {port number or service name (required unless systemd passes the socket; 0 picks one)}
	-myaddr      0.0.0.0 {address to listen on}
	-backlog     0      {listen backlog (0: the system's maximum)}
	-workers     4      {number of workers, 1 to 1024}
	-maxrequests 0      {recycle a worker after N to N+N/10 connections (0: never)}
	-timeout     0      {kill a worker busy with one connection longer than S seconds (0: never)}
	-ready       0      {hand a connection to a worker only once it has sent something; close it after S silent seconds (0: hand over at once)}
	-readyafter  {}     {with -ready: ready once what a connection sent contains this string, in which \r, \n, \t, \\ and \xHH stand for those characters (\r\n\r\n: a whole HTTP request head)}
	-keepalive   5      {close a connection a handler released after S seconds without a request}
	-graceful    30     {seconds stop and reload wait for connections in progress, and a reload or upgrade for the new code to load}
	-log         {}     {command prefix called with each log line (default: stderr)}
	-user        {}     {run the workers as this user (the supervisor starts as root)}
	-group       {}     {and this group (default: the user's)}
    }

    # Where this file is: the workers' start-up as another user (runas.tcl)
    # lies beside it.
    variable Dir [file dirname [file normalize [info script]]]

    # Supervisor state.
    variable Config		;# Option values.
    variable Port		;# The port listened on.
    variable Generation 0	;# The current generation of workers.
    variable Highest 0		;# The highest generation started yet.
    variable Wanted		;# How many workers the current generation has.
    variable State running	;# running, reloading or stopping.
    variable Workers		;# Array pid -> dict (see the supervisor).
    variable Backoff 0		;# ms before the next start after a crash.
    variable StartTimer {}	;# Pending start of a replacement worker.
    variable LastError {}	;# The queue's lasterror when last looked.
    variable Status {}		;# The STATUS= last sent to systemd.
    variable NotifyError {}	;# The last error notifying systemd.
    variable Ready 0		;# 1 once systemd was told READY=1.
    variable Check {}		;# An upgrade's dry run: dict chan pid output
				;# timer (CheckOverdue), or empty.
    variable SystemdEnv {}	;# NOTIFY_SOCKET and WATCHDOG_*, kept out
				;# of the environment (HideSystemdEnv).
    variable Previous		;# Array: workers of the program this process
				;# was before an upgrade, pid -> 1.
    variable UPGRADE_VERSION 1	;# Of the state an upgrade passes on.
    variable MAX_LISTEN_FDS 1024	;# Most sockets taken from systemd.
    variable Watchdog 0		;# ms between WATCHDOG=1 pings, 0: none.
    variable Pinged 0		;# When the last one went, in ms.
    variable Notified 0		;# Notifications sent to systemd,
    variable NotifyDropped 0	;# and dropped: its socket was full.
    variable FirstGeneration 0	;# The generation of the first worker.
    variable FirstFailure {}	;# Why the application failed to load in it.
}

#========================================================================
#
# The entry point and its helpers
#
#	socketserver::prefork, the options (Usage, Validate), systemd's
#	socket activation (Activated), the log (Log, Count).
#
#========================================================================

# socketserver::prefork ?option value ...? handler --
#	The entry point: validates the options, then becomes the supervisor
#	or, in a worker, the worker's loop. Does not return in either role.
proc ::socketserver::prefork::prefork {args} {
    variable Options
    set i [lsearch -regexp $args {^(-help|--help|-h)$}]
    if {$i >= 0} {
	# What an application set before the words it passed on
	# (prefork -ready 10 {*}$argv handler) shows as its default.
	puts [Usage [lrange $args 0 [expr {$i - ($i % 2) - 1}]]]
	exit 0
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
    if {[info exists ::env(SOCKETSERVER_PREFORK_CHECK)]} {
	# The dry run of an upgrade in place: the code has loaded this far.
	Check $config
    }
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

# Usage given --
#	The -help text; given, the options and values set before -help,
#	shows as their defaults (control characters as the escapes
#	-readyafter takes).
proc ::socketserver::prefork::Usage {given} {
    variable Options
    set text "usage: socketserver::prefork ?option value ...? handler\n"
    foreach {name default help} $Options {
	foreach {option value} $given {
	    if {$option eq $name} {
		set default [string map {\\ \\\\ \r \\r \n \\n \t \\t} $value]
	    }
	}
	append text [format "  %-13s %s%s\n" $name $help \
	    [expr {$default eq "" ? "" : " \[$default\]"}]]
    }
    append text "Signals to the supervisor: TERM stops gracefully, and so\
	does INT (Ctrl-C), a second INT at once; HUP reloads; USR2 upgrades\
	the supervisor in place (same pid, the listener kept); TTIN, TTOU add\
	or remove a worker; USR1 logs each worker's state."
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
    if {[dict get $config -group] ne "" && [dict get $config -user] eq ""} {
	return -code error -errorcode {SOCKETSERVER PREFORK VALUE -group} \
	    "option -group needs -user"
    }
    dict for {name value} $config {
	set ok 1
	if {$name in {-port -backlog -maxrequests -workers} && [Decimal $value]} {
	    # "08" is 8, as a shell user means it, and is logged so.
	    set value [scan $value %d]
	    dict set config $name $value
	}
	switch -- $name {
	    -port {
		# Systemd may pass the socket; a worker has its queue.
		set ok [expr {($value eq "" && ([Activated]
			|| [info exists ::env(SOCKETSERVER_PREFORK_CHECK)]
			|| [info exists ::env(SOCKETSERVER_UPGRADE)]
			|| [llength [::socketserver::socket info]] > 0))
		    || ($value ne "" && (
		    ([Decimal $value] && $value <= 65535)
		    || ![regexp {^[0-9]+$} $value]))}]
		set want "a port number from 0 to 65535 or a service name"
	    }
	    -user - -group {
		set ok [regexp {^[^\s:]*$} $value]
		set want "a user or group name"
	    }
	    -backlog - -maxrequests {
		set ok [expr {[Decimal $value] && $value <= 1000000000}]
		set want "a whole number, 0 or more"
	    }
	    -workers {
		set ok [expr {[Decimal $value] && $value >= 1 && $value <= 1024}]
		set want "a whole number from 1 to 1024"
	    }
	    -timeout - -graceful - -ready - -keepalive {
		set ok [expr {[string is double -strict $value] && $value >= 0
		    && $value <= 86400}]
		set want "a number of seconds from 0 to 86400"
	    }
	    -readyafter {
		# Typed at a shell, "\r\n\r\n" comes as eight characters.
		set ok [expr {![catch {Unescape $value} mark]
		    && [regexp {^[\x01-\x7f]{0,32}$} $mark]}]
		if {$ok} {
		    dict set config -readyafter $mark
		}
		set want "at most 32 ASCII characters, each as itself or as \\r, \\n, \\t, \\\\ or \\xHH"
	    }
	    -log {
		set ok [expr {$value eq "" || (![catch {llength $value} n] && $n > 0
		    && [uplevel #0 [list namespace which [lindex $value 0]]] ne "")}]
		set want "a command prefix (of a command defined before socketserver::prefork)"
	    }
	}
	if {!$ok} {
	    if {$name eq "-port" && $value eq ""} {
		set message "option -port is required (unless systemd passes the socket)"
	    } else {
		set message "bad value \"$value\" for $name: expected $want"
	    }
	    return -code error -errorcode [list SOCKETSERVER PREFORK VALUE $name] $message
	}
    }
    return $config
}

# Decimal value --
#	Whether value is a whole number written in decimal digits alone (no
#	sign, space or 0x; at most 10 digits), as the options' numbers must
#	be; Validate reads them as decimal, leading zeros too.
proc ::socketserver::prefork::Decimal {value} {
    regexp {^[0-9]{1,10}$} $value
}

# Unescape text --
#	text with the escapes the documentation writes a -readyafter mark
#	with (\r, \n, \t, \\, \xHH) replaced by the characters they stand
#	for, as a shell passes them on: "\r\n\r\n" typed at a shell is eight
#	characters. Any other backslash is an error. (A Tcl caller's own
#	quoting has made real characters of them already: those have no
#	backslash and go through unchanged.)
proc ::socketserver::prefork::Unescape {text} {
    if {![regexp {^(?:[^\\]|\\[rnt\\]|\\x[0-9A-Fa-f]{2})*$} $text]} {
	return -code error "bad escape"
    }
    set result {}
    while {[set at [string first \\ $text]] >= 0} {
	append result [string range $text 0 $at-1]
	set escape [string index $text $at+1]
	if {$escape eq "x"} {
	    append result [format %c 0x[string range $text $at+2 $at+3]]
	    set text [string range $text $at+4 end]
	} else {
	    append result [string map {r \r n \n t \t} $escape]
	    set text [string range $text $at+2 end]
	}
    }
    append result $text
}

# Activated --
#	1 if systemd (or anything that does as it does) passed this process
#	its listening sockets: LISTEN_PID names this process.
proc ::socketserver::prefork::Activated {} {
    expr {[info exists ::env(LISTEN_PID)] && [info exists ::env(LISTEN_FDS)]
	&& $::env(LISTEN_PID) eq [pid]}
}

# Clip text --
#	text for a log line: its first 40 characters, and "..." if it has
#	more (a value from the environment may be any length).
proc ::socketserver::prefork::Clip {text} {
    if {[string length $text] > 40} {
	return "[string range $text 0 39]..."
    }
    return $text
}

# Log message --
#	One line to the -log command, or to stderr with a time stamp and the
#	supervisor's pid; if the -log command fails, the line goes to
#	stderr after the reason, so that it is never lost.
proc ::socketserver::prefork::Log {message} {
    variable Config
    if {[info exists Config] && [dict get $Config -log] ne ""} {
	if {![catch {uplevel #0 [list {*}[dict get $Config -log] $message]} err]} {
	    return
	}
	catch {puts stderr "prefork: -log failed: $err"}
    }
    set stamp [clock format [clock seconds] -format %Y-%m-%dT%H:%M:%S]
    catch {
	puts stderr "$stamp \[[pid]\] $message"
	flush stderr
    }
}

# Count n noun ?plural? --
#	"1 worker", "2 workers": n and the noun, plural unless n is 1.
proc ::socketserver::prefork::Count {n noun {plural {}}} {
    if {$n == 1} {
	return "$n $noun"
    }
    return "$n [expr {$plural eq "" ? "${noun}s" : $plural}]"
}

#========================================================================
#
# The worker
#
#	A worker's loop: ask for a connection, serve it, follow the
#	rules, leave when told or when its -maxrequests is reached.
#
#========================================================================

namespace eval ::socketserver::prefork {
    variable Handler		;# Command prefix for each connection.
    variable Busy 0		;# 1 while the handler runs.
    variable Leaving 0		;# Set by SIGTERM: leave when idle.
    variable Served 0		;# Connections handled.
    variable Limit 0		;# Leave after this many (0: never).
    variable Peer {}		;# The client served, for the log.
    variable Broken 0		;# 1 once the handler broke the Rule.
}

proc ::socketserver::prefork::Worker {config handler} {
    variable Handler $handler
    variable Limit
    fconfigure stdout -buffering line
    set n [dict get $config -maxrequests]
    if {$n > 0} {
	expr {srand([pid] ^ [clock microseconds])}
	set Limit [expr {$n + int(rand() * ($n / 10 + 1))}]
    }
    interp bgerror {} [namespace code WorkerError]
    trace add execution ::socketserver::socket enter [namespace code Rule]
    ::socketserver::signal TERM [namespace code Leave]
    # Ctrl-C in a terminal, a terminal's hang-up, 'kill -SIG -PGID' and
    # 'systemctl kill' without --kill-whom=main reach the whole process
    # group (or unit): the supervisor alone decides what they mean (a
    # graceful stop first, a reload, ...). Left at their default, HUP,
    # USR1 and USR2 would end a worker in the middle of a request, and
    # TTIN or TTOU stop it with connections on their way to it.
    foreach signal {INT HUP USR1 USR2 TTIN TTOU} {
	::socketserver::signal $signal {# left to the supervisor}
    }
    variable READY
    catch {puts $READY}
    Ask
    vwait forever
}

# Ask --
#	Asks for the next connection. The supervisor's scoreboard shows the
#	worker waiting from here on. A worker that cannot ask leaves: the
#	end of the supervisor (CLOSED) quietly, anything else with status 1
#	and a line in the log, so that it is replaced rather than idle for
#	ever.
proc ::socketserver::prefork::Ask {} {
    if {[catch {::socketserver::socket client [namespace code Serve]} msg opts]} {
	WorkerError $msg $opts
	exit 1
    }
}

# Serve chan addr port --
#	One connection: the handler, with blocking I/O; the channel is closed
#	after it whatever it did, and the worker asks again (or leaves). Nothing
#	here may fail before the next ask: with the supervisor gone, even
#	stderr is a broken pipe.
proc ::socketserver::prefork::Serve {chan addr port} {
    variable Handler
    variable Busy 1
    variable Served
    variable Limit
    variable Leaving
    variable Peer $addr:$port
    try {
	uplevel #0 [list {*}$Handler $chan $addr $port]
    } trap {SOCKETSERVER PREFORK RULE} {} {
	# Said by Rule.
    } on error {msg opts} {
	catch {
	    puts stderr "handler error for $addr:$port: [dict get $opts -errorinfo]"
	    flush stderr
	}
    } finally {
	catch {close $chan}
	incr Served
	set Busy 0
    }
    if {$Leaving || ($Limit > 0 && $Served >= $Limit)} {
	exit 0
    }
    Ask
}

# Rule command op --
#	The enter trace of ::socketserver::socket in a worker. A handler may
#	read, write, release, leave the channel open or close it; it may not
#	call 'client' or 'cancel': the worker loop asks for the next
#	connection itself, and a request the handler made would be the one
#	pending when the loop asks (a handler pasted from a plain
#	socketserver worker, examples/http_server.tcl say, does so). Such a
#	call fails with an error that names the rule, printed once (for the
#	log) however often it comes; the worker goes on.
proc ::socketserver::prefork::Rule {command op} {
    variable Busy
    variable Peer
    variable Broken
    if {!$Busy} {
	return
    }
    set sub [tcl::prefix match -error {} {cancel client close} [lindex $command 1]]
    if {$sub ni {cancel client}} {
	return
    }
    set message "a socketserver::prefork handler may read, write, release, leave\
	    the channel open or close it; it may not call\
	    ::socketserver::socket client or cancel (the worker asks for the\
	    next connection itself)"
    if {!$Broken} {
	set Broken 1
	catch {
	    puts stderr "handler for $Peer called ::socketserver::socket $sub: $message"
	    flush stderr
	}
    }
    return -code error -errorcode [list SOCKETSERVER PREFORK RULE $sub] $message
}

# Leave --
#	SIGTERM from the supervisor: leave once idle. A request withdrawn
#	with cancel loses nothing: a connection that had already come is
#	served first (Serve then leaves).
proc ::socketserver::prefork::Leave {} {
    variable Busy
    variable Leaving 1
    if {!$Busy} {
	catch {::socketserver::socket cancel}
	exit 0
    }
}

# WorkerError msg opts --
#	A background error in a worker: the supervisor's end (CLOSED: its
#	queue is gone) ends the worker; anything else is printed for the log.
proc ::socketserver::prefork::WorkerError {msg opts} {
    if {[lrange [dict get $opts -errorcode] 0 1] eq {SOCKETSERVER CLOSED}} {
	exit 0
    }
    catch {
	puts stderr "error: [dict get $opts -errorinfo]"
	flush stderr
    }
}

#========================================================================
#
# The supervisor
#
#	Start-up, listening, systemd (notify, watchdog, its variables) and
#	the descriptor check.
#
#========================================================================
#
# Each worker is an entry of Workers, by pid: a dict of
#   chan	its output (standard output and error), read by Output
#   generation	the reload generation it belongs to
#   phase	starting (until its READY line), ready, or leaving
#		(sent TERM by a reload, SIGTTOU or a stop)
#   started	when it was spawned, in ms
#   board	its last scoreboard entry (::socketserver::socket info's
#		workers: state waiting, serving or idle, for, served, peer)
#   completed	1 once it is known to have served a connection to the end
#   reason	why the supervisor sent it KILL, or empty
#   partial	the start of an output line not ended yet
#   cutting	1 while the rest of an over-long line is skipped
#   recent	its last output lines logged (none: a load failure is told
#		by how it ended)
#   holding	1 while its output is held, not logged: started by a reload,
#		until it loads (then it is logged) or ends (if it failed the
#		reload, its output is the reason, logged once with it)
#   held	those lines, at most a second's budget (heldsize characters)
#   quiet	1 once its output is no longer logged (of a generation that
#		failed to load, whose failure the log has told)
#   overhead	characters the log adds to each line it logs of the worker's
#		("worker PID: ", and on stderr the time stamp, the
#		supervisor's pid and the newline)
#   budget	characters of log its output filled in the current second:
#		each line logged costs its length and the overhead
#   second	that second
#   dropped	lines of output not logged since last said, over the
#		budget
#   droppedchars
#		their characters
#
# What a worker does comes from the queue's scoreboard, which the worker
# writes as it asks and as connections come (no message, no wake-up of the
# supervisor per connection) and which is exact whenever it is read,
# however long the supervisor was stopped. That it loaded comes as one
# line on its output, read before its exit is: an exit right after the
# first ask still counts as a worker that loaded. Exits come as SIGCHLD.

namespace eval ::socketserver::prefork {
    variable MaxLine 4096	;# Longer output lines are logged cut.
    variable Budget 65536	;# Characters of log a worker's output may fill
				;# per second, what the log adds included.
    variable Script		;# The script that workers run.
}

proc ::socketserver::prefork::Supervisor {config} {
    variable Config $config
    variable Port
    variable Script
    variable Wanted [dict get $config -workers]
    # The path as the user gave it, not resolved through symlinks: a
    # deploy that switches a 'current' symlink and sends HUP must reload
    # the new release. [pwd] has the links resolved; the shell's PWD,
    # where it names the same directory, has them as typed (Unicorn does
    # the same).
    set dir [pwd]
    if {[info exists ::env(PWD)] && [file pathtype $::env(PWD)] eq "absolute"
	    && ![catch {file stat $::env(PWD) here; file stat $dir real}]
	    && $here(dev) == $real(dev) && $here(ino) == $real(ino)} {
	set dir $::env(PWD)
    }
    set Script [file join $dir $::argv0]
    HideSystemdEnv
    set how [Listen]
    variable Generation
    variable FirstGeneration $Generation
    CheckDescriptors
    Log "listening on port $Port, [Count [dict get $config -workers] worker]$how"
    ::socketserver::signal CHLD [namespace code Reap]
    ::socketserver::signal TERM [namespace code Stop]
    ::socketserver::signal INT [namespace code Interrupt]
    ::socketserver::signal HUP [namespace code Reload]
    ::socketserver::signal USR2 [namespace code Upgrade]
    ::socketserver::signal TTIN [namespace code {Resize 1}]
    ::socketserver::signal TTOU [namespace code {Resize -1}]
    ::socketserver::signal USR1 [namespace code Status]
    # Old workers that ended while the program was being replaced.
    Reap
    interp bgerror {} [list apply {{msg opts} {
	::socketserver::prefork::Log "supervisor error: [dict get $opts -errorinfo]"
    }}]
    # The first worker alone: if the application does not load, say why
    # and leave rather than start the others. One the supervisor stops
    # before it loaded (SIGTTOU) is replaced, alone too (Exited, Fill).
    if {[StartWorker] eq ""} {
	exit 1
    }
    # After the start: the first status sent counts the worker starting.
    Watch
    vwait ::socketserver::prefork::FirstLoaded
    variable FirstLoaded
    if {$FirstLoaded eq "stopped"} {
	Finish
    }
    if {$FirstLoaded ne "ok"} {
	variable FirstFailure
	Log "the application failed to load $FirstFailure"
	exit 1
    }
    Fill
    vwait forever
}

# Started --
#	Once every worker of the first fill has loaded the application (or
#	one had to be backed off): tells systemd the service is up, and
#	starts the watchdog pings. Once.
proc ::socketserver::prefork::Started {} {
    variable Ready
    if {!$Ready} {
	set Ready 1
	Notify READY=1
	StartWatchdog
    }
}

# Listen --
#	Listens on -port, or takes the socket systemd passed (socket
#	activation: the one on -port, if -port is given, of those passed).
#	Leaves if it can't. Returns how, for the log.
proc ::socketserver::prefork::Listen {} {
    variable Config
    variable Port
    variable MAX_LISTEN_FDS
    set port [dict get $Config -port]
    if {[info exists ::env(SOCKETSERVER_UPGRADE)]} {
	return [TakeOver]
    }
    if {[Activated]} {
	set n $::env(LISTEN_FDS)
	set names [expr {[info exists ::env(LISTEN_FDNAMES)]
	    ? [split $::env(LISTEN_FDNAMES) :] : {}}]
	# Not for the workers, nor for any program they start.
	foreach name {LISTEN_PID LISTEN_FDS LISTEN_FDNAMES} {
	    unset -nocomplain ::env($name)
	}
	# A decimal count from 1 to MAX_LISTEN_FDS, or nothing is tried
	# (100000 made one 5 MB line of errors).
	if {![regexp {^[1-9][0-9]{0,3}$} $n] || $n > $MAX_LISTEN_FDS} {
	    Log "couldn't listen: LISTEN_FDS is \"[Clip $n]\", expected a number of\
		    sockets from 1 to $MAX_LISTEN_FDS"
	    exit 1
	}
	set errors {}
	for {set i 0} {$i < $n} {incr i} {
	    set fd [expr {3 + $i}]
	    if {![catch {::socketserver::socket server {*}[Watching] -fd $fd {*}[expr {$port eq "" ? "" : [list $port]}]} Port]} {
		set name [lindex $names $i]
		return " (socket activation: descriptor $fd[expr {$name eq "" ? "" : ", $name"}])"
	    }
	    lappend errors $Port
	}
	if {[llength $errors] > 3} {
	    set errors [list {*}[lrange $errors 0 2] "and [expr {[llength $errors] - 3}] more"]
	}
	Log "couldn't listen: systemd passed [Count $n socket] (LISTEN_FDS), and none\
		will do[expr {$port eq "" ? "" : " for -port $port"}]: [join $errors {; }]"
	exit 1
    }
    set options [list -myaddr [dict get $Config -myaddr] {*}[Watching]]
    if {[dict get $Config -backlog] > 0} {
	lappend options -backlog [dict get $Config -backlog]
    }
    if {[catch {::socketserver::socket server {*}$options $port} Port]} {
	Log "couldn't listen: $Port"
	exit 1
    }
    return ""
}

# Watching --
#	The server's options for connections it watches: -ready,
#	-readyafter and -keepalive.
proc ::socketserver::prefork::Watching {} {
    variable Config
    list -ready [dict get $Config -ready] -readyafter [dict get $Config -readyafter] \
	-keepalive [dict get $Config -keepalive]
}

# Notify state --
#	Tells systemd (sd_notify: NOTIFY_SOCKET), if it listens; a failure is
#	logged once until it changes.
proc ::socketserver::prefork::Notify {state} {
    variable NotifyError
    variable SystemdEnv
    variable Notified
    variable NotifyDropped
    if {![dict exists $SystemdEnv NOTIFY_SOCKET]} {
	return
    }
    SetSystemdEnv
    # It never waits: with systemd's socket full, the message is dropped
    # (POSIX EAGAIN), and counted for SIGUSR1.
    set failed [catch {::socketserver::notify $state} msg opts]
    HideSystemdEnv
    if {$failed} {
	if {[lindex [dict get $opts -errorcode] 1] in {EAGAIN EWOULDBLOCK}} {
	    incr NotifyDropped
	}
	if {$msg ne $NotifyError} {
	    Log $msg
	}
	set NotifyError $msg
    } else {
	incr Notified
	set NotifyError {}
    }
}

# StartWatchdog --
#	With WATCHDOG_USEC (for this process: WATCHDOG_PID unset or ours),
#	Watch pings systemd at half that interval while the supervisor
#	serves: a wedged supervisor stops pinging and systemd restarts it.
proc ::socketserver::prefork::StartWatchdog {} {
    variable Watchdog
    variable SystemdEnv
    if {[dict exists $SystemdEnv WATCHDOG_USEC]
	    && [string is entier -strict [dict get $SystemdEnv WATCHDOG_USEC]]
	    && [dict get $SystemdEnv WATCHDOG_USEC] > 0
	    && (![dict exists $SystemdEnv WATCHDOG_PID]
		|| [dict get $SystemdEnv WATCHDOG_PID] eq [pid])} {
	set Watchdog [expr {max(1, [dict get $SystemdEnv WATCHDOG_USEC] / 2000)}]
    }
}

# HideSystemdEnv --
#	Takes NOTIFY_SOCKET and WATCHDOG_* out of the environment into
#	SystemdEnv: the supervisor alone speaks to systemd, and the workers
#	(and what they run) must not see them. SetSystemdEnv puts them back
#	for a moment: to notify, to re-execute.
proc ::socketserver::prefork::HideSystemdEnv {} {
    variable SystemdEnv
    foreach name {NOTIFY_SOCKET WATCHDOG_USEC WATCHDOG_PID} {
	if {[info exists ::env($name)]} {
	    dict set SystemdEnv $name $::env($name)
	    unset ::env($name)
	}
    }
}

proc ::socketserver::prefork::SetSystemdEnv {} {
    variable SystemdEnv
    dict for {name value} $SystemdEnv {
	set ::env($name) $value
    }
}

# CheckDescriptors --
#	Each worker costs the supervisor two descriptors (its output and its
#	reply socket), four during a reload, when two generations run. Too
#	few for the workers at all: say how many are needed and leave; too
#	few for a reload: say so.
proc ::socketserver::prefork::CheckDescriptors {} {
    variable Wanted
    set d [::socketserver::descriptors]
    set spare [expr {[dict get $d limit] - [dict get $d open] - 16}]
    set how "raise the limit (ulimit -n; LimitNOFILE= in a systemd unit; the\
	    hard limit is [dict get $d hardlimit]) or run fewer workers"
    if {$spare < 2 * $Wanted} {
	Log "-workers $Wanted needs at least [expr {[dict get $d open] + 16 + 2 * $Wanted}]\
		descriptors (2 per worker), [expr {[dict get $d open] + 16 + 4 * $Wanted}]\
		to reload, but the limit is [dict get $d limit]: $how"
	exit 1
    }
    if {$spare < 4 * $Wanted} {
	Log "warning: a reload needs [expr {[dict get $d open] + 16 + 4 * $Wanted}]\
		descriptors (4 per worker while two generations run), but the\
		limit is [dict get $d limit]: $how"
    }
}

#========================================================================
#
# Upgrade in place (SIGUSR2)
#
#	The dry run, then 'reexec' of the same command line; the new
#	program takes over the old one's workers (TakeOver).
#
#========================================================================
#
# The supervisor replaces its own program, keeping its pid (so systemd's
# MainPID, Type=notify and pid files stay right) and its listener (so no
# connection is refused: those that come meanwhile wait in the backlog).
# First a dry run: the script, run anew with SOCKETSERVER_PREFORK_CHECK set,
# must load as far as its socketserver::prefork call and exit 0; if it
# does not, the log says why and nothing changes. Then 'reexec' stops
# accepting, hands what was accepted to the workers, and execs the same
# command line; the listener's number goes in SOCKETSERVER_LISTENER, and
# SOCKETSERVER_UPGRADE carries "VERSION GENERATION HIGHEST PID ..." (the workers,
# which are the new program's children too). The old workers get no new
# connection after the exec: each finishes its connection (one it gives
# back with 'release' goes to the new program, which reads the old queue
# for those) and exits; the new program starts its own workers and
# collects the old ones (retiring any still there after -graceful).

# Upgrade --
#	SIGUSR2: the dry run, then the exec.
proc ::socketserver::prefork::Upgrade {} {
    variable State
    variable Config
    variable Script
    variable Dir
    variable Port
    variable Check
    if {$State ne "running"} {
	Log "upgrade refused: the supervisor is $State"
	return
    }
    set State upgrading
    Log "upgrading in place: checking that the new code loads"
    set command [list [info nameofexecutable] $Script {*}$::argv]
    if {[dict get $Config -user] ne ""} {
	set command [linsert $command 1 [file join $Dir runas.tcl] \
	    [dict get $Config -user] [dict get $Config -group]]
    }
    # Spawned as a worker is, so that the code runs as in one (it has the
    # queue), and it dies with the supervisor.
    set ::env(SOCKETSERVER_PREFORK_CHECK) $Port
    try {
	set chan [::socketserver::socket spawn -parentdeath TERM {*}$command]
    } on error {msg} {
	set State running
	Log "upgrade failed, the running code keeps serving: couldn't run the check: $msg"
	return
    } finally {
	unset ::env(SOCKETSERVER_PREFORK_CHECK)
    }
    fconfigure $chan -blocking 0
    set Check [dict create chan $chan pid [pid $chan] output {} \
	timer [after [Graceful] [namespace code CheckOverdue]]]
    fileevent $chan readable [namespace code CheckOutput]
}

# CheckOutput --
#	What the dry run prints, kept (the last 64 KiB) for the log. Its end
#	decides nothing: a program the check started may hold the pipe. The
#	check's exit does (Reap, CheckDone).
proc ::socketserver::prefork::CheckOutput {} {
    variable Check
    set chan [dict get $Check chan]
    if {![catch {read $chan 65536} data]} {
	dict append Check output $data
	if {[string length [dict get $Check output]] > 65536} {
	    dict set Check output [string range [dict get $Check output] end-65535 end]
	}
    }
    if {[eof $chan]} {
	fileevent $chan readable {}
    }
}

# CheckOverdue --
#	The dry run has not ended after -graceful: killed, which fails it.
#	(A hung check may hold nothing but its own exit.)
proc ::socketserver::prefork::CheckOverdue {} {
    variable Check
    variable Config
    Log "upgrade: the new code has not loaded -graceful [dict get $Config -graceful]s\
	    into its check: sending KILL"
    Kill KILL [dict get $Check pid]
}

# CheckDone --
#	The dry run exited: the exec if it reached its socketserver::prefork
#	call (it says so in a line, then exits 0), else the old code keeps
#	serving. While stopping, it only goes.
proc ::socketserver::prefork::CheckDone {} {
    variable Check
    variable State
    variable CHECKED
    CheckOutput
    after cancel [dict get $Check timer]
    set chan [dict get $Check chan]
    set output [dict get $Check output]
    set Check {}
    fconfigure $chan -blocking 1
    set failed [catch {close $chan} msg]
    if {$State ne "upgrading"} {
	return
    }
    set lines [split $output \n]
    if {$failed || $CHECKED ni $lines} {
	set State running
	set output [string trimright [join [lsearch -all -inline -exact -not $lines $CHECKED] \n]]
	if {$output eq ""} {
	    set output [expr {$failed ? $msg : "it exited before its socketserver::prefork call"}]
	}
	Log "upgrade failed, the running code keeps serving: the new code did not load:\n$output"
	# No RELOADING=1 went before: READY=1 now would be out of turn.
	Notify "STATUS=upgrade failed: the new code did not load"
	return
    }
    Notify "RELOADING=1\nSTATUS=upgrading in place"
    Reexec
}

# Reexec --
#	Replaces the program; what the accept thread holds crosses with the
#	listener.
proc ::socketserver::prefork::Reexec {} {
    variable State
    variable Port
    variable Script
    variable Generation
    variable Highest
    variable Workers
    variable UPGRADE_VERSION
    if {$State ne "upgrading"} {
	return
    }
    Log "upgrading in place: re-executing [info nameofexecutable] $Script"
    set ::env(SOCKETSERVER_UPGRADE) [list $UPGRADE_VERSION $Generation $Highest {*}[array names Workers]]
    catch {flush stderr}
    SetSystemdEnv
    catch {::socketserver::socket reexec $Port [info nameofexecutable] $Script {*}$::argv} msg
    HideSystemdEnv
    unset ::env(SOCKETSERVER_UPGRADE)
    if {![dict get [::socketserver::socket info $Port] listening]} {
	# Accepting could not resume after the failure: nothing to serve.
	Log "upgrade failed, and the listener with it: $msg"
	exit 1
    }
    set State running
    Log "upgrade failed, the running code keeps serving: $msg"
    Notify "READY=1\nSTATUS=upgrade failed"
}

# Check config --
#	The dry run: the code loaded; the port must be the one served.
proc ::socketserver::prefork::Check {config} {
    set port [dict get $config -port]
    set served $::env(SOCKETSERVER_PREFORK_CHECK)
    if {[string is entier -strict $port] && $port != 0 && $port != $served} {
	puts stderr "-port $port: an upgrade in place keeps the port served, $served;\
		to move, restart the service"
	exit 1
    }
    variable CHECKED
    puts $CHECKED
    flush stdout
    exit 0
}

# TakeOver --
#	After an upgrade: serves on the listener the previous program kept,
#	and collects its workers. Returns how, for the log.
proc ::socketserver::prefork::TakeOver {} {
    variable Config
    variable Port
    variable Previous
    variable UPGRADE_VERSION
    set state $::env(SOCKETSERVER_UPGRADE)
    set listener [expr {[info exists ::env(SOCKETSERVER_LISTENER)] ? $::env(SOCKETSERVER_LISTENER) : ""}]
    unset ::env(SOCKETSERVER_UPGRADE)
    # Both come from the previous program: whole numbers (no leading zero,
    # which Tcl 8.6 reads as octal), or nothing is taken.
    set n {(?:0|[1-9][0-9]{0,9})}
    if {![regexp "^($n)((?: $n){2,})\$" $state -> version numbers]
	    || $version ne $UPGRADE_VERSION
	    || ![regexp "^($n) ($n)(?: |\$)" $listener -> port fd]} {
	Log "couldn't take over after an upgrade: the state passed on is\
		\"[Clip $state]\" with SOCKETSERVER_LISTENER \"[Clip $listener]\",\
		this version reads version $UPGRADE_VERSION with \"PORT FD ...\""
	exit 1
    }
    set state [list $version {*}$numbers]
    # 'server -fd' also takes the connections passed with the listener.
    if {[catch {::socketserver::socket server {*}[Watching] -fd $fd $port} Port]} {
	Log "couldn't take over after an upgrade: $Port"
	exit 1
    }
    unset -nocomplain ::env(SOCKETSERVER_LISTENER)
    foreach pid [lrange $state 3 end] {
	set Previous($pid) 1
    }
    # A new generation, numbered on from the last.
    variable Highest [expr {max([lindex $state 1], [lindex $state 2]) + 1}]
    variable Generation $Highest
    # The old workers leave once done; any still there after -graceful
    # is killed.
    after [Graceful] [namespace code {
	foreach pid [array names Previous] {
	    Log "worker $pid (before the upgrade) still there -graceful\
		    [dict get $Config -graceful]s after the upgrade: sending KILL"
	    Kill KILL $pid
	}
    }]
    set info [::socketserver::socket info $Port]
    set ignored [dict get $info ignored]
    return " (upgraded in place from generation [lindex $state 1]: descriptor $fd kept\
	    with [Count [dict get $info passed] connection][expr {$ignored == 0 ? ""
		: ", [Count $ignored {entry} entries] of SOCKETSERVER_LISTENER ignored"}],\
	    [Count [array size Previous] {old worker}] finishing)"
}

#========================================================================
#
# Workers: start, output, scoreboard
#
#	Starting workers with 'spawn' (StartWorker, Fill, BackOff), logging
#	their output within a budget (Output, Take, LogOutput), and reading
#	the scoreboard (Observe, Survey).
#
#========================================================================

# StartWorker --
#	Spawns a worker of the current generation running the script again.
#	Returns its pid, or empty (logged) if it could not be started.
proc ::socketserver::prefork::StartWorker {} {
    variable Workers
    variable Generation
    variable Script
    variable Config
    variable Dir
    variable State
    set command [list [info nameofexecutable] $Script {*}$::argv]
    if {[dict get $Config -user] ne ""} {
	# runas.tcl becomes the user before the application's code runs.
	set command [linsert $command 1 [file join $Dir runas.tcl] \
	    [dict get $Config -user] [dict get $Config -group]]
    }
    # TERM if the supervisor dies, even while the worker loads the
    # application (later it asks, finds the queue gone and leaves anyway).
    if {[catch {::socketserver::socket spawn -parentdeath TERM {*}$command} chan]} {
	Log "couldn't start a worker: $chan"
	return ""
    }
    set pid [pid $chan]
    fconfigure $chan -blocking 0 -buffering none -encoding utf-8
    # Tcl 9 would stop at the first byte that is not UTF-8.
    catch {fconfigure $chan -profile replace}
    # What the log adds to each line of the worker's: Log's prefix, and
    # on stderr its time stamp and pid and the newline.
    set overhead [string length "worker $pid: "]
    if {[dict get $Config -log] eq ""} {
	incr overhead [string length "YYYY-MM-DDTHH:MM:SS \[[pid]\] \n"]
    }
    set Workers($pid) [dict create chan $chan generation $Generation \
	phase starting started [clock milliseconds] board {} completed 0 \
	reason {} partial {} cutting 0 recent {} \
	holding [expr {$State eq "reloading"}] held {} heldsize 0 \
	quiet 0 overhead $overhead budget 0 second 0 dropped 0 droppedchars 0]
    fileevent $chan readable [namespace code [list Output $pid]]
    Log "worker $pid started (generation $Generation)"
    return $pid
}

# Fill --
#	Starts workers until the current generation has as many as wanted
#	(not while the last crash's back-off runs; one until the application
#	has loaded once). A worker that cannot be started is treated as one
#	that died at once.
proc ::socketserver::prefork::Fill {} {
    variable Workers
    variable Generation
    variable Wanted
    variable State
    variable StartTimer
    variable FirstLoaded
    if {$State eq "stopping" || $StartTimer ne ""} {
	return
    }
    # Until the application has loaded once, one worker at a time.
    set wanted [expr {[info exists FirstLoaded] && $FirstLoaded eq "ok" ? $Wanted : 1}]
    set have 0
    foreach pid [array names Workers] {
	if {[dict get $Workers($pid) generation] == $Generation
		&& [dict get $Workers($pid) phase] ne "leaving"} {
	    incr have
	}
    }
    for {} {$have < $wanted} {incr have} {
	if {[StartWorker] eq ""} {
	    BackOff "worker not started"
	    return
	}
    }
}

# BackOff why --
#	Waits before the next start: 100 ms, doubling to 30 s while starts
#	keep failing.
proc ::socketserver::prefork::BackOff {why} {
    variable Backoff
    variable StartTimer
    variable FirstLoaded
    set Backoff [expr {min(max(2 * $Backoff, 100), 30000)}]
    Log "$why: next start in $Backoff ms"
    if {[info exists FirstLoaded] && $FirstLoaded eq "ok"} {
	# The application loads: serving with fewer workers is serving.
	Started
    }
    after cancel $StartTimer
    set StartTimer [after $Backoff [namespace code {
	set StartTimer {}
	Fill
    }]]
}

# Output pid --
#	A worker's output is readable: at most one chunk per event, so one
#	worker's flood neither grows the supervisor nor starves its timers
#	and signals.
proc ::socketserver::prefork::Output {pid} {
    variable Workers
    set chan [dict get $Workers($pid) chan]
    if {[catch {read $chan 4096} data]} {
	set data ""
    }
    Take $pid $data
    if {[eof $chan]} {
	# The worker closed it or ended: an exit is told by SIGCHLD.
	fileevent $chan readable {}
    }
}

# Take pid data --
#	Logs the whole lines in data, after what came before of the line;
#	cuts a line longer than MaxLine. Once the budget of the second has
#	no room for even an empty line, the rest are counted at once: a
#	flood of short lines costs a count, not a loop and a log line each.
proc ::socketserver::prefork::Take {pid data} {
    variable Workers
    variable MaxLine
    variable READY
    if {[dict get $Workers($pid) quiet]} {
	dict set Workers($pid) partial {}
	return
    }
    set lines [split [dict get $Workers($pid) partial]$data \n]
    set n [expr {[llength $lines] - 1}]
    dict set Workers($pid) partial [lindex $lines end]
    for {set i 0} {$i < $n} {incr i} {
	set line [lindex $lines $i]
	if {[dict get $Workers($pid) cutting]} {
	    # The rest of a line already logged cut.
	    dict set Workers($pid) cutting 0
	} elseif {$line eq $READY && [dict get $Workers($pid) phase] eq "starting"} {
	    dict set Workers($pid) phase ready
	    Release $pid
	    Loaded $pid
	} elseif {![LogOutput $pid $line]} {
	    # Skipped up to the READY line, if a starting worker sent one.
	    set last [expr {$n - 1}]
	    if {[dict get $Workers($pid) phase] eq "starting"} {
		set at [lsearch -exact -start [expr {$i + 1}] $lines $READY]
		if {$at >= 0 && $at < $n} {
		    set last [expr {$at - 1}]
		}
	    }
	    set skipped [lrange $lines [expr {$i + 1}] $last]
	    dict incr Workers($pid) dropped [llength $skipped]
	    dict incr Workers($pid) droppedchars [string length [join $skipped ""]]
	    set i $last
	}
    }
    set partial [dict get $Workers($pid) partial]
    if {[string length $partial] > $MaxLine} {
	if {![dict get $Workers($pid) cutting]} {
	    LogOutput $pid "[string range $partial 0 $MaxLine-1]... (line cut:\
		    longer than $MaxLine characters)"
	    dict set Workers($pid) cutting 1
	}
	dict set Workers($pid) partial {}
    }
}

# LogOutput pid line --
#	One line a worker printed: logged, within the worker's budget of
#	characters of log a second, each line charged what it adds to the
#	log (an empty line is not free); what is over it is counted and said
#	once. Returns 0 once not even an empty line fits in this second.
proc ::socketserver::prefork::LogOutput {pid line} {
    variable Workers
    variable Budget
    if {[dict get $Workers($pid) holding]} {
	# Held while a reload's worker loads, within a second's budget.
	set size [expr {[dict get $Workers($pid) heldsize] + [dict get $Workers($pid) overhead]}]
	if {$size + [string length $line] > $Budget} {
	    dict incr Workers($pid) dropped
	    dict incr Workers($pid) droppedchars [string length $line]
	    return [expr {$size <= $Budget}]
	}
	dict lappend Workers($pid) held $line
	dict set Workers($pid) heldsize [expr {$size + [string length $line]}]
	return 1
    }
    set second [clock seconds]
    if {$second != [dict get $Workers($pid) second]} {
	Dropped $pid
	dict set Workers($pid) second $second
	dict set Workers($pid) budget 0
    }
    set length [string length $line]
    set overhead [dict get $Workers($pid) overhead]
    if {[dict get $Workers($pid) budget] + $length + $overhead > $Budget} {
	dict incr Workers($pid) dropped
	dict incr Workers($pid) droppedchars $length
	return [expr {[dict get $Workers($pid) budget] + $overhead <= $Budget}]
    }
    dict incr Workers($pid) budget [expr {$length + $overhead}]
    dict lappend Workers($pid) recent $line
    if {[llength [dict get $Workers($pid) recent]] > 20} {
	dict set Workers($pid) recent [lrange [dict get $Workers($pid) recent] end-19 end]
    }
    Log "worker $pid: $line"
    return 1
}

# Release pid --
#	A worker's output held while it loaded (see Workers): logged now.
proc ::socketserver::prefork::Release {pid} {
    variable Workers
    if {![dict get $Workers($pid) holding]} {
	return
    }
    set held [dict get $Workers($pid) held]
    dict set Workers($pid) holding 0
    dict set Workers($pid) held {}
    dict set Workers($pid) heldsize 0
    foreach line $held {
	LogOutput $pid $line
    }
}

# Observe --
#	Reads the scoreboard into the workers' entries; returns 'info'.
proc ::socketserver::prefork::Observe {} {
    variable Workers
    variable Backoff
    variable Port
    set info [::socketserver::socket info $Port]
    foreach entry [dict get $info workers] {
	set pid [dict get $entry pid]
	if {![info exists Workers($pid)]} {
	    continue
	}
	dict set Workers($pid) board $entry
	# Asked again after a connection, or took a second one: one was
	# served to the end.
	if {[dict get $entry served] >= 2 || ([dict get $entry served] >= 1
		&& [dict get $entry state] in {waiting idle})} {
	    dict set Workers($pid) completed 1
	    # A worker that serves ends a back-off's doubling.
	    set Backoff 0
	}
    }
    return $info
}

# Dropped pid --
#	Says how much of a worker's output was over its budget, if any.
proc ::socketserver::prefork::Dropped {pid} {
    variable Workers
    variable Budget
    if {[dict get $Workers($pid) dropped] > 0} {
	Log "worker $pid: [Count [dict get $Workers($pid) dropped] line] of output\
		([Count [dict get $Workers($pid) droppedchars] character]) not logged\
		(over $Budget characters of log a second)"
	dict set Workers($pid) dropped 0
	dict set Workers($pid) droppedchars 0
    }
}

# Watch --
#	Every 200 ms, whatever happens in it: an error is logged and the
#	next round comes all the same, or -timeout and the systemd watchdog
#	would stop for good.
proc ::socketserver::prefork::Watch {} {
    try {
	Survey
    } on error {msg opts} {
	Log "supervisor error (checking the workers): [dict get $opts -errorinfo]"
    } finally {
	after 200 [namespace code Watch]
    }
}

# Survey --
#	Reads the scoreboard. With -timeout, a worker serving
#	one connection for longer is killed. Also logs each
#	new error the accept thread meets: out of descriptors the serving
#	process stalls (it accepts nothing and can't take a new worker's
#	first ask until one is free) and would otherwise say nothing.
proc ::socketserver::prefork::Survey {} {
    variable Workers
    variable Config
    variable LastError
    set info [Observe]
    set timeout [dict get $Config -timeout]
    foreach pid [array names Workers] {
	# A -log command that runs the event loop may see one reaped.
	if {![info exists Workers($pid)]} {
	    continue
	}
	set entry [dict get $Workers($pid) board]
	if {$timeout <= 0 || ![dict exists $entry state]} {
	    continue
	}
	if {[dict get $entry state] eq "serving" && [dict get $entry for] > $timeout} {
	    KillFor $pid [format "busy %.2fs (-timeout %s) serving %s" \
		[dict get $entry for] $timeout [join [dict get $entry peer] :]]
	} elseif {[dict exists $entry handed] && [dict get $entry handed] > $timeout} {
	    # Its event loop has not run since: blocked elsewhere, or stopped.
	    KillFor $pid [format "handed a connection %.2fs ago (-timeout %s)\
		and has not taken it" [dict get $entry handed] $timeout]
	}
    }
    # Systemd: the counts, and the watchdog while the accept thread runs
    # and a worker of the current generation has loaded.
    variable Status
    variable Watchdog
    variable Pinged
    variable Generation
    variable State
    set counts {}
    set loaded 0
    foreach pid [array names Workers] {
	set entry [dict get $Workers($pid) board]
	if {[dict exists $entry state]} {
	    dict incr counts [dict get $entry state]
	}
	if {[dict get $Workers($pid) phase] eq "ready"
		&& [dict get $Workers($pid) generation] == $Generation} {
	    incr loaded
	}
    }
    set status "[Count [array size Workers] worker][expr {[dict size $counts] ? " ([join [lmap {k v} [lsort -stride 2 $counts] {string cat "$v $k"}] {, }])" : ""}], generation $Generation, $State"
    if {$status ne $Status} {
	set Status $status
	Notify STATUS=$status
    }
    set now [clock milliseconds]
    if {$Watchdog > 0 && $now - $Pinged >= $Watchdog
	    && [dict get $info listening] && $loaded > 0} {
	set Pinged $now
	Notify WATCHDOG=1
    }
    set error [dict get $info lasterror]
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
}

#========================================================================
#
# Exits, loads and retiring
#
#	SIGCHLD (Reap, Exited), a generation that loads or fails to
#	(Loaded, Settle), and retiring or killing a worker.
#
#========================================================================

# Reap --
#	SIGCHLD: every worker that has ended is collected, whoever still
#	holds its output (a program its handler started, say).
proc ::socketserver::prefork::Reap {} {
    variable Workers
    variable Previous
    variable Check
    variable State
    if {$Check ne "" && ([catch {::socketserver::exited [dict get $Check pid]} ended]
	    || $ended)} {
	CheckDone
    }
    # What they did last: an exited worker's slot stays until it is
    # collected.
    Observe
    foreach pid [array names Workers] {
	if {[catch {::socketserver::exited $pid} ended] || $ended} {
	    Exited $pid
	}
    }
    foreach pid [array names Previous] {
	if {[catch {::socketserver::wait $pid} how] || $how ne ""} {
	    unset Previous($pid)
	    Log "worker $pid (before the upgrade) exited: [expr {[lindex $how 0] eq "CHILDSTATUS"
		? "exit status [lindex $how 2]" : [lindex $how 0] eq "CHILDKILLED"
		? "killed by [lindex $how 2]" : $how}]"
	    if {$State eq "stopping" && [AllGone]} {
		Finish
	    }
	}
    }
}

# Exited pid --
#	A worker ended: log its last output and how it ended, replace it. A
#	worker the supervisor stopped itself (retired or killed it) never
#	counts as one that failed to load the application.
proc ::socketserver::prefork::Exited {pid} {
    variable Workers
    variable State
    variable Generation
    variable Backoff
    variable FirstLoaded
    variable FirstGeneration
    variable Config
    set chan [dict get $Workers($pid) chan]
    # What it printed last, within its budget; a line it did not end.
    if {![catch {read $chan 65536} data]} {
	Take $pid $data
    }
    if {[dict get $Workers($pid) partial] ne ""} {
	Take $pid \n
    }
    set failed [expr {[dict get $Workers($pid) phase] eq "starting"
	&& [dict get $Workers($pid) generation] == $Generation && $State eq "reloading"}]
    if {!$failed} {
	Release $pid
    }
    Dropped $pid
    set worker $Workers($pid)
    unset Workers($pid)
    fconfigure $chan -blocking 1
    set recycled 0
    if {[catch {close $chan} msg opts]} {
	set how [dict get $opts -errorcode]
	switch -- [lindex $how 0] {
	    CHILDSTATUS {set how "exit status [lindex $how 2]"}
	    CHILDKILLED {set how "killed by [lindex $how 2]"}
	    default {set how $msg}
	}
    } elseif {[dict get $worker reason] eq "" && [dict get $worker phase] ne "leaving"
	    && [dict get $Config -maxrequests] > 0} {
	# Left on its own with status 0, as a worker does after its
	# -maxrequests connections.
	set recycled 1
	set how "recycled (-maxrequests [dict get $Config -maxrequests])"
    } else {
	set how "exit status 0"
    }
    if {[dict get $worker reason] ne ""} {
	append how " ([dict get $worker reason])"
    }
    Log "worker $pid exited: $how"
    set stopped [expr {[dict get $worker phase] eq "leaving"
	|| [dict get $worker reason] ne ""}]
    if {![info exists FirstLoaded] && $State eq "stopping"} {
	# Stopped before the application had loaded once: not its fault.
	set FirstLoaded stopped
	return
    }
    if {![info exists FirstLoaded] && [dict get $worker generation] == $FirstGeneration} {
	if {$stopped} {
	    # Retired (SIGTTOU) while it loaded: another takes its place,
	    # alone as the first was.
	    Fill
	    return
	}
	variable FirstFailure "in worker $pid[LoadFailure $worker $how]"
	set FirstLoaded failed
	return
    }
    if {$State eq "stopping"} {
	if {[AllGone]} {
	    Finish
	}
	return
    }
    if {$failed} {
	# What it printed was held: the reason, logged once, here.
	set output [join [dict get $worker held] \n]
	ReloadFailed $pid [expr {$output eq "" ? ": $how" : " ($how):\n$output"}]
	return
    }
    if {[dict get $worker generation] != $Generation
	    || [dict get $worker phase] eq "leaving"} {
	# Retired (a reload, SIGTTOU): nothing to replace.
	Fill
	return
    }
    # Died before it served one connection to the end (before it was
    # ready, say): it may do so again at once, so back off. A machine
    # too busy to start a worker in a second must not hide that. What
    # it was given is the scoreboard's count, which is exact.
    if {![dict get $worker completed] && !$recycled && [dict get $worker reason] eq ""} {
	set lived [expr {[clock milliseconds] - [dict get $worker started]}]
	set board [dict get $worker board]
	set served [expr {[dict exists $board served] ? [dict get $board served] : 0}]
	BackOff "worker $pid died after $lived ms [expr {$served == 0
	    ? "having served no connection"
	    : "given [Count $served connection] and not seen to finish one"}]"
    } else {
	set Backoff 0
	Fill
    }
}

# LoadFailure worker how --
#	How a worker that did not load the application ended, for the log:
#	its output has been logged already, as it came, and is not repeated.
proc ::socketserver::prefork::LoadFailure {worker how} {
    if {[llength [dict get $worker recent]] == 0} {
	return ": $how"
    }
    return " ($how): its output is above"
}

# Loaded pid --
#	A worker loaded the application (its output, held while it loaded
#	for a reload, was logged just now): see Settle.
proc ::socketserver::prefork::Loaded {pid} {
    variable FirstLoaded
    if {![info exists FirstLoaded]} {
	set FirstLoaded ok
    }
    Settle
}

# Settle --
#	Once no worker of the current generation is loading the application
#	any more (it loaded, or was retired while it loaded): up, if as many
#	as wanted have loaded; during a reload, the old ones are retired.
proc ::socketserver::prefork::Settle {} {
    variable Workers
    variable State
    variable Generation
    variable Wanted
    set loaded 0
    foreach other [array names Workers] {
	if {[dict get $Workers($other) generation] == $Generation} {
	    switch -- [dict get $Workers($other) phase] {
		starting {return}
		ready {incr loaded}
	    }
	}
    }
    if {$loaded == 0} {
	return
    }
    if {$loaded >= $Wanted} {
	Started
    }
    if {$State ne "reloading"} {
	return
    }
    set State running
    Log "generation $Generation loaded: retiring the old workers"
    Notify "READY=1\nSTATUS=generation $Generation loaded"
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
    dict set Workers($pid) phase leaving
    Kill TERM $pid
    after [Graceful] \
	[namespace code [list Overdue $pid]]
}

# Overdue pid --
#	A worker told to leave is still there after -graceful: killed.
proc ::socketserver::prefork::Overdue {pid} {
    variable Workers
    variable Config
    if {![info exists Workers($pid)]} {
	return
    }
    set board [dict get $Workers($pid) board]
    set doing [expr {[dict exists $board state] ? [dict get $board state] : "starting"}]
    KillFor $pid "still $doing -graceful [dict get $Config -graceful]s after TERM"
}

# Kill signal pid --
#	Sends the signal; a signal that could not be sent is logged as such.
proc ::socketserver::prefork::Kill {signal pid} {
    if {[catch {::socketserver::kill $signal $pid} msg]} {
	Log "$msg (worker $pid)"
    }
}

# KillFor pid why --
#	Kills a worker, logged with the reason, which its exit line repeats
#	once it is gone. Once only.
proc ::socketserver::prefork::KillFor {pid why} {
    variable Workers
    if {![info exists Workers($pid)] || [dict get $Workers($pid) reason] ne ""} {
	return
    }
    Log "worker $pid $why: sending KILL"
    dict set Workers($pid) reason $why
    Kill KILL $pid
}

#========================================================================
#
# Reload (SIGHUP) and resize (SIGTTIN, SIGTTOU)
#
#========================================================================

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
    if {$State in {reloading upgrading}} {
	Log "reload refused: the supervisor is $State"
	return
    }
    variable Highest
    # A number never used before, even after a reload that failed.
    set Generation [incr Highest]
    set State reloading
    after cancel $StartTimer
    set StartTimer {}
    Log "reloading: starting generation $Generation"
    Notify "RELOADING=1\nSTATUS=reloading: starting generation $Generation"
    Fill
    after [Graceful] [namespace code [list LoadOverdue $Generation]]
}

# LoadOverdue generation --
#	-graceful seconds into a reload: a worker of the new generation that
#	has not loaded yet is killed, which fails the reload (rather than
#	wait for ever, refusing every later one).
proc ::socketserver::prefork::LoadOverdue {generation} {
    variable State
    variable Generation
    variable Workers
    variable Config
    if {$State ne "reloading" || $Generation != $generation} {
	return
    }
    foreach pid [array names Workers] {
	if {[dict get $Workers($pid) generation] == $generation
		&& [dict get $Workers($pid) phase] eq "starting"} {
	    KillFor $pid "still loading the application -graceful\
		    [dict get $Config -graceful]s into the reload"
	}
    }
}

# Graceful --
#	-graceful in ms.
proc ::socketserver::prefork::Graceful {} {
    variable Config
    expr {int([dict get $Config -graceful] * 1000)}
}

# ReloadFailed pid how --
#	A worker of the new generation died before it loaded: the old
#	generation keeps serving, the rest of the new one is stopped. What
#	the rest printed is not logged: the same error again, most likely,
#	which the failed worker's output, in how, tells once.
proc ::socketserver::prefork::ReloadFailed {pid how} {
    variable Workers
    variable Generation
    variable State running
    Log "reload failed, the old workers keep serving: worker $pid did not load the application$how"
    Notify "READY=1\nSTATUS=reload failed: generation $Generation did not load"
    foreach other [array names Workers] {
	if {[dict get $Workers($other) generation] == $Generation} {
	    dict set Workers($other) phase leaving
	    dict set Workers($other) quiet 1
	    dict set Workers($other) holding 0
	    dict set Workers($other) dropped 0
	    KillFor $other "of a generation that failed to load"
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
    if {$State eq "stopping"} {
	return
    }
    if {$Wanted + $delta < 1 || $Wanted + $delta > 1024} {
	Log "workers: [Count $Wanted worker], the [expr {$delta < 0
	    ? "fewest there can be: SIGTTOU" : "most there can be: SIGTTIN"}] ignored"
	return
    }
    incr Wanted $delta
    Log "workers: $Wanted"
    if {$delta > 0} {
	Fill
	return
    }
    # A waiting one goes first, the one started last of them.
    set chosen {}
    foreach pid [lsort -integer -decreasing [array names Workers]] {
	if {[dict get $Workers($pid) generation] == $Generation
		&& [dict get $Workers($pid) phase] ne "leaving"} {
	    set board [dict get $Workers($pid) board]
	    set waiting [expr {[dict exists $board state]
		&& [dict get $board state] eq "waiting"}]
	    if {$chosen eq "" || $waiting} {
		set chosen $pid
		if {$waiting} {
		    break
		}
	    }
	}
    }
    if {$chosen ne ""} {
	Retire $chosen
    }
    # The one retired may have been the last still loading.
    variable FirstLoaded
    if {[info exists FirstLoaded] && $FirstLoaded eq "ok"} {
	Settle
    }
}

#========================================================================
#
# Status (SIGUSR1) and stopping (SIGTERM, SIGINT)
#
#========================================================================

# Status --
#	SIGUSR1: a line per worker, as the scoreboard has it now, and the
#	queue.
proc ::socketserver::prefork::Status {} {
    variable Workers
    variable Port
    set info [::socketserver::socket info $Port]
    set board {}
    foreach entry [dict get $info workers] {
	dict set board [dict get $entry pid] $entry
    }
    foreach pid [lsort -integer [array names Workers]] {
	set w $Workers($pid)
	set line "worker $pid generation [dict get $w generation]"
	if {[dict exists $board $pid]} {
	    set entry [dict get $board $pid]
	    append line [format " served %d %s for %.3fs" [dict get $entry served] \
		[dict get $entry state] [dict get $entry for]]
	    if {[dict exists $entry peer]} {
		append line " with [join [dict get $entry peer] :]"
	    }
	    if {[dict exists $entry handed]} {
		append line [format ", handed a connection %.3fs ago it has not taken" \
		    [dict get $entry handed]]
	    }
	} else {
	    append line [format " starting for %.3fs" \
		[expr {([clock milliseconds] - [dict get $w started]) / 1000.0}]]
	}
	if {[dict get $w phase] eq "leaving"} {
	    append line ", leaving"
	}
	Log $line
    }
    # Each number named for what it counts: 'closed' holds kept-alive
    # connections, answered before, as well as those never answered.
    set watching [dict get $info watching]
    set parked [dict get $info parked]
    set line "queue: [Count [dict get $info waiting] worker] waiting,\
	    [Count [dict get $info queued] connection] queued,\
	    [Count $watching connection] watched ([expr {$watching - $parked}] silent,\
	    $parked kept alive), [dict get $info closed] closed by the supervisor"
    if {[dict get $info lasterror] ne ""} {
	append line ", last error [dict get $info lasterror]"
    }
    Log $line
    variable SystemdEnv
    if {[dict exists $SystemdEnv NOTIFY_SOCKET]} {
	variable Notified
	variable NotifyDropped
	Log "systemd: [Count $Notified notification] sent, $NotifyDropped dropped\
		(its socket was full)"
    }
}

# Stop --
#	SIGTERM, the first SIGINT: stop accepting at once; let the workers
#	serve every connection already accepted; then retire them; kill what
#	is left after -graceful seconds.
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
    Notify "STOPPING=1\nSTATUS=stopping"
    variable Check
    if {$Check ne ""} {
	# An upgrade's dry run: no longer wanted.
	Kill KILL [dict get $Check pid]
    }
    ::socketserver::socket close $Port
    set deadline [expr {[clock milliseconds] + [Graceful]}]
    Drain $deadline
}

# Interrupt --
#	SIGINT: Ctrl-C. The first stops gracefully, as SIGTERM does; one that
#	comes while stopping (after either) kills every worker at once.
proc ::socketserver::prefork::Interrupt {} {
    variable State
    variable Workers
    if {$State ne "stopping"} {
	Stop
	return
    }
    foreach pid [array names Workers] {
	KillFor $pid "interrupted while stopping"
    }
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
    if {[AllGone]} {
	Finish
	return
    }
    foreach pid [array names Workers] {
	dict set Workers($pid) phase leaving
	Kill TERM $pid
    }
    after [expr {max(0, $deadline - [clock milliseconds])}] [namespace code KillAll]
}

# AllGone --
#	1 once no worker is left, of this program or of the one before an
#	upgrade.
proc ::socketserver::prefork::AllGone {} {
    variable Workers
    variable Previous
    expr {[array size Workers] == 0 && [array size Previous] == 0}
}

proc ::socketserver::prefork::KillAll {} {
    variable Workers
    variable Previous
    foreach pid [array names Workers] {
	Overdue $pid
    }
    foreach pid [array names Previous] {
	Log "worker $pid (before the upgrade) still there at the end of -graceful: sending KILL"
	Kill KILL $pid
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
