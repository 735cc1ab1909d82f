# run.tcl --
#
#	Benchmarks socketserver against Tcl's own servers and a C ceiling,
#	side by side in one run, with wrk opening a new connection per
#	request (-H 'Connection: close'). Prints one markdown table.
#
#	Settings (environment): BENCH_DURATION seconds per row (default 3),
#	BENCH_ROUNDS rounds, interleaved, whose medians are reported
#	(default 3),
#	BENCH_WORKERS worker counts for the overhead scenario (default
#	"2 8 32 64"), BENCH_SCENARIOS (default "handoff overhead blocking
#	cpu uneven supervisor"), BENCH_BASELINE directories (a list) each holding another
#	build of the package (pkgIndex.tcl and library), measured in rows of
#	their own beside this one: to compare a change with what it
#	replaces.
#
#	The handoff scenario measures the hand-off alone: one client, one
#	connection at a time, 8 idle workers, and per thread role the CPU
#	and voluntary context switches per connection
#	(/proc/PID/task/TID/schedstat and status), for this build and each
#	BENCH_BASELINE build.
#
#	The uneven scenario (8 workers, 16 concurrent clients, a blocking
#	1 ms per request but 100 ms for one in ten) compares how each design
#	hands connections to workers: socketserver (first come, first
#	served), the inherited-listener pre-fork, a C server with one
#	SO_REUSEPORT listener per worker (the kernel hashes), and Node's
#	cluster (round-robin push), with p50, p99 and p99.9 latency.
#
#	The supervisor scenario runs the socketserver contender under its
#	supervisor, socketserver::prefork (8 workers), beside the bare one:
#	what supervising costs per connection, for this build and each
#	BENCH_BASELINE build.
#
#	Server CPU per request: the run time in nanoseconds of every thread
#	of every process in the server's process group
#	(/proc/PID/task/TID/schedstat), read just before and just after the
#	load, divided by the requests wrk completed. (/proc/PID/stat counts
#	whole clock ticks per process, which under-reports many workers that
#	each use a little CPU and so flatters multi-process servers.)

set here [file dirname [file normalize [info script]]]
# For ::socketserver::kill, which stops a server's process group without
# kill(1) (procps).
package require socketserver
set duration [expr {[info exists env(BENCH_DURATION)] ? $env(BENCH_DURATION) : 3}]
set rounds [expr {[info exists env(BENCH_ROUNDS)] ? $env(BENCH_ROUNDS) : 3}]
set overheadWorkers [expr {[info exists env(BENCH_WORKERS)] ? $env(BENCH_WORKERS) : "2 8 32 64"}]
set scenarios [expr {[info exists env(BENCH_SCENARIOS)] ? $env(BENCH_SCENARIOS) : "handoff overhead blocking cpu uneven supervisor"}]
set baselines [expr {[info exists env(BENCH_BASELINE)] ? [lmap dir $env(BENCH_BASELINE) {file normalize $dir}] : {}}]

# groupProcesses pgid --
#	A dict from the pid of every process in process group pgid to its
#	/proc/PID/stat fields (after the command name).
proc groupProcesses {pgid} {
    set result {}
    foreach stat [glob -nocomplain /proc/\[0-9\]*/stat] {
	if {[catch {
	    set f [open $stat]
	    set text [read $f]
	    close $f
	}]} {
	    continue
	}
	set fields [string range $text [string last ) $text]+2 end]
	if {[lindex $fields 2] == $pgid} {
	    dict set result [file tail [file dirname $stat]] $fields
	}
    }
    return $result
}

