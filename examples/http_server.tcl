#!/usr/bin/env tclsh
# http_server.tcl ?workers? ?port? --
#
#	A pre-forked HTTP/1.1 server: the parent listens on port (default
#	8080; 0 picks a free one) and forks workers (default 4), which answer
#	with a small text page. With -ready 10 -readyafter "\r\n\r\n" a
#	connection goes to a worker only once its client has sent a whole
#	request head (silent and trickling ones are closed after 10 s).
#	Between requests a worker releases a keep-alive connection to
#	the parent, which hands it to whichever worker asks first when the
#	next request comes, and closes it after -keepalive (5 s) of silence:
#	idle clients hold no worker. Try it with curl, ab or wrk:
#
#	    curl http://127.0.0.1:8080/ http://127.0.0.1:8080/
#	    ab -k -n 10000 -c 50 http://127.0.0.1:8080/
#	    wrk http://127.0.0.1:8080/
#
#	SIGTERM or SIGINT to the parent stops it and its workers.

package require Tclx
package require socketserver

lassign $argv workers port
if {$workers eq ""} {set workers 4}
if {$port eq ""} {set port 8080}
set port [::socketserver::socket server -ready 10 -readyafter "\r\n\r\n" $port]

# A worker serves one connection at a time, so blocking reads are fine:
# the request head has arrived (-readyafter), and the other workers take the
# other clients. A kept connection is released, not held, between
# requests; but release refuses one with input Tcl has read and not used,
# so requests the client pipelined are answered here first.
proc serve {chan addr peerport} {
    fconfigure $chan -translation binary -buffering full
    if {[catch {
	while {[set keep [respond $chan]] && [chan pending input $chan] > 0} {}
	if {$keep} {
	    flush $chan
	    ::socketserver::socket release $chan
	}
    } message]} {
	puts stderr "http_server worker [pid]: $message"
	set keep 0
    }
    if {!$keep} {
	catch {close $chan}
    }
    ::socketserver::socket client serve
}

# Answers one request; returns 1 if the connection is kept for the next.
# HTTP/1.1 keeps it unless the client says "Connection: close", HTTP/1.0
# only if it says "Connection: keep-alive". Lines end in CR LF (a lone LF
# is accepted too); an empty line may come before a request.
proc respond {chan} {
    while {[gets $chan line] >= 0 && [string trimright $line \r] eq ""} {}
    set request [string trimright $line \r]
    set connection {}
    set body 0
    while {[gets $chan line] >= 0 && [string trimright $line \r] ne ""} {
	if {![regexp {^([^:]+):(.*)$} $line -> name value]} {
	    continue
	}
	set value [string trim [string tolower $value]]
	switch -nocase -- $name {
	    connection {lappend connection {*}[split $value ", \t"]}
	    content-length - transfer-encoding {
		if {$value ne "0"} {set body 1}
	    }
	}
    }
    if {[eof $chan]} {
	return 0
    }
    if {![regexp {^(GET|HEAD) \S+ HTTP/1\.([01])$} $request -> method minor]} {
	reply $chan "400 Bad Request" 0 "bad request\n"
	return 0
    }
    # A request with a body is not for this page: close rather than skip it.
    set keep [expr {!$body && ($minor ? "close" ni $connection
	: "keep-alive" in $connection)}]
    reply $chan "200 OK" $keep "hello from worker [pid]\n" [expr {$method eq "HEAD"}]
    return $keep
}

# Content-Length counts the bytes sent: the body is encoded first, and the
# channel is binary (no translation adds a byte, no encoding changes one).
proc reply {chan status keep body {head 0}} {
    set body [encoding convertto utf-8 $body]
    puts -nonewline $chan "HTTP/1.1 $status\r\n"
    puts -nonewline $chan "Content-Type: text/plain; charset=utf-8\r\n"
    puts -nonewline $chan "Content-Length: [string length $body]\r\n"
    puts -nonewline $chan "Connection: [expr {$keep ? "keep-alive" : "close"}]\r\n\r\n"
    if {!$head} {
	puts -nonewline $chan $body
    }
}

proc workerError {message options} {
    if {[lrange [dict get $options -errorcode] 0 1] eq {SOCKETSERVER CLOSED}} {
	exit 0
    }
    puts stderr "http_server worker [pid]: $message"
}

proc shutdown {} {
    foreach pid $::pids {
	catch {kill TERM $pid}
    }
    foreach pid $::pids {
	catch {wait $pid}
    }
    exit 0
}

set pids {}
for {set i 0} {$i < $workers} {incr i} {
    flush stdout
    set pid [fork]
    if {$pid == 0} {
	interp bgerror {} workerError
	::socketserver::socket client serve
	vwait forever
    }
    lappend pids $pid
}
puts "http server [pid] listening on port $port with $workers workers"
flush stdout
::socketserver::signal TERM shutdown
::socketserver::signal INT shutdown
vwait forever
