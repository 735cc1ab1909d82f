# preforkapp.tcl --
#
#	Shared by prefork.test and watch.test: the application the
#	socketserver::prefork tests run, and a supervisor started from the
#	test process, its log collected, always stopped.

# The application the tests run: answers "PID: LINE VERSION". A line
# "sleep MS" sleeps first, "hold" waits for a second line, "fail" raises
# an error, "print" prints to stdout too, "die" exits the worker,
# "background" starts a program that keeps the worker's output open
# (answers "bg PID"), "flood N" prints N million characters and one
# newline, "env" tells which of LISTEN_FDS, LISTEN_PID and NOTIFY_SOCKET
# the worker has (1 or 0 each), "block" answers, then blocks its event
# loop for 6 s once it has asked again, "ids" answers the Uid, Gid and Groups
# lines of /proc/self/status (separated by "|"), "bind80" tries to listen
# on port 80, "keep" answers and gives the connection back ('release':
# keep-alive), "keepafter PATH" answers and gives it back once file PATH
# exists (at most 60 s), "blank N" prints N empty lines first, "client" and
# "cancel" answer, close and then call that subcommand, as a handler written
# for a plain socketserver worker would (which a prefork handler may not).
set appCode {
    package require socketserver::prefork
    proc handle {chan addr port} {
	fconfigure $chan -buffering line -translation lf
	set line [gets $chan]
	switch -glob -- $line {
	    sleep* {after [lindex $line 1]}
	    hold {set line "[gets $chan] (held)"}
	    fail {error "the handler failed"}
	    die {exit 3}
	    print {puts "printed by the handler"}
	    background {
		set line "bg [exec [info nameofexecutable] << {after 20000} &]"
	    }
	    flood* {
		for {set i 0} {$i < [lindex $line 1]} {incr i} {
		    puts -nonewline [string repeat x 1000000]
		}
		puts ""
	    }
	    env {
		set line "env [lmap name {LISTEN_FDS LISTEN_PID NOTIFY_SOCKET} {
		    info exists ::env($name)
		}]"
	    }
	    ids {
		set f [open /proc/self/status]
		set line "ids [join [lmap l [split [read $f] \n] {
		    expr {[regexp {^(Uid|Gid|Groups):} $l] ? [join [lrange $l 1 end]] : [continue]}
		}] |]"
		close $f
	    }
	    block {
		after 0 {after 6000}
	    }
	    bind80 {
		set line "bind80 [catch {close [socket -server {} -myaddr 127.0.0.1 80]} msg] $msg"
	    }
	    keep {
		puts $chan "[pid]: $line VERSION"
		::socketserver::socket release $chan
		return
	    }
	    {keepafter *} {
		puts $chan "[pid]: $line VERSION"
		set deadline [expr {[clock milliseconds] + 60000}]
		while {![file exists [lindex $line 1]]
			&& [clock milliseconds] < $deadline} {
		    after 10
		}
		::socketserver::socket release $chan
		return
	    }
	    blank* {
		puts -nonewline [string repeat \n [lindex $line 1]]
		flush stdout
	    }
	    client - cancel {
		puts $chan "[pid]: $line VERSION"
		close $chan
		if {$line eq "client"} {
		    ::socketserver::socket client handle
		} else {
		    ::socketserver::socket cancel
		}
		return
	    }
	}
	puts $chan "[pid]: $line VERSION"
    }
    socketserver::prefork {*}$argv handle
}

