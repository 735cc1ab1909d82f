
	package require socketserver
	set a [::socketserver::socket server -myaddr 127.0.0.1 0]
	set b [::socketserver::socket server -myaddr 127.0.0.1 0]
	::socketserver::socket client -port $b {apply {{c args} {close $c}}}
	set chan [socket 127.0.0.1 $a]
	puts exiting
	exit 0
    