# threadsOfGroup pgid --
#	A dict from "ROLE" to {nanoseconds voluntary-context-switches} summed
#	over the threads of process group pgid, by role: the serving
#	process's main thread ("serving"), its other threads ("accept"), the
#	workers' main threads ("worker") and their other threads ("worker
#	helpers": Tcl 8's notifier thread, socketserver's watcher threads). A
#	process that exits between two readings takes its time with it: the
#	servers here keep theirs for the whole load.
proc threadsOfGroup {pgid} {
    set result {}
    foreach pid [dict keys [groupProcesses $pgid]] {
	foreach task [glob -nocomplain /proc/$pid/task/*] {
	    set tid [file tail $task]
	    if {[catch {
		set f [open $task/schedstat]
		set ns [lindex [read $f] 0]
		close $f
		set f [open $task/status]
		regexp {voluntary_ctxt_switches:\s+(\d+)} [read $f] -> switches
		close $f
	    }]} {
		continue
	    }
	    set role [expr {$pid == $pgid
		? ($tid == $pid ? "serving" : "accept")
		: ($tid == $pid ? "worker" : "worker helpers")}]
	    if {![dict exists $result $role]} {
		dict set result $role {0 0}
	    }
	    lassign [dict get $result $role] n c
	    dict set result $role [list [expr {$n + $ns}] [expr {$c + $switches}]]
	}
    }
    return $result
}

# totalNs threads --
#	The nanoseconds of a threadsOfGroup result, every role together.
proc totalNs {threads} {
    set total 0
    dict for {role figures} $threads {
	incr total [lindex $figures 0]
    }
    return $total
}

# groupAlive pgid --
#	Whether any process of the group is still running (not a zombie).
proc groupAlive {pgid} {
    foreach fields [dict values [groupProcesses $pgid]] {
	if {[lindex $fields 0] ne "Z"} {
	    return 1
	}
    }
    return 0
}

# startServer command --
#	Runs command in a new session (so its pid is its process group) and
#	waits for its "ready PORT" line. Returns {pipe pgid port}.
proc startServer {command} {
    set pipe [open |[list setsid {*}$command 2>@stderr] r]
    set pgid [pid $pipe]
    set timer [after 20000 {set ::ready timeout}]
    fileevent $pipe readable [list apply {{pipe} {
	if {[gets $pipe line] >= 0 || [eof $pipe]} {
	    set ::ready $line
	}
    }} $pipe]
    vwait ::ready
    after cancel $timer
    fileevent $pipe readable {}
    if {![regexp {^ready (\d+)$} $::ready -> port]} {
	stopServer $pipe $pgid
	error "server did not start ($command): $::ready"
    }
    return [list $pipe $pgid $port]
}

# stopServer pipe pgid --
#	Kills the whole process group and waits until none of it is left.
proc stopServer {pipe pgid} {
    catch {::socketserver::kill TERM -$pgid}
    for {set i 0} {$i < 300 && [groupAlive $pgid]} {incr i} {
	after 10
    }
    if {[groupAlive $pgid]} {
	catch {::socketserver::kill KILL -$pgid}
    }
    catch {close $pipe}
}

# toMs text --
#	wrk's latency ("449.00us", "1.2ms", "1.01s") in milliseconds.
proc toMs {text} {
    regexp {^([\d.]+)(us|ms|s)$} $text -> value unit
    expr {$value * [dict get {us 0.001 ms 1.0 s 1000.0} $unit]}
}

# measure label design workers work connections --
#	Starts one server, loads it with wrk, stops it; returns a row dict.
proc measure {scenario design workers work connections} {
    global here duration
    if {$design eq "c"} {
	set command [list [file join $here c_reference] $workers 0 $work]
    } elseif {$design eq "reuseport"} {
	set command [list [file join $here c_reuseport] $workers $work]
    } elseif {$design eq "node"} {
	set probe [socket -server {} -myaddr 127.0.0.1 0]
	set free [lindex [fconfigure $probe -sockname] 2]
	close $probe
	set command [list node [file join $here node_cluster.js] $workers $free $work]
    } elseif {$design eq "rivet"} {
	set rivetDir [file join [expr {[info exists ::env(TMPDIR)] ? $::env(TMPDIR) : "/tmp"}] \
	    socketserver-bench-rivet-[pid]]
	file delete -force $rivetDir
	set command [list [info nameofexecutable] [file join $here rivet.tcl] \
	    $workers $work $rivetDir]
    } elseif {[regexp {^base(\d+)(-supervised)?$} $design -> i supervised]} {
	set command [list env TCLLIBPATH=[lindex $::baselines $i] [info nameofexecutable] \
	    [file join $here tcl_server.tcl] \
	    [expr {$supervised eq "" ? "socketserver" : "supervised"}] $workers 0 $work]
    } else {
	set command [list [info nameofexecutable] [file join $here tcl_server.tcl] \
	    $design $workers 0 $work]
    }
    lassign [startServer $command] pipe pgid port
    # Let forked workers reach their first request before the clock runs.
    after 300
    set threadsBefore [threadsOfGroup $pgid]
    set wrk [exec wrk -t [expr {min(2, $connections)}] -c $connections -d ${duration}s --latency \
	-s [file join $here p999.lua] -H "Connection: close" \
	http://127.0.0.1:$port/]
    set threadsAfter [threadsOfGroup $pgid]
    stopServer $pipe $pgid
    if {[info exists rivetDir]} {
	file delete -force $rivetDir
    }

    regexp {(\d+) requests in} $wrk -> requests
    regexp {Requests/sec:\s+([\d.]+)} $wrk -> rps
    set errors 0
    if {[regexp {Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)} \
	    $wrk -> c r w t]} {
	set errors [expr {$c + $r + $w + $t}]
    }
    if {[regexp {Non-2xx or 3xx responses: (\d+)} $wrk -> bad]} {
	incr errors $bad
    }
    regexp {\n\s+50%\s+(\S+)} $wrk -> p50
    regexp {\n\s+99%\s+(\S+)} $wrk -> p99
    set p999 0
    regexp {p99.9: (\d+)} $wrk -> p999
    set cpu [expr {$requests > 0
	? ([totalNs $threadsAfter] - [totalNs $threadsBefore]) / 1e3 / $requests : 0}]
    puts stderr [format "  %-9s %-12s W=%-3s %8.0f req/s %6.1f us/req" \
	$scenario $design $workers $rps $cpu]
    set row [dict create scenario $scenario design $design workers $workers \
	rps $rps errors $errors cpu $cpu p50 [toMs $p50] p99 [toMs $p99] \
	p999 [expr {$p999 / 1000.0}]]
    # Per thread role: microseconds and voluntary context switches per
    # request.
    foreach role {serving accept worker "worker helpers"} {
	set ns 0
	set switches 0
	if {[dict exists $threadsAfter $role]} {
	    lassign [dict get $threadsAfter $role] ns switches
	    if {[dict exists $threadsBefore $role]} {
		lassign [dict get $threadsBefore $role] ns0 switches0
		set ns [expr {$ns - $ns0}]
		set switches [expr {$switches - $switches0}]
	    }
	}
	dict set row "$role us" [expr {$requests > 0 ? $ns / 1e3 / $requests : 0}]
	dict set row "$role cs" [expr {$requests > 0 ? double($switches) / $requests : 0}]
    }
    return $row
}

set bases {}
foreach dir $baselines {
    lappend bases base[llength $bases]
}
# The pre-fork contender forks with TclX, which Tcl 9 does not have; there,
# socketserver starts its workers with spawn (tcl_server.tcl).
set forks [expr {![catch {package require Tclx}]}]
set contenders [list socketserver {*}$bases {*}[expr {$forks ? "prefork" : ""}] c]
# Apache with mod_rivet (Debian's apache2 and libapache2-mod-rivet), if
# installed.
set rivet [expr {[file executable /usr/sbin/apache2]
	&& [file exists /usr/lib/apache2/modules/mod_rivet.so]}]
if {$rivet} {
    lappend contenders rivet
}
# The rows to measure: {scenario design workers work connections}.
set plan {}
foreach scenario $scenarios {
    switch -- $scenario {
	overhead {
	    lappend plan {overhead single 1 none 8}
	    foreach w $overheadWorkers {
		foreach design $contenders {
		    lappend plan [list overhead $design $w none 8]
		}
	    }
	}
	blocking {
	    lappend plan {blocking single 1 sleep 32}
	    foreach design $contenders {
		lappend plan [list blocking $design 16 sleep 32]
	    }
	}
	cpu {
	    lappend plan {cpu single 1 cpu 8}
	    foreach design $contenders {
		lappend plan [list cpu $design 2 cpu 8]
	    }
	}
	handoff {
	    foreach design [list socketserver {*}$bases] {
		lappend plan [list handoff $design 8 none 1]
	    }
	}
	supervisor {
	    # The same load under socketserver::prefork: what supervising
	    # costs per connection.
	    foreach design [list socketserver supervised {*}$bases \
		    {*}[lmap base $bases {string cat $base -supervised}]] {
		lappend plan [list supervisor $design 8 none 8]
	    }
	}
	uneven {
	    set designs [list socketserver {*}$bases {*}[expr {$forks ? "prefork" : ""}] reuseport]
	    if {$rivet} {
		lappend designs rivet
	    }
	    if {[auto_execok node] ne ""} {
		lappend designs node
	    }
	    foreach design $designs {
		lappend plan [list uneven $design 8 uneven 16]
	    }
	}
    }
}

# Rounds interleave the rows, so that a slow spell of a shared machine
# falls on every row alike; each figure of a row is the median of its
# rounds.
proc median {values} {
    set values [lsort -real $values]
    lindex $values [expr {[llength $values] / 2}]
}
puts stderr "benchmark: $rounds rounds of $duration s per row, scenarios: $scenarios"
set results {}
for {set round 1} {$round <= $rounds} {incr round} {
    puts stderr "round $round"
    foreach item $plan {
	dict lappend results $item [measure {*}$item]
    }
}
set rows {}
dict for {item measured} $results {
    set row [lindex $measured 0]
    foreach key [dict keys $row] {
	if {$key in {scenario design workers}} {
	    continue
	}
	dict set row $key [median [lmap m $measured {dict get $m $key}]]
    }
    lappend rows $row
}

# Ratios for socketserver rows: against the C ceiling with the same
# workers, and against the best Tcl alternative (the single-process server
# or the pre-fork one with the same workers, whichever costs less CPU).
proc find {rows scenario design workers} {
    foreach row $rows {
	if {[dict get $row scenario] eq $scenario && [dict get $row design] eq $design
		&& ($workers eq "*" || [dict get $row workers] == $workers)} {
	    return $row
	}
    }
    return {}
}

set names [list socketserver socketserver supervised "socketserver under socketserver::prefork" single "Tcl socket -server" prefork "Tcl pre-fork, inherited listener" c "C ceiling" rivet "Apache prefork + mod_rivet" reuseport "C, SO_REUSEPORT listener per worker" node "Node cluster (round-robin)"]
foreach base $bases dir $baselines {
    lappend names $base "socketserver ([file tail $dir])" \
	$base-supervised "socketserver::prefork ([file tail $dir])"
}
# rowsOf rows scenarios --
#	The rows of those scenarios.
proc rowsOf {rows scenarios} {
    lmap row $rows {expr {[dict get $row scenario] in $scenarios ? $row : [continue]}}
}
set others [rowsOf $rows {overhead blocking cpu supervisor}]
if {[llength $others]} {
    puts "| scenario | server | W | req/s | errors | CPU µs/req | p50 ms | p99 ms | CPU vs C | CPU vs best Tcl |"
    puts "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
}
foreach row $others {
    dict with row {
	set vsC ""
	set vsTcl ""
	if {$design eq "socketserver" || $design in $bases} {
	    set c [find $rows $scenario c $workers]
	    if {$c ne "" && [dict get $c cpu] > 0} {
		set vsC [format %.2f [expr {$cpu / [dict get $c cpu]}]]
	    }
	    set best {}
	    foreach alt [list [find $rows $scenario single *] [find $rows $scenario prefork $workers]] {
		if {$alt ne "" && ($best eq "" || [dict get $alt cpu] < $best)} {
		    set best [dict get $alt cpu]
		}
	    }
	    if {$best ne "" && $best > 0} {
		set vsTcl [format %.2f [expr {$cpu / $best}]]
	    }
	}
	puts [format "| %s | %s | %s | %.0f | %d | %.0f | %.2f | %.2f | %s | %s |" \
	    $scenario [dict get $names $design] [expr {$design eq "single" ? 1 : $workers}] \
	    $rps $errors $cpu $p50 $p99 $vsC $vsTcl]
    }
}

# The uneven scenario: latency is what it is about.
if {[llength [rowsOf $rows uneven]]} {
    puts ""
    puts "| uneven work, W=8, 16 clients | req/s | errors | p50 ms | p99 ms | p99.9 ms |"
    puts "|---|---:|---:|---:|---:|---:|"
    foreach row [rowsOf $rows uneven] {
	dict with row {
	    puts [format "| %s | %.0f | %d | %.2f | %.2f | %.2f |" \
		[dict get $names $design] $rps $errors $p50 $p99 $p999]
	}
    }
}

# The hand-off alone: one connection at a time to 8 idle workers, by
# thread.
if {[llength [rowsOf $rows handoff]]} {
    puts ""
    puts "| one hand-off to an idle worker (W=8, 1 client) | conn/s | CPU µs/conn | accept thread µs / switches | worker's main thread µs / switches | worker's other threads µs / switches |"
    puts "|---|---:|---:|---:|---:|---:|"
    foreach row [rowsOf $rows handoff] {
	puts [format "| %s | %.0f | %.1f | %.1f / %.2f | %.1f / %.2f | %.1f / %.2f |" \
	    [dict get $names [dict get $row design]] [dict get $row rps] [dict get $row cpu] \
	    [dict get $row "accept us"] [dict get $row "accept cs"] \
	    [dict get $row "worker us"] [dict get $row "worker cs"] \
	    [dict get $row "worker helpers us"] [dict get $row "worker helpers cs"]]
    }
}

# The targets the issues set, each with its figure from this run.
proc valueOf {rows scenario design workers key} {
    set row [find $rows $scenario $design $workers]
    expr {$row eq "" ? "" : [dict get $row $key]}
}
set lines {}
foreach {label a b op limit} [list \
	"overhead W=2: CPU, socketserver / Tcl socket -server" \
	    [valueOf $rows overhead socketserver 2 cpu] [valueOf $rows overhead single * cpu] <= 1.0 \
	"overhead W=8: CPU, socketserver / pre-fork" \
	    [valueOf $rows overhead socketserver 8 cpu] [valueOf $rows overhead prefork 8 cpu] <= 1.1 \
	"overhead W=8: conn/s, socketserver / pre-fork" \
	    [valueOf $rows overhead socketserver 8 rps] [valueOf $rows overhead prefork 8 rps] >= 0.9 \
	"overhead W=32: CPU, socketserver / Tcl socket -server" \
	    [valueOf $rows overhead socketserver 32 cpu] [valueOf $rows overhead single * cpu] <= 1.6 \
	"overhead W=32: CPU, socketserver / pre-fork" \
	    [valueOf $rows overhead socketserver 32 cpu] [valueOf $rows overhead prefork 32 cpu] <= 0.9 \
	"overhead W=64: CPU, socketserver / pre-fork" \
	    [valueOf $rows overhead socketserver 64 cpu] [valueOf $rows overhead prefork 64 cpu] <= 0.9 \
	"overhead W=32: conn/s, socketserver / Tcl socket -server" \
	    [valueOf $rows overhead socketserver 32 rps] [valueOf $rows overhead single * rps] >= 0.8 \
	"overhead W=32: conn/s, socketserver / pre-fork" \
	    [valueOf $rows overhead socketserver 32 rps] [valueOf $rows overhead prefork 32 rps] >= 1.0 \
	"overhead: CPU, socketserver W=64 / W=8" \
	    [valueOf $rows overhead socketserver 64 cpu] [valueOf $rows overhead socketserver 8 cpu] <= 1.15 \
	"blocking W=16: conn/s / the ideal 800" \
	    [valueOf $rows blocking socketserver 16 rps] 800.0 >= 0.98 \
	"blocking W=16: CPU, socketserver / C ceiling" \
	    [valueOf $rows blocking socketserver 16 cpu] [valueOf $rows blocking c 16 cpu] <= 1.4] {
    if {$a ne "" && $b ne "" && $b > 0} {
	set ratio [expr {double($a) / $b}]
	set met [expr [list $ratio $op $limit]]
	lappend lines [format "- %s: %.2f (target %s %s: %s)" $label $ratio $op $limit \
	    [expr {$met ? "met" : "missed"}]]
    }
}
if {[llength $lines]} {
    puts ""
    puts [join $lines \n]
}
