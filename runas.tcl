# runas.tcl USER GROUP SCRIPT ?ARG ...? --
#
#	How socketserver::prefork starts a worker as another user (-user,
#	-group): this script, run by the supervisor's tclsh as root, loads
#	the package (which adopts the queues handed over by 'spawn'), becomes
#	USER for good, and only then runs the application's SCRIPT with its
#	arguments, as tclsh would have. No application code runs as root.
#
# Copyright (c) 2026 The socketserver authors.
# See the file "LICENSE" for information on usage and redistribution.

package require socketserver 2.0
lassign $argv user group script
if {[catch {::socketserver::runas $user $group} msg]} {
    puts stderr "couldn't start the worker as user $user: $msg"
    exit 1
}
set argv0 $script
set argv [lrange $argv 3 end]
set argc [llength $argv]
info script $script
source $script
