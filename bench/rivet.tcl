# rivet.tcl WORKERS WORK DIR --
#
#	Apache with mod_rivet, the multi-process Tcl web server Tcl users run
#	instead: the prefork MPM with exactly WORKERS children, KeepAlive
#	off, no access log, everything in the new directory DIR (which the
#	caller removes).
#	The page does the same work and sends the same body as
#	tcl_server.tcl's handler (see there for WORK). Apache runs in the
#	foreground, a child of this script, so it and its children stay in
#	the benchmark's process group. Prints "ready PORT" once Apache
#	answers; the benchmark stops it by killing the process group.

lassign $argv workers work dir

file mkdir $dir/www
file attributes $dir -permissions 0755
file attributes $dir/www -permissions 0755

set probe [socket -server {} -myaddr 127.0.0.1 0]
set port [lindex [fconfigure $probe -sockname] 2]
close $probe

set body {hello\n}
set code [dict get {
    none {}
    sleep {after 20}
    cpu {set end [expr {[clock microseconds] + 2000}]
	while {[clock microseconds] < $end} {}}
    uneven {if {![info exists ::seeded]} {expr {srand([pid])}; set ::seeded 1}
	after [expr {rand() < 0.1 ? 100 : 1}]}
} $work]
set f [open $dir/www/index.rvt w]
puts -nonewline $f "<?\n$code\nputs -nonewline \"$body\"\n?>"
close $f

set modules /usr/lib/apache2/modules
set f [open $dir/httpd.conf w]
puts $f [string map [list @DIR@ $dir @PORT@ $port @W@ $workers @MOD@ $modules] {
LoadModule mpm_prefork_module @MOD@/mod_mpm_prefork.so
LoadModule authz_core_module @MOD@/mod_authz_core.so
LoadModule mime_module @MOD@/mod_mime.so
LoadModule dir_module @MOD@/mod_dir.so
LoadModule rivet_module @MOD@/mod_rivet.so
ServerName localhost
TypesConfig /dev/null
Listen 127.0.0.1:@PORT@
PidFile @DIR@/httpd.pid
ErrorLog @DIR@/error.log
LogLevel warn
Mutex file:@DIR@ default
DefaultRuntimeDir @DIR@
User www-data
Group www-data
StartServers @W@
MinSpareServers @W@
MaxSpareServers @W@
ServerLimit @W@
MaxRequestWorkers @W@
MaxConnectionsPerChild 0
KeepAlive Off
DocumentRoot @DIR@/www
DirectoryIndex index.rvt
<Directory @DIR@/www>
    Require all granted
</Directory>
AddType application/x-httpd-rivet .rvt
}]
close $f

set apache [open |[list /usr/sbin/apache2 -f $dir/httpd.conf -DFOREGROUND 2>@stderr] r]
for {set i 0} {$i < 200} {incr i} {
    if {![catch {socket 127.0.0.1 $port} chan]} {
	close $chan
	break
    }
    after 50
}
# Every child up before the clock runs.
proc children {pid} {
    if {[catch {exec pgrep -P $pid} pids]} {
	return 0
    }
    llength $pids
}
while {[children [pid $apache]] < $workers && $i < 400} {
    incr i
    after 50
}
puts "ready $port"
flush stdout
vwait forever
