# Tcl package index for socketserver: the same file serves the checkout
# (TCLLIBPATH pointing at it, after 'make') and the installed copy.
package ifneeded socketserver 2.0 [list load [file join $dir \
	libsocketserver2.0[info sharedlibextension]] Socketserver]
