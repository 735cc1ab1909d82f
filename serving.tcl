
	package require Tclx
	package require socketserver
	set port [::socketserver::socket server -myaddr 127.0.0.1 0]
	interp bgerror {} [list apply {{msg opts} {
	    puts "worker [list $msg [dict get $opts -errorcode]]"
	    flush stdout
	    exit 3
	}}]
	flush stdout
	if {[fork] == 0} {
	    ::socketserver::socket client [list apply {{chan args} {
		puts "worker got a connection"
		flush stdout
		close $chan
	    }}]
	    vwait forever
	}
	puts $port
	flush stdout
	gets stdin
	exit 0
    
