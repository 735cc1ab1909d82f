# all.tcl --
#
#	Runs every *.test file in this directory, each in its own tclsh,
#	then prints "N passed, N failed, N skipped" and exits non-zero if any
#	test failed or any test file died.
#
#	Usage: TCLLIBPATH=<checkout> tclsh tests/all.tcl ?tcltest options?

package require tcltest 2.5
namespace import ::tcltest::*

configure -testdir [file dirname [file normalize [info script]]] \
	-tmpdir [file join [file dirname [file normalize [info script]]] tmp]
file mkdir [temporaryDirectory]
configure {*}$argv

# runAllTests prints tcltest's own totals through cleanupTests, then resets
# them: catch them on the way.
rename ::tcltest::cleanupTests ::tcltest::CleanupTestsOriginal
proc ::tcltest::cleanupTests {{calledFromAllFile 0}} {
    if {$calledFromAllFile} {
	set ::totals [array get ::tcltest::numTests]
    }
    uplevel 1 [list ::tcltest::CleanupTestsOriginal $calledFromAllFile]
}

set failed [runAllTests]
array set counts {Passed 0 Failed 0 Skipped 0}
array set counts $totals
if {$failed && $counts(Failed) == 0} {
    # A test file died before reporting: count it as one failure.
    set counts(Failed) 1
}
file delete -force [temporaryDirectory]
puts "\n$counts(Passed) passed, $counts(Failed) failed, $counts(Skipped) skipped"
exit [expr {$failed || $counts(Failed) > 0}]
