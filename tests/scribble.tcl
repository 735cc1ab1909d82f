# scribble.tcl ?hostile|good? --
#
#	Run by board.test as a serving process of its own (what it checks
#	could crash the process that serves). It serves a port with
#	-readyafter and spawns a worker that answers ("good"), then a
#	hostile worker that writes over the whole scoreboard, which it
#	reaches as every worker can (its descriptor, reopened through
#	/proc/self/fd): slots that name no process (pid -1, pid 0), a count
#	out of range, an address of no family, and 0xff bytes everywhere
#	else, trailer included (its -readyafter mark's length too). Then
#	prints one list: the workers 'info' lists that no receiver could
#	have written (pid not above 0, unknown state, count or time out of
#	range, peer not an address and a port), and what a client whose
#	request is whole got.
#
#	The workers: "good" asks, prints "ready", and answers each
#	connection's first line with "good LINE"; "hostile" writes over the
#	board given as its first argument (the serving process's pid),
#	prints "done" and waits to be killed.

package require socketserver

set role [lindex $argv 0]
if {$role eq "good"} {
    proc serve {chan addr port} {
	fconfigure $chan -translation lf -buffering line
	puts $chan "good [gets $chan]"
	close $chan
	::socketserver::socket client serve
    }
    ::socketserver::socket client serve
    puts ready
    flush stdout
    vwait forever
}
if {$role eq "hostile"} {
    set server [lindex $argv 1]
    foreach link [glob /proc/self/fd/*] {
	if {![catch {file readlink $link} target]
		&& [string match *socketserver-board* $target]} {
	    set path $link
	}
    }
    set board [open $path r+]
    fconfigure $board -translation binary
    puts -nonewline $board [string repeat \xff [file size $path]]
    # A slot: asker (2 x 32 bits, pid high), seq, state, since, served,
    # family, port, address, then up to the end of its 64 bytes.
    proc slot {index pid low state served family} {
	seek $::board [expr {64 * $index}]
	puts -nonewline $::board [binary format iiiiwwssa16x12 \
		$low $pid 0 $state 0 $served $family 80 \
		[binary format c4 {1 2 3 4}]]
    }
    slot 0 -1 1 2 5 2
    slot 1 0 1 2 5 2
    slot 2 $server 7 99 5 2
    slot 3 $server 8 2 -1 2
    slot 4 $server 9 2 5 -1
    close $board
    puts done
    flush stdout
    vwait forever
}

set port [::socketserver::socket server -ready 10 -readyafter "\n\n" \
	-myaddr 127.0.0.1 0]

# The workers die with this process: board.test kills it once it has
# read its line, maybe before it has killed them itself.
proc spawnWorker {args} {
    set chan [::socketserver::socket spawn -parentdeath KILL \
	    [info nameofexecutable] [info script] {*}$args]
    if {[gets $chan line] < 0} {
	error "the worker did not start"
    }
    return $chan
}

proc insane {port} {
    lmap worker [dict get [::socketserver::socket info $port] workers] {
	if {[dict get $worker pid] > 0
		&& [dict get $worker state] in {waiting serving idle exited}
		&& [string is entier -strict [dict get $worker served]]
		&& [dict get $worker served] >= 0
		&& [dict get $worker for] >= 0
		&& (![dict exists $worker peer]
		    || [llength [dict get $worker peer]] == 2)} {
	    continue
	}
	set worker
    }
}

set good [spawnWorker good]
set hostile [spawnWorker hostile [pid]]
set insane [insane $port]
lappend insane {*}[insane $port]

set client [socket 127.0.0.1 $port]
fconfigure $client -translation lf -buffering line
puts $client "GET\n"
set got eof
after 120000 {set got timeout}
fileevent $client readable {
    if {[gets $client line] >= 0} {
	set got [list line $line]
    } else {
	set got eof
    }
}
vwait got
puts [list $insane $got]
foreach chan [list $good $hostile] {
    ::socketserver::kill KILL [pid $chan]
    catch {close $chan}
}
