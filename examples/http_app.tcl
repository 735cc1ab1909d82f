#!/usr/bin/env tclsh
# http_app.tcl ?option value ...? --
#
#	An HTTP/1.1 server with keep-alive, run by the socketserver::prefork
#	supervisor: the same file on Tcl 8.6 and Tcl 9, no TclX. Try:
#
#	    tclsh examples/http_app.tcl -port 8080 -workers 4
#	    tclsh9.0 examples/http_app.tcl -port 8080 -workers 4   (Debian 13)
#	    curl http://127.0.0.1:8080/a http://127.0.0.1:8080/b
#
#	It answers GET and HEAD with a small text page and its
#	Content-Length; keeps the connection unless the client says
#	"Connection: close" (HTTP/1.0: unless it says "Connection:
#	keep-alive"); answers requests pipelined on one connection in order;
#	and answers a request it cannot parse with 400 and closes.
#
#	It sets -ready and -readyafter itself: a worker is handed a
#	connection only once a whole request head has come, so a client that
#	connects and sends nothing, or trickles its request, holds no worker
#	(it is closed after 10 s). Between requests the handler gives the
#	connection back to the supervisor ('release'), which keeps it until
#	the next request for -keepalive seconds (5): an idle keep-alive
#	client holds no worker either. Options on the command line follow
#	these and override them; -help lists them. kill -HUP reloads, kill
#	-TERM stops: see socketserver_prefork(n).

package require socketserver::prefork

# One connection, blocking I/O: the request head is there (-readyafter).
# Requests the client pipelined that Tcl has read already are answered
# here ('release' refuses a channel with unread input); the rest come back
# through the supervisor. Not kept: the supervisor's loop closes it.
proc serve {chan addr port} {
    fconfigure $chan -translation binary -buffering full
    while {[set keep [respond $chan]] && [chan pending input $chan] > 0} {}
    if {$keep} {
	flush $chan
	::socketserver::socket release $chan
    }
}

# Reads one request and answers it; returns 1 if the connection is kept.
# Lines end in CR LF (a lone LF will do); an empty line may come first.
proc respond {chan} {
    while {[gets $chan line] >= 0 && [string trimright $line \r] eq ""} {}
    set request [string trimright $line \r]
    set headers {connection {} content-length {} transfer-encoding {}}
    while {[gets $chan line] >= 0 && [set line [string trimright $line \r]] ne ""} {
	if {![regexp {^([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(.*?)[ \t]*$} $line -> name value]} {
	    return [reply $chan "400 Bad Request" 0 "bad header line\n"]
	}
	dict lappend headers [string tolower $name] [string tolower $value]
    }
    if {[eof $chan]} {
	return 0    ;# the client went before its request was whole
    }
    if {![regexp {^([A-Z]+) (\S+) HTTP/1\.([01])$} $request -> method target minor]} {
	return [reply $chan "400 Bad Request" 0 "bad request line\n"]
    }
    if {$method ni {GET HEAD}} {
	return [reply $chan "501 Not Implemented" 0 "GET and HEAD only\n"]
    }
    set connection [lmap token [split [join [dict get $headers connection] ,] ,] {
	string trim $token
    }]
    set keep [expr {$minor ? "close" ni $connection : "keep-alive" in $connection}]
    # A request with a body is not for this page: answer, then close
    # rather than read the body.
    if {[dict get $headers transfer-encoding] ne ""
	    || [dict get $headers content-length] ni {"" 0}} {
	set keep 0
    }
    reply $chan "200 OK" $keep "hello from worker [pid]: $target\n" \
	[expr {$method eq "HEAD"}]
}

# Writes a response; returns keep. Content-Length counts the bytes sent:
# the body is encoded first, and the channel is binary.
proc reply {chan status keep body {head 0}} {
    set body [encoding convertto utf-8 $body]
    set date [clock format [clock seconds] -format {%a, %d %b %Y %H:%M:%S GMT} -gmt 1]
    puts -nonewline $chan [join [list "HTTP/1.1 $status" "Date: $date" \
	"Content-Type: text/plain; charset=utf-8" \
	"Content-Length: [string length $body]" \
	"Connection: [expr {$keep ? "keep-alive" : "close"}]" "" ""] \r\n]
    if {!$head} {
	puts -nonewline $chan $body
    }
    return $keep
}

socketserver::prefork -ready 10 -readyafter "\r\n\r\n" {*}$argv serve
