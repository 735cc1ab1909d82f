# rss.tcl --
#
#	Sourced by the scripts that measure memory growth in a process of
#	their own (interprss.tcl, rssloop.tcl).

# rss --
#	This process's resident set, in KB (Linux's /proc/self/status).
proc rss {} {
    set f [open /proc/self/status]
    set status [read $f]
    close $f
    regexp {VmRSS:\s+(\d+)} $status -> kb
    return $kb
}
