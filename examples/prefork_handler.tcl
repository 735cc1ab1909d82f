# prefork_handler.tcl --
#
#	The handler that examples/prefork.tcl loads into each worker: it
#	answers one line with the worker's pid. Edit it and send the
#	supervisor SIGHUP: the new workers run the new code.

proc handle {chan addr port} {
    fconfigure $chan -buffering line -translation {auto lf}
    # A health check (HAProxy's "check") connects and goes: nothing to do.
    if {[gets $chan line] >= 0} {
	puts $chan "[pid]: $line"
    }
}
