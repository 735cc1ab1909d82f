# tcl_server.tcl DESIGN WORKERS PORT WORK ?HTTP? --
#
#	The Tcl contenders of the benchmarks, all with the same "hello"
#	handler:
#	    socketserver  the extension, WORKERS forked workers (without TclX,
#	                  as under Tcl 9: started with spawn), one-shot
#	                  requests
#	    single        Tcl's own [socket -server], one process
#	    prefork       [socket -server], then WORKERS forked children that
#	                  all keep the listening channel (the parent closes
#	                  its copy)
#	    supervised    the extension under its supervisor,
#	                  socketserver::prefork, with WORKERS workers
#	WORK is none, sleep (20 ms, as if waiting on a database), cpu (2 ms
#	of computation) or uneven (a blocking 1 ms, or 100 ms for one request
#	in ten, chosen at random). Prints "ready PORT" once every process is set
#	up. The benchmark stops it by killing its process group.
#
#	HTTP is oneshot (the default: an HTTP/1.0 answer, then close) or
#	keepalive: HTTP/1.1, Content-Length, the connection kept open unless
#	the client says "Connection: close", and every connection's wait
#	for a request (its first too) bounded by 5 s, as each design allows:
#	    socketserver  started with -ready 5 -keepalive 5: a worker gets a
#	                  connection once its request has begun to arrive,
#	                  answers one request and hands the connection back
#	                  with [::socketserver::socket release]; the serving
#	                  process watches it until the next one
#	    single        event-driven: a fileevent and a 5 s timer per
#	                  connection
#	    prefork       a child serves the connection it accepted to its
#	                  end, one request after another, waiting at most 5 s
#	                  for each (TclX's select): meanwhile it accepts no
#	                  other, which is what pre-forking does

lassign [concat $argv oneshot] design workers port work http
set idle 5

proc work {} {}
if {$work eq "sleep"} {
    proc work {} {after 20}
} elseif {$work eq "uneven"} {
    proc work {} {
	if {![info exists ::seeded]} {
	    # Forked children would all draw the same numbers.
	    expr {srand([pid])}
	    set ::seeded 1
	}
	after [expr {rand() < 0.1 ? 100 : 1}]
    }
} elseif {$work eq "cpu"} {
    proc work {} {
	set end [expr {[clock microseconds] + 2000}]
	while {[clock microseconds] < $end} {}
    }
}

proc handle {chan args} {
    fconfigure $chan -translation {auto crlf} -buffering full
    if {[gets $chan requestLine] >= 0} {
	while {[gets $chan header] > 0} {}
	work
	puts $chan "HTTP/1.0 200 OK"
	puts $chan "Content-Type: text/plain"
	puts $chan "Content-Length: 6"
	puts $chan "Connection: close"
	puts $chan ""
	# The body goes out as it is: crlf would make it 7 bytes.
	fconfigure $chan -translation binary
	puts -nonewline $chan "hello\n"
    }
    catch {close $chan}
}

# request chan --
#	Reads one HTTP request from the blocking channel chan (its request
#	line and headers, skipping empty lines before it), does the work and
#	answers with HTTP/1.1. Returns 1 if the connection stays open for
#	another request, 0 if the client closed it or asked to (then chan is
#	closed).
proc request {chan} {
    fconfigure $chan -translation {crlf binary} -buffering full
    set requestLine ""
    while {$requestLine eq ""} {
	if {[catch {gets $chan requestLine} n] || $n < 0} {
	    catch {close $chan}
	    return 0
	}
    }
    set keep [string match -nocase "* HTTP/1.1" $requestLine]
    while {![catch {gets $chan header} n] && $n > 0} {
	if {[regexp -nocase {^connection:\s*(\S+)} $header -> value]} {
	    set keep [expr {[string tolower $value] ne "close"}]
	}
    }
    work
    if {[catch {puts -nonewline $chan [answer $keep]; flush $chan}] || !$keep} {
	catch {close $chan}
	return 0
    }
    return 1
}

# answer keep --
#	The HTTP/1.1 answer, with "Connection: close" unless keep.
proc answer {keep} {
    string cat "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n" \
	[expr {$keep ? "" : "Connection: close\r\n"}] "\r\nhello\n"
}

# The keep-alive handler of the one-process server, event-driven: per
# connection a fileevent, the request line and headers read so far
# (requests($chan): {requestLine keep}) and a timer that closes it after
# $idle s without a request.
proc accept {chan args} {
    fconfigure $chan -blocking 0 -translation {crlf binary} -buffering full
    set ::requests($chan) {}
    set ::timers($chan) [after [expr {$::idle * 1000}] [list drop $chan]]
    fileevent $chan readable [list readable $chan]
}

