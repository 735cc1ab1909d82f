# rivet.tcl WORKERS WORK DIR ?HTTP? --
#
#	Apache with mod_rivet, the multi-process Tcl web server Tcl users run
#	instead: the prefork MPM with exactly WORKERS children, no access
#	log, everything in the new directory DIR (which the caller removes).
#	HTTP is oneshot (the default: KeepAlive Off) or keepalive (KeepAlive
#	On, MaxKeepAliveRequests 0, that is unlimited, and the 5 s bound of
#	tcl_server.tcl's keepalive handlers on every wait for a client, as
#	KeepAliveTimeout 5 and Timeout 5: a child holds a connection, and
#	serves no other, until then).
#	The page does the same work and sends the same body as
#	tcl_server.tcl's handler (see there for WORK). Apache runs in the
#	foreground, a child of this script, so it and its children stay in
#	the benchmark's process group. Prints "ready PORT" once Apache
#	answers; the benchmark stops it by killing the process group.

source [file join [file dirname [file normalize [info script]]] procstat.tcl]
lassign [concat $argv oneshot] workers work dir http

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
set keepalive [dict get {
    oneshot {KeepAlive Off}
    keepalive {KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 5
Timeout 5}
} $http]
set f [open $dir/httpd.conf w]
puts $f [string map [list @DIR@ $dir @PORT@ $port @W@ $workers @MOD@ $modules \
	@KEEPALIVE@ $keepalive] {
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
@KEEPALIVE@
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

# children pid --
#	How many processes have pid as their parent (from /proc/PID/stat).
proc children {pid} {
    set n 0
    dict for {child fields} [processStats] {
	if {[lindex $fields 1] == $pid} {
	    incr n
	}
    }
    return $n
}

# Every child up before the clock runs.
while {[children [pid $apache]] < $workers && $i < 400} {
    incr i
    after 50
}
puts "ready $port"
flush stdout
vwait forever
