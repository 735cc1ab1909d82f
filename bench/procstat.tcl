# procstat.tcl --
#
#	Sourced by run.tcl and rivet.tcl, which find processes without
#	procps (ps, pgrep): every process's /proc/PID/stat.

# processStats --
#	A dict from the pid of every process to its /proc/PID/stat fields
#	after the command name (the parent's pid is field 1, the process
#	group field 2). A process gone while this reads is left out.
proc processStats {} {
    set result {}
    foreach stat [glob -nocomplain /proc/\[0-9\]*/stat] {
	if {[catch {
	    set f [open $stat]
	    set text [read $f]
	    close $f
	}]} {
	    continue
	}
	dict set result [file tail [file dirname $stat]] \
	    [string range $text [string last ) $text]+2 end]
    }
    return $result
}
