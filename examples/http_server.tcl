#!/usr/bin/env tclsh
# http_server.tcl ?workers? ?port? --
#
#	A pre-forked HTTP/1.0 server: the parent listens on port (default
#	8080; 0 picks a free one) and forks workers (default 4). Each worker
#	answers one request per connection with a small text page, then asks
#	for the next connection. Try it with curl, ab or wrk:
#
#	    curl http://127.0.0.1:8080/
#	    wrk -H 'Connection: close' http://127.0.0.1:8080/
#
#	SIGTERM or SIGINT to the parent stops it and its workers.

package require Tclx
package require socketserver

lassign $argv workers port
if {$workers eq ""} {set workers 4}
if {$port eq ""} {set port 8080}
set port [::socketserver::socket server $port]

# One request per connection. A worker serves one connection at a time,
# so blocking reads are fine: the other workers take the other clients.
proc serve {chan addr peerport} {
    fconfigure $chan -translation {auto crlf} -buffering full
    if {[catch {respond $chan} message]} {
	puts stderr "http_server worker [pid]: $message"
    }
    catch {close $chan}
    ::socketserver::socket client serve
}

proc respond {chan} {
    if {[gets $chan requestLine] < 0} {
	return
    }
    while {[gets $chan header] > 0} {
	# Headers are read and ignored.
    }
    if {![regexp {^(GET|HEAD) (\S+)} $requestLine -> method path]} {
	puts $chan "HTTP/1.0 400 Bad Request"
	puts $chan "Connection: close"
	puts $chan ""
	return
    }
    # Content-Length counts the bytes sent: encode the body first, and send
    # it untranslated (the channel's crlf would add a byte per line).
    set body [encoding convertto utf-8 "hello from worker [pid]\n"]
    puts $chan "HTTP/1.0 200 OK"
    puts $chan "Content-Type: text/plain; charset=utf-8"
    puts $chan "Content-Length: [string length $body]"
    puts $chan "Connection: close"
    puts $chan ""
    if {$method eq "GET"} {
	fconfigure $chan -translation binary
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
