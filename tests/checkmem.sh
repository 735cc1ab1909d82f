#!/bin/sh
# checkmem.sh memcheck|asan LIBDIR --
#
#	Runs the test cases that stay in one process (SOCKETSERVER_SINGLE_
#	PROCESS=1: no forked workers; not the build tests, nor the prefork
#	supervisor's, whose timings and HAProxy a checker would only slow
#	down: its C paths are spawn.test's and signal.test's) with the package
#	from LIBDIR under valgrind memcheck or with the AddressSanitizer and
#	UBSan runtimes preloaded, prints one figure line and fails unless the
#	tests pass and there is nothing to report.
#
#	memcheck: errors and bytes "definitely lost" (Tcl's own allocator
#	keeps blocks that valgrind calls "possibly lost" or "still
#	reachable": those are not counted). asan: every report written.
#	Leak detection is left to memcheck (Tcl does not free everything at
#	exit, by design).

set -u
mode=$1
libdir=$2
tclsh=${TCLSH:-tclsh}
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
export SOCKETSERVER_SINGLE_PROCESS=1 TCLLIBPATH="$libdir"
cd "$(dirname "$0")/.."

case $mode in
memcheck)
    command -v valgrind >/dev/null || { echo "memcheck: valgrind is not installed" >&2; exit 1; }
    valgrind --quiet --trace-children=yes --leak-check=full \
	--log-file="$logs/vg.%p" "$tclsh" tests/all.tcl -notfile 'build.test prefork.test' \
	>"$logs/out" 2>&1
    status=$?
    errors=$(cat "$logs"/vg.* 2>/dev/null | sed -n 's/.*ERROR SUMMARY: \([0-9]*\) errors.*/\1/p' | awk '{s+=$1} END {print s+0}')
    lost=$(cat "$logs"/vg.* 2>/dev/null | sed -n 's/.*definitely lost: \([0-9,]*\) bytes.*/\1/p' | tr -d , | awk '{s+=$1} END {print s+0}')
    processes=$(ls "$logs" | grep -c '^vg\.')
    tail -n 1 "$logs/out"
    echo "memcheck: $processes processes, $errors errors, $lost bytes definitely lost"
    if [ "$errors" != 0 ] || [ "$lost" != 0 ]; then
	cat "$logs"/vg.*
	exit 1
    fi
    ;;
asan)
    cc=${CC:-cc}
    preload="$($cc -print-file-name=libasan.so) $($cc -print-file-name=libubsan.so)"
    LD_PRELOAD="$preload" \
    ASAN_OPTIONS="detect_leaks=0:log_path=$logs/asan" \
    UBSAN_OPTIONS="print_stacktrace=1:log_path=$logs/ubsan" \
	"$tclsh" tests/all.tcl -notfile 'build.test prefork.test' >"$logs/out" 2>&1
    status=$?
    reports=$(ls "$logs" | grep -c -e '^asan' -e '^ubsan')
    tail -n 1 "$logs/out"
    echo "asan: $reports reports (AddressSanitizer, UBSan)"
    if [ "$reports" != 0 ]; then
	cat "$logs"/asan* "$logs"/ubsan* 2>/dev/null
	exit 1
    fi
    ;;
*)
    echo "usage: checkmem.sh memcheck|asan LIBDIR" >&2
    exit 2
    ;;
esac
if [ "$status" != 0 ]; then
    cat "$logs/out"
    echo "$mode: the tests failed" >&2
    exit 1
fi