# readable chan --
#	Reads what chan has; answers each request whose headers are in.
proc readable {chan} {
    while {![catch {gets $chan line} n] && $n >= 0} {
	lassign $::requests($chan) requestLine keep
	if {$requestLine eq ""} {
	    if {$line ne ""} {
		set ::requests($chan) [list $line \
		    [string match -nocase "* HTTP/1.1" $line]]
		after cancel $::timers($chan)
	    }
	} elseif {$line ne ""} {
	    if {[regexp -nocase {^connection:\s*(\S+)} $line -> value]} {
		lset ::requests($chan) 1 [expr {[string tolower $value] ne "close"}]
	    }
	} else {
	    work
	    if {[catch {puts -nonewline $chan [answer $keep]; flush $chan}] || !$keep} {
		drop $chan
		return
	    }
	    set ::requests($chan) {}
	    set ::timers($chan) [after [expr {$::idle * 1000}] [list drop $chan]]
	}
    }
    if {[catch {eof $chan} eof] || $eof} {
	drop $chan
    }
}

# drop chan --
#	Closes chan and forgets it.
proc drop {chan} {
    after cancel $::timers($chan)
    unset ::requests($chan) ::timers($chan)
    catch {close $chan}
}

# serveToEnd chan args --
#	The keep-alive handler of the pre-fork child: one request after
#	another on chan until the client closes it, asks to, or sends
#	nothing for $idle s.
proc serveToEnd {chan args} {
    while {[chan pending input $chan] > 0
	    || [lindex [select [list $chan] {} {} $::idle] 0] ne ""} {
	if {![request $chan]} {
	    return
	}
    }
    catch {close $chan}
}

# Forks n children that run script, then vwait; returns nothing.
proc forkChildren {n script} {
    package require Tclx
    for {set i 0} {$i < $n} {incr i} {
	flush stdout
	if {[fork] == 0} {
	    uplevel #0 $script
	    vwait forever
	}
    }
}

switch -- $design {
    supervised {
	# "ready" once every worker has loaded and asks: their start-up is
	# not part of what is measured.
	package require socketserver::prefork
	proc log {line} {
	    if {[regexp {^listening on port (\d+)} $line -> port]} {
		ready $port
	    }
	}
	proc ready {port} {
	    if {[dict get [::socketserver::socket info $port] waiting] < $::workers} {
		after 20 [list ready $port]
		return
	    }
	    puts "ready $port"
	    flush stdout
	}
	socketserver::prefork -port $port -myaddr 127.0.0.1 -workers $workers \
	    -log log handle
    }
    socketserver - worker {
	package require socketserver
	if {$http eq "keepalive"} {
	    # One request, then the connection goes back to the serving
	    # process (unless the client sent more already: release
	    # refuses a channel with unread input).
	    proc serve {chan addr peerport} {
		while {[request $chan]} {
		    if {[chan pending input $chan] == 0} {
			if {[catch {::socketserver::socket release $chan} message]} {
			    puts stderr "release: $message"
			    catch {close $chan}
			}
			break
		    }
		}
		::socketserver::socket client serve
	    }
	    set options [list -ready $idle -keepalive $idle]
	} else {
	    proc serve {chan addr peerport} {
		handle $chan
		::socketserver::socket client serve
	    }
	    set options {}
	}
	interp bgerror {} {apply {args {exit 0}}}
	if {$design eq "worker"} {
	    # Spawned: the queue is adopted.
	    ::socketserver::socket client serve
	    vwait forever
	}
	set port [::socketserver::socket server {*}$options -myaddr 127.0.0.1 $port]
	if {![catch {package require Tclx}]} {
	    forkChildren $workers {::socketserver::socket client serve}
	} else {
	    for {set i 0} {$i < $workers} {incr i} {
		lappend spawned [::socketserver::socket spawn \
		    [info nameofexecutable] [info script] worker 0 0 $work $http]
	    }
	    set deadline [expr {[clock seconds] + 20}]
	    while {[dict get [::socketserver::socket info $port] waiting] < $workers
		    && [clock seconds] < $deadline} {
		after 20
	    }
	}
    }
    single {
	set listener [socket -server [expr {$http eq "keepalive" ? "accept" : "handle"}] \
	    -myaddr 127.0.0.1 $port]
	set port [lindex [fconfigure $listener -sockname] 2]
    }
    prefork {
	set listener [socket -server [expr {$http eq "keepalive" ? "serveToEnd" : "handle"}] \
	    -myaddr 127.0.0.1 $port]
	set port [lindex [fconfigure $listener -sockname] 2]
	forkChildren $workers {}
	close $listener
    }
}
puts "ready $port"
flush stdout
vwait forever