# An application that fails to load in a worker (only: the supervisor
# runs it too).
set brokenCode [string map {"socketserver::prefork\n" "socketserver::prefork
    if {\[llength \[::socketserver::socket info\]\]} {error {cannot open the database}}\n"} $appCode]

# writeApp version ?code? --
#	(Re)writes the application file; returns its path.
proc writeApp {version {code {}}} {
    if {$code eq ""} {
	set code [string map [list VERSION $version] $::appCode]
    }
    makeFile $code app.tcl
}

# startApp ?options? --
#	Starts the supervisor on a free loopback port; waits until it
#	listens and its workers have loaded. ::pf(pid) ::pf(port) ::pf(chan),
#	::pf(workers) (live), ::pf(exited), ::pf(lines). ::pfPrefix goes
#	before the command (setsid, say); ::pfScript replaces app.tcl.
set ::pfPrefix {}
set ::pfScript {}
proc startApp {args} {
    launchApp {*}$args
    set n [expr {[dict exists $args -workers] ? [dict get $args -workers] : 4}]
    waitUntil {[info exists ::pf(port)] && [llength $::pf(workers)] == $n}
    # Loaded: each has asked for a connection.
    waitUntil {[askers] == $n}
}

# launchApp ?options? --
#	Starts the supervisor as startApp does; waits only until it listens.
proc launchApp {args} {
    array unset ::pf
    set ::pfLog {}
    set ::pf(workers) {}
    set ::pf(exited) {}
    set ::pf(lines) {}
    set script [expr {$::pfScript eq "" ? [file join [temporaryDirectory] app.tcl] : $::pfScript}]
    set ::pf(chan) [open |[list {*}$::pfPrefix [interpreter] $script \
	    -port 0 -myaddr 127.0.0.1 {*}$args 2>@1] r]
    set ::pf(pid) [pid $::pf(chan)]
    fconfigure $::pf(chan) -blocking 0 -buffering line
    fileevent $::pf(chan) readable appOutput
    waitUntil {[info exists ::pf(port)]}
}

# askers --
#	How many workers wait for a connection: asks a live supervisor.
proc askers {} {
    lindex [queueState] 0
}

# queued --
#	How many connections wait for a worker: asks a live supervisor.
proc queued {} {
    lindex [queueState] 1
}

# queueLine --
#	Asks a live supervisor for its queue line (SIGUSR1) and returns it.
proc queueLine {} {
    ::socketserver::kill USR1 $::pf(pid)
    set mark [llength $::pf(lines)]
    waitUntil {[llength [lsearch -all -glob [lrange $::pf(lines) $mark end] {*queue: *}]] > 0}
    lindex [lsearch -all -inline -glob [lrange $::pf(lines) $mark end] {*queue: *}] end
}

# queueState --
#	The supervisor's queue line: workers waiting, connections queued.
proc queueState {} {
    regexp {queue: (\d+) workers? waiting, (\d+) connections? queued} [queueLine] -> waiting queued
    list $waiting $queued
}

proc appOutput {} {
    while {[gets $::pf(chan) line] >= 0} {
	lappend ::pf(lines) $line
	if {[regexp {listening on port (\d+)} $line -> port]} {
	    set ::pf(port) $port
	} elseif {[regexp {worker (\d+) started} $line -> pid]} {
	    lappend ::pf(workers) $pid
	} elseif {[regexp {worker (\d+) (?:\(before the upgrade\) )?exited} $line -> pid]} {
	    lappend ::pf(exited) $pid
	    set ::pf(workers) [lsearch -all -inline -not -exact $::pf(workers) $pid]
	}
    }
    if {[eof $::pf(chan)]} {
	fileevent $::pf(chan) readable {}
	set ::pf(eof) 1
    }
}

# stopApp --
#	SIGTERM, then waits for the supervisor's output to end; kills what
#	is left. Returns the supervisor's exit: 0, or its errorcode.
proc stopApp {} {
    if {![info exists ::pf(chan)]} {
	return
    }
    catch {::socketserver::kill TERM $::pf(pid)}
    catch {waitUntil {[info exists ::pf(eof)]} 15000}
    foreach pid [concat $::pf(pid) $::pf(workers)] {
	catch {::socketserver::kill KILL $pid}
    }
    catch appOutput
    set ::pfLog $::pf(lines)
    fconfigure $::pf(chan) -blocking 1
    set status [expr {[catch {close $::pf(chan)} msg opts] ? [dict get $opts -errorcode] : 0}]
    array unset ::pf
    return $status
}

# exchange n --
#	n connections one after another; the pids that answered, or "lost".
proc exchange {n {version *}} {
    set pids {}
    for {set i 0} {$i < $n} {incr i} {
	set reply [ask $::pf(port) "hello $i"]
	if {[regexp {^line \{(\d+): hello \d+ ?(\S*)\}$} $reply -> pid v]
		&& [string match $version $v]} {
	    lappend pids $pid
	} else {
	    lappend pids lost
	}
    }
    return $pids
}

# logged pattern --
#	The log lines that match pattern.
proc logged {pattern} {
    lsearch -all -inline -glob $::pf(lines) $pattern
}

# watchState --
#	The supervisor's queue line: connections watched, of those parked
#	(kept alive), and closed by the supervisor.
proc watchState {} {
    regexp {(\d+) connections? watched \(\d+ silent, (\d+) kept alive\), (\d+) closed} [queueLine] -> watched parked closed
    list $watched $parked $closed
}

# test name ?args? --
#	tcltest's test, which the files that source this one run their tests
#	with: when a test fails, the log of the last supervisor it ran
#	(startApp, kept by stopApp) follows the failure report, so that a
#	failure says what the supervisor said ("timed out waiting for ..."
#	alone does not). At most its last 200 lines.
set ::pfLog {}
proc test {name args} {
    set ::pfLog {}
    set failed $::tcltest::numTests(Failed)
    uplevel 1 [list ::tcltest::test $name {*}$args]
    if {$::tcltest::numTests(Failed) > $failed} {
	if {[info exists ::pf(lines)]} {
	    set ::pfLog $::pf(lines)
	}
	set n [llength $::pfLog]
	if {$n > 0} {
	    set out [::tcltest::outputChannel]
	    puts $out "---- $name: the supervisor's log ($n lines[expr {$n > 200 ? ", the last 200" : ""}]):"
	    puts $out [join [lrange $::pfLog end-199 end] \n]
	    puts $out "---- end of the supervisor's log"
	}
    }
}
