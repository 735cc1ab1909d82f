# Makefile for socketserver, a pre-forked TCP server extension for Tcl.
#
#   make              build libsocketserver2.0.so (stubs-enabled)
#   make test         run tests/all.tcl against the built library
#   make stress       load, fault and bad-input scenarios (tests/stress)
#   make memcheck     the single-process tests under valgrind memcheck
#   make asan         the same with AddressSanitizer and UBSan
#   make bench        benchmarks against Tcl's own servers and a C ceiling
#   make install      install into a directory on tclsh's auto_path
#   make uninstall    remove what 'make install' put there
#   make clean        remove build products
#
# Overridable: PKG_CONFIG, TCLSH, CC, CFLAGS, EXTRA_CFLAGS (CI passes
# -Werror), PREFIX, TCL_LIBDIR (the auto_path directory to install under),
# DESTDIR.

PACKAGE    = socketserver
VERSION    = 2.0
LIB        = lib$(PACKAGE)$(VERSION).so

PKG_CONFIG ?= pkg-config
TCLSH      ?= tclsh
CC         ?= cc
CFLAGS     ?= -O2 -g
PREFIX     ?= /usr/local

TCL_CFLAGS := $(shell $(PKG_CONFIG) --cflags tcl)
# Debian's 'pkg-config --libs tcl' also names -ltcl8.6: link the stub
# library only, so the extension loads into any Tcl 8.6 or later.
TCL_STUB   := $(filter -L% -ltclstub%,$(shell $(PKG_CONFIG) --libs tcl))

ALL_CFLAGS = $(CFLAGS) $(EXTRA_CFLAGS) -Wall -Wextra -fPIC -pthread \
             -DUSE_TCL_STUBS $(TCL_CFLAGS)

# The first auto_path directory under PREFIX (on Debian /usr/local/lib/tcltk),
# else the directory above Tcl's own library.
TCL_LIBDIR ?= $(shell echo 'foreach d $$auto_path {if {[string match $(PREFIX)/* $$d]} {puts $$d; exit}}; puts [file dirname [info library]]' | $(TCLSH))
INSTALL_DIR = $(DESTDIR)$(TCL_LIBDIR)/$(PACKAGE)$(VERSION)

.PHONY: all test stress memcheck asan bench install uninstall clean

all: $(LIB)

$(LIB): socketserver.c ancillary.h
	$(CC) $(ALL_CFLAGS) -shared -o $@ socketserver.c $(TCL_STUB) $(LDFLAGS)

test: $(LIB)
	TCLLIBPATH=$(CURDIR) $(TCLSH) tests/all.tcl $(TESTFLAGS)

stress: $(LIB) tests/stress/libinject.so
	TCLLIBPATH=$(CURDIR) $(TCLSH) tests/all.tcl -testdir $(CURDIR)/tests/stress $(TESTFLAGS)

# A test helper that sends what no well-behaved process sends.
tests/stress/libinject.so: tests/stress/inject.c
	$(CC) $(ALL_CFLAGS) -shared -o $@ tests/stress/inject.c $(TCL_STUB) $(LDFLAGS)

memcheck: $(LIB)
	TCLSH=$(TCLSH) sh tests/checkmem.sh memcheck $(CURDIR)

# The extension built again with sanitizers, into tests/asan/.
asan: socketserver.c ancillary.h
	mkdir -p tests/asan
	$(CC) $(ALL_CFLAGS) -O1 -fno-omit-frame-pointer \
	    -fsanitize=address,undefined -shared -o tests/asan/$(LIB) \
	    socketserver.c $(TCL_STUB) $(LDFLAGS)
	cp pkgIndex.tcl tests/asan/
	TCLSH=$(TCLSH) CC=$(CC) sh tests/checkmem.sh asan $(CURDIR)/tests/asan

# Side-by-side benchmarks (needs wrk): see bench/run.tcl for the settings.
bench: $(LIB) bench/c_reference
	TCLLIBPATH=$(CURDIR) $(TCLSH) bench/run.tcl

bench/c_reference: bench/c_reference.c ancillary.h
	$(CC) $(CFLAGS) $(EXTRA_CFLAGS) -Wall -Wextra -o $@ bench/c_reference.c

install: $(LIB)
	@test -n "$(TCL_LIBDIR)" || { echo "can't tell where to install: set TCL_LIBDIR" >&2; exit 1; }
	install -d $(INSTALL_DIR)
	install -m 755 $(LIB) $(INSTALL_DIR)/
	install -m 644 pkgIndex.tcl $(INSTALL_DIR)/

uninstall:
	rm -f $(INSTALL_DIR)/$(LIB) $(INSTALL_DIR)/pkgIndex.tcl
	-rmdir $(INSTALL_DIR)

clean:
	rm -f $(LIB) *.o bench/c_reference tests/stress/libinject.so
	rm -rf tests/asan
