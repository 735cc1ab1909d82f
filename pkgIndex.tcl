# Tcl package index for socketserver: the same file serves the checkout
# (TCLLIBPATH pointing at it, after 'make') and the installed copy. A build
# for Tcl 9 is named with Tcl 9's "tcl9" prefix, so builds for both can sit
# here ('make TCLSH=tclsh8.6 install' and 'make TCLSH=tclsh9.0 install').
# A directory without the build for the Tcl that asks leaves the package to
# another directory on auto_path that has it (Tcl reads the first directory
# last); if none has, 'package require' says which build is missing.
apply {{dir} {
    set lib lib[expr {[package vsatisfies [package provide Tcl] 9-]
	? "tcl9" : ""}]socketserver2.0[info sharedlibextension]
    if {[file exists [file join $dir $lib]]} {
	set load [list load [file join $dir $lib] Socketserver]
    } elseif {[package ifneeded socketserver 2.0] eq ""} {
	set builds [glob -nocomplain -tails -directory $dir lib*socketserver2.0*]
	set load [list error "socketserver 2.0 in $dir is not built for Tcl\
	    [info tclversion]: $lib is missing (found: [expr {[llength $builds]
	    ? [join $builds {, }] : "none"}]); build and install it from the\
	    source with: make TCLSH=tclsh[info tclversion] install" {} \
	    [list SOCKETSERVER NOBUILD [info tclversion]]]
    } else {
	return
    }
    package ifneeded socketserver 2.0 $load
    package ifneeded socketserver::prefork 2.0 \
	[list source [file join $dir prefork.tcl]]
}} $dir
