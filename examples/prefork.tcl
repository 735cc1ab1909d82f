#!/usr/bin/env tclsh
# prefork.tcl ?-port PORT? ?-myaddr ADDR? ?-workers N? ?-maxrequests N?
#	?-handler FILE? ?-stoptimeout MS? --
#
#	A supervisor for socketserver workers, the way Apache prefork,
#	gunicorn and Unicorn run theirs. Copy it and change the handler.
#
#	- A fixed pool of N workers (default 4). A worker that dies is
#	  reaped and a new one forked.
#	- -maxrequests N: a worker leaves after N to N + N/10 connections
#	  (random, so that they don't all restart together) and is replaced.
#	  0 (the default) means never.
#	- SIGHUP: a new pool is forked and every old worker leaves once the
#	  connection it is handling is done. Each worker sources the handler
#	  FILE when it starts, so new workers run its current code.
#	- SIGTERM or SIGINT: stops. Workers get SIGTERM; any still there after
#	  -stoptimeout ms (default 5000) get SIGKILL.
#	- SIGUSR2: each worker prints "worker PID served N".
#
#	FILE (default prefork_handler.tcl next to this script) defines
#	"proc handle {chan addr port}", which handles one connection with
#	blocking I/O and returns; the channel is closed after it.
#
#	It prints "prefork PID listening on port PORT", "worker PID started",
#	"worker PID exited STATUS" and "prefork stopped".

package require Tclx
package require socketserver

array set opt [list -port 8080 -myaddr 0.0.0.0 -workers 4 -maxrequests 0 \
	-handler [file join [file dirname [file normalize [info script]]] \
	prefork_handler.tcl] -stoptimeout 5000]
array set opt $argv
set opt(-handler) [file normalize $opt(-handler)]

proc say {line} {
    catch {
	puts $line
	flush stdout
    }
}

# --- a worker -----------------------------------------------------------

proc runWorker {} {
    signal default {CHLD TERM INT}
    # Signals are acted on from the event loop, between connections.
    signal trap HUP {after idle leave}
    signal trap USR2 {after idle {say "worker [pid] served $::served"}}
    interp bgerror {} workerError
    set ::served 0
    expr {srand([pid])}
    set ::limit 0
    if {$::opt(-maxrequests) > 0} {
	set n $::opt(-maxrequests)
	set ::limit [expr {$n + int(rand() * ($n / 10 + 1))}]
    }
    uplevel #0 [list source $::opt(-handler)]
    ::socketserver::socket client serve
    vwait forever
}

proc serve {chan addr port} {
    # A signal would interrupt the handler's blocking I/O (EINTR): hold
    # HUP and USR2 back until the connection is done.
    signal block {HUP USR2}
    set code [catch {handle $chan $addr $port} message options]
    catch {close $chan}
    signal unblock {HUP USR2}
    if {$code} {
	return -options $options $message
    }
    incr ::served
    if {$::limit > 0 && $::served >= $::limit} {
	exit 0
    }
    ::socketserver::socket client serve
}

# SIGHUP: between connections, so nothing is cut short. A connection that
# was already on its way is handled by cancel before we go.
proc leave {} {
    ::socketserver::socket cancel
    exit 0
}

proc workerError {message options} {
    if {[lrange [dict get $options -errorcode] 0 1] eq {SOCKETSERVER CLOSED}} {
	exit 0
    }
    say "worker [pid] error: $message"
    # A handler error ends that connection only: ask for the next one.
    if {![dict get [::socketserver::socket info $::port] requested]} {
	::socketserver::socket client serve
    }
}

# --- the supervisor -----------------------------------------------------

set workers {}		;# The current pool.
set retiring {}		;# Old workers leaving after SIGHUP.
set stopping 0

proc forkWorker {} {
    flush stdout
    set pid [fork]
    if {$pid == 0} {
	foreach id [after info] {
	    after cancel $id
	}
	set ::workers {}
	set ::retiring {}
	runWorker
    }
    lappend ::workers $pid
    say "worker $pid started"
}

# Dead workers are looked for every 100 ms rather than on SIGCHLD: a
# signal trapped by TclX that lands while threaded Tcl 8.6 holds its
# notifier lock deadlocks the process, and SIGCHLD comes often here.
proc reap {} {
    after 100 reap
    while {![catch {wait -nohang} status] && $status ne ""} {
	set pid [lindex $status 0]
	say "worker $pid exited [lrange $status 1 end]"
	set i [lsearch -exact $::retiring $pid]
	if {$i >= 0} {
	    set ::retiring [lreplace $::retiring $i $i]
	    continue
	}
	set i [lsearch -exact $::workers $pid]
	if {$i >= 0} {
	    set ::workers [lreplace $::workers $i $i]
	    if {!$::stopping} {
		forkWorker
	    }
	}
    }
}

proc reload {} {
    set old $::workers
    set ::workers {}
    lappend ::retiring {*}$old
    for {set i 0} {$i < $::opt(-workers)} {incr i} {
	forkWorker
    }
    foreach pid $old {
	catch {kill HUP $pid}
    }
}

proc status {} {
    foreach pid $::workers {
	catch {kill USR2 $pid}
    }
}

proc stop {} {
    set ::stopping 1
    set all [concat $::workers $::retiring]
    foreach pid $all {
	catch {kill TERM $pid}
    }
    set deadline [expr {[clock milliseconds] + $::opt(-stoptimeout)}]
    while {[llength $all] > 0 && [clock milliseconds] < $deadline} {
	foreach pid $all {
	    if {[catch {wait -nohang $pid} status] || $status ne ""} {
		set all [lsearch -all -inline -not -exact $all $pid]
	    }
	}
	after 20
    }
    foreach pid $all {
	catch {kill KILL $pid}
	catch {wait $pid}
    }
    say "prefork stopped"
    exit 0
}

if {[catch {::socketserver::socket server -myaddr $opt(-myaddr) $opt(-port)} \
	port]} {
    puts stderr "prefork: $port"
    exit 1
}
signal trap HUP {after idle reload}
signal trap USR2 {after idle status}
signal trap {TERM INT} {after idle stop}
say "prefork [pid] listening on port $port"
for {set i 0} {$i < $opt(-workers)} {incr i} {
    forkWorker
}
reap
vwait forever
