# Tcl package index for socketserver: the same file serves the checkout
# (TCLLIBPATH pointing at it, after 'make') and the installed copy. A build
# for Tcl 9 is named with Tcl 9's "tcl9" prefix, so both can sit here.
package ifneeded socketserver 2.0 [list apply {{dir} {
    set prefix [expr {[package vsatisfies [package provide Tcl] 9-] ? "tcl9" : ""}]
    load [file join $dir lib${prefix}socketserver2.0[info sharedlibextension]] \
	Socketserver
}} $dir]
package ifneeded socketserver::prefork 2.0 \
    [list source [file join $dir prefork.tcl]]
