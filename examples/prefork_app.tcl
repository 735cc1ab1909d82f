#!/usr/bin/env tclsh
# prefork_app.tcl ?option value ...? --
#
#	A small application run by the socketserver::prefork supervisor: it
#	answers one line per connection with the worker's pid. Try:
#
#	    tclsh examples/prefork_app.tcl -port 8080 -workers 8
#	    tclsh examples/prefork_app.tcl -help
#
#	kill -HUP <supervisor> after editing this file reloads it; kill -TERM
#	stops it; see the README's "Using it in production".

package require socketserver::prefork

# One connection, blocking I/O; the channel is closed when this returns.
proc handle {chan addr port} {
    fconfigure $chan -buffering line -translation {auto lf}
    # A health check (HAProxy's "check") connects and goes: nothing to do.
    if {[gets $chan line] >= 0} {
	puts $chan "[pid]: $line"
    }
}

socketserver::prefork {*}$argv handle
