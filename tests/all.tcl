# all.tcl --
#
#	Runs every *.test file in this directory, each in its own tclsh and
#	temporary directory, up to JOBS at a time (tests wait on processes
#	and sockets more than on the CPU), then prints "N passed, N failed,
#	N skipped" and exits non-zero if any test failed or any test file
#	died.
#
#	Usage: TCLLIBPATH=<checkout> tclsh tests/all.tcl ?tcltest options?
#	(SOCKETSERVER_TEST_JOBS sets JOBS; default 3.)

package require tcltest 2.5
namespace import ::tcltest::*

set testsDir [file dirname [file normalize [info script]]]
configure -testdir $testsDir -tmpdir [file join $testsDir tmp]
configure {*}$argv
set jobs 3
if {[info exists env(SOCKETSERVER_TEST_JOBS)]} {
    set jobs $env(SOCKETSERVER_TEST_JOBS)
}

# The options each test file gets: ours, but for the temporary directory,
# one per file so that files running at once never share one, and the
# output file, which this process reads.
set childArgs {}
foreach option [::tcltest::Configure] {
    if {$option in {-outfile -tmpdir}} {
	continue
    }
    set value [::tcltest::Configure $option]
    if {$value ne $::tcltest::DefaultValue($option)} {
	lappend childArgs $option $value
    }
}

array set counts {Passed 0 Failed 0 Skipped 0}
set died {}
set failedFiles {}
set queue [lsort [::tcltest::GetMatchingFiles]]
set running 0

# startNext --
#	Starts the next test file, if any, in its own tclsh.
proc startNext {} {
    if {[llength $::queue] == 0} {
	return
    }
    set ::queue [lassign $::queue file]
    set tail [file tail $file]
    set tmp [file join [temporaryDirectory] [file rootname $tail]]
    file mkdir $tmp
    set chan [open |[list [interpreter] $file {*}$::childArgs -tmpdir $tmp 2>@1] r]
    fconfigure $chan -blocking 0
    set ::output($chan) {}
    fileevent $chan readable [list collect $chan $tail]
    incr ::running
}

# collect chan tail --
#	Keeps a test file's output; when it ends, prints it and counts its
#	summary line (the last "TAIL:<tab>Total..." line it printed).
proc collect {chan tail} {
    append ::output($chan) [read $chan]
    if {![eof $chan]} {
	return
    }
    fconfigure $chan -blocking 1
    catch {close $chan}
    set summary {}
    set printed {}
    foreach line [split $::output($chan) \n] {
	if {[regexp "^[string map {. \\.} $tail]:\tTotal\t(\\d+)\tPassed\t(\\d+)\tSkipped\t(\\d+)\tFailed\t(\\d+)" \
		$line -> total passed skipped failed]} {
	    set summary [list $passed $skipped $failed]
	} else {
	    lappend printed $line
	}
    }
    puts $tail
    puts [string trimright [join $printed \n]]
    if {$summary eq ""} {
	puts "Test file error: $tail ended without a summary"
	lappend ::died $tail
    } else {
	lassign $summary passed skipped failed
	incr ::counts(Passed) $passed
	incr ::counts(Skipped) $skipped
	incr ::counts(Failed) $failed
	if {$failed > 0} {
	    lappend ::failedFiles $tail
	}
	puts "$tail:\tPassed\t$passed\tSkipped\t$skipped\tFailed\t$failed"
    }
    flush stdout
    unset ::output($chan)
    incr ::running -1
    startNext
    if {$::running == 0} {
	set ::done 1
    }
}

file mkdir [temporaryDirectory]
puts "Tests running in interp:  [interpreter], $jobs test files at a time"
for {set i 0} {$i < $jobs} {incr i} {
    startNext
}
if {$running > 0} {
    vwait done
}
file delete -force [temporaryDirectory]
# A test file that died before reporting counts as one failure.
incr counts(Failed) [llength $died]
if {[llength $failedFiles] + [llength $died] > 0} {
    puts "\nFiles with failing tests: [join [concat $failedFiles $died] {, }]"
}
puts "\n$counts(Passed) passed, $counts(Failed) failed, $counts(Skipped) skipped"
exit [expr {[llength $died] > 0 || $counts(Failed) > 0}]
