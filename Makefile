# Makefile for socketserver, a pre-forked TCP server extension for Tcl.
#
#   make              build libsocketserver2.0.so (stubs-enabled) for the
#                     Tcl that TCLSH runs; for Tcl 9, libtcl9socketserver2.0.so
#                     (make TCLSH=tclsh9.0, or plain make where tclsh9.0 is
#                     the first tclsh whose Tcl has its headers, as with
#                     Debian 13's tcl9.0-dev); it says which Tcl
#   make PORTABLE=1   the same library built with POSIX.1-2024's interfaces
#                     alone, none of Linux's own (epoll, eventfd, memfd,
#                     prctl, SO_PEERCRED): what other systems build. Every
#                     target takes it (make PORTABLE=1 test)
#   make test         run tests/all.tcl against the built library
#   make stress       load, fault and bad-input scenarios (tests/stress)
#   make memcheck     the single-process tests under valgrind memcheck
#   make asan         the same with AddressSanitizer and UBSan
#   make bench        benchmarks against Tcl's own servers and a C ceiling
#   make install      install into a directory on tclsh's auto_path, and
#                     the manual page into $(MANDIR)/mann
#   make uninstall    remove what 'make install' recorded that it put there
#   make dist         socketserver-2.0.tar.gz, to build, test and install from
#   make clean        remove build products
#
# Overridable: PKG_CONFIG, TCL_CONFIG (a tclConfig.sh to take Tcl's
# flags from), TCLSH (default: the first of tclsh, tclsh9.0, tclsh9.1 and
# tclsh8.6 on PATH whose Tcl has its headers installed), CC, CFLAGS,
# EXTRA_CFLAGS (CI passes -Werror), PREFIX, TCL_LIBDIR (the auto_path
# directory to install under), MANDIR, DESTDIR, PORTABLE.

PACKAGE    = socketserver
VERSION    = 2.0

PKG_CONFIG ?= pkg-config
CC         ?= cc
CFLAGS     ?= -O2 -g
PREFIX     ?= /usr/local

# A Tcl script that prints the tclConfig.sh of the Tcl that runs it: one
# whose TCL_VERSION is its own (Debian's /usr/lib/tclConfig.sh is the
# default Tcl's, whichever Tcl asks), looked for in the multiarch directory
# first, then next to its library and on its package path.
FIND_TCL_CONFIG = set v [info tclversion]; \
	foreach d [list {*}[glob -nocomplain /usr/lib/*-*/tcl$$v /usr/lib64/tcl$$v] [info library] [file dirname [info library]] {*}$$tcl_pkgPath /usr/lib /usr/lib64 /usr/local/lib] { \
	    foreach f [list $$d/tclConfig.sh $$d/tcl$$v/tclConfig.sh] { \
		if {![catch {open $$f} c]} { \
		    set text [read $$c]; close $$c; \
		    if {[string match "*TCL_VERSION=?$$v?*" $$text]} {puts $$f; exit} } } }

# A shell command that succeeds if the headers of the Tcl that tclsh $$t
# runs are installed: tcl.h where pkg-config's tclX.Y or its tclConfig.sh
# says.
HAS_TCL_HEADERS = v=$$(echo 'puts [info tclversion]' | $$t 2>/dev/null) && [ -n "$$v" ] && \
	if $(PKG_CONFIG) --exists tcl$$v 2>/dev/null; then inc=$$($(PKG_CONFIG) --cflags-only-I tcl$$v); \
	else c=$$(echo '$(FIND_TCL_CONFIG)' | $$t 2>/dev/null) && [ -n "$$c" ] && \
	    inc=$$(. "$$c" && echo "$$TCL_INCLUDE_SPEC"); fi && \
	for i in $$inc; do [ -f "$${i\#-I}/tcl.h" ] && exit 0; done; exit 1

# Unless TCLSH is set, the first of these on PATH whose Tcl's headers are
# installed, else the first on PATH (the build then names the package that
# has them): Debian 13's tcl9.0-dev installs tclsh9.0 and no tclsh, and
# Debian's tcl (8.6), installed beside it, a tclsh without headers.
TCLSH_NAMES = tclsh tclsh9.0 tclsh9.1 tclsh8.6
ifeq ($(strip $(TCLSH)),)
TCLSH      := $(shell first=; for t in $(TCLSH_NAMES); do \
	command -v $$t >/dev/null 2>&1 || continue; [ -n "$$first" ] || first=$$t; \
	( $(HAS_TCL_HEADERS) ) && { echo $$t; exit 0; }; done; echo $$first)
endif

# The Tcl that TCLSH runs decides what is built. Tcl 9's convention names
# its extensions with a "tcl9" prefix, so builds for 8.6 and 9 install side
# by side; pkgIndex.tcl loads the one for the Tcl that asks.
TCL_VERSION := $(if $(TCLSH),$(shell echo 'puts [info tclversion]' | $(TCLSH) 2>/dev/null))
LIB        = lib$(if $(filter 8.%,$(TCL_VERSION)),,tcl9)$(PACKAGE)$(VERSION).so

# Debian's package with the headers of that Tcl.
TCL_DEV    = $(if $(filter 8.%,$(TCL_VERSION)),tcl-dev,tcl$(TCL_VERSION)-dev)

# Recipes that need to know the Tcl start with this.
CHECK_TCLSH = @test -n "$(TCL_VERSION)" || { \
	if [ -z "$(TCLSH)" ]; then echo "can't find a tclsh (looked on PATH for $(TCLSH_NAMES)): install tcl9.0-dev (Tcl 9.0) or tcl-dev (Tcl 8.6), or set TCLSH" >&2; \
	else echo "can't run TCLSH=$(TCLSH) (it must be a tclsh): set TCLSH to one" >&2; fi; exit 1; }

# Tcl's flags: from tclConfig.sh when TCL_CONFIG names one, else from
# pkg-config's tclX.Y, else from a tclConfig.sh found by TCLSH. Debian's
# tcl9.0.pc needs libtommath's, which Debian does not install, and its
# /usr/lib/tcl9.0/tclConfig.sh runs dpkg-architecture (dpkg-dev): the real
# file in the multiarch directory is looked for first. Only the stub library
# is linked (pkg-config also names -ltcl8.6), so the extension loads into
# any Tcl of the major version it was built for.
ifeq ($(TCL_CONFIG),)
ifeq ($(TCL_VERSION),)
else ifeq ($(shell $(PKG_CONFIG) --exists tcl$(TCL_VERSION) 2>/dev/null && echo yes),yes)
TCL_CFLAGS := $(shell $(PKG_CONFIG) --cflags tcl$(TCL_VERSION))
TCL_STUB   := $(filter -L% -ltclstub%,$(shell $(PKG_CONFIG) --libs tcl$(TCL_VERSION)))
else
TCL_CONFIG := $(shell echo '$(FIND_TCL_CONFIG)' | $(TCLSH))
endif
endif
ifneq ($(TCL_CONFIG),)
TCL_CFLAGS := $(shell . $(TCL_CONFIG) && echo $$TCL_INCLUDE_SPEC)
TCL_STUB   := $(shell . $(TCL_CONFIG) && echo $$TCL_STUB_LIB_SPEC)
endif

# PORTABLE=1 (any value but 0): the portable build (elsewhere than on
# Linux the default build is portable too). It has the library's usual
# name, so that pkgIndex.tcl and 'make install' take either; the file
# .build remembers which build the library is, and a make that asks for
# the other rebuilds it.
BUILD     := $(if $(filter-out 0,$(strip $(PORTABLE))),portable,default)

ALL_CFLAGS = $(CFLAGS) $(EXTRA_CFLAGS) -Wall -Wextra -fPIC -pthread \
             -DUSE_TCL_STUBS $(TCL_CFLAGS) \
             $(if $(filter portable,$(BUILD)),-DSOCKETSERVER_PORTABLE)

# The first auto_path directory under PREFIX (on Debian /usr/local/lib/tcltk),
# else PREFIX/lib, which 'make install' then tells to put on TCLLIBPATH:
# nothing goes outside PREFIX unless TCL_LIBDIR says so. Empty without a
# tclsh to ask: install and uninstall then refuse.
ifeq ($(origin TCL_LIBDIR),undefined)
TCL_LIBDIR := $(if $(TCL_VERSION),$(shell echo 'foreach d $$auto_path {if {[string match $(PREFIX)/* $$d]} {puts $$d; exit}}; puts $(PREFIX)/lib' | $(TCLSH)))
endif
INSTALL_DIR = $(DESTDIR)$(TCL_LIBDIR)/$(PACKAGE)$(VERSION)
MANDIR     ?= $(PREFIX)/share/man

# What 'make dist' packs: everything needed to build, test and install.
DIST_NAME  = $(PACKAGE)-$(VERSION)
DIST_FILES = README.md LICENSE Makefile pkgIndex.tcl prefork.tcl runas.tcl socketserver.c \
	     ancillary.h doc/design.md .ci/run \
	     $(wildcard doc/*.n tests/*.tcl tests/*.test tests/*.sh tests/stress/*.tcl \
		tests/*.c tests/stress/*.test tests/stress/*.c examples/*.tcl \
		examples/*.cfg examples/*.service examples/*.socket bench/*.tcl bench/*.c \
		bench/*.js bench/*.lua)

.PHONY: all test stress memcheck asan bench install uninstall dist clean FORCE

all: $(LIB)

# Rewritten only when the build asked for differs from the last one.
.build: FORCE
	@test "$$(cat $@ 2>/dev/null)" = $(BUILD) || echo $(BUILD) > $@

$(LIB): socketserver.c ancillary.h .build
	$(CHECK_TCLSH)
	@test -n "$(TCL_CFLAGS)" || { echo "can't find the headers of Tcl $(TCL_VERSION) ($(TCLSH)): install $(TCL_DEV), or set TCL_CONFIG to its tclConfig.sh" >&2; exit 1; }
	@echo "building $@ for Tcl $(TCL_VERSION) ($(TCLSH)); for another Tcl: make TCLSH=tclshX.Y"
	$(CC) $(ALL_CFLAGS) -shared -o $@ socketserver.c $(TCL_STUB) $(LDFLAGS)

test: $(LIB) tests/stress/libinject.so tests/sdharness
	TCLLIBPATH=$(CURDIR) $(TCLSH) tests/all.tcl $(TESTFLAGS)

stress: $(LIB) tests/stress/libinject.so
	TCLLIBPATH=$(CURDIR) $(TCLSH) tests/all.tcl -testdir $(CURDIR)/tests/stress $(TESTFLAGS)

# A test helper that sends what no well-behaved process sends.
# What systemd does for a service (socket activation, sd_notify's socket),
# for the tests.
tests/sdharness: tests/sdharness.c
	$(CC) $(CFLAGS) $(EXTRA_CFLAGS) -Wall -Wextra -o $@ tests/sdharness.c

tests/stress/libinject.so: tests/stress/inject.c
	$(CC) $(ALL_CFLAGS) -shared -o $@ tests/stress/inject.c $(TCL_STUB) $(LDFLAGS)

memcheck: $(LIB)
	TCLSH=$(TCLSH) sh tests/checkmem.sh memcheck $(CURDIR)

# The extension built again with sanitizers, into tests/asan/.
asan: socketserver.c ancillary.h
	$(CHECK_TCLSH)
	mkdir -p tests/asan
	$(CC) $(ALL_CFLAGS) -O1 -fno-omit-frame-pointer \
	    -fsanitize=address,undefined -shared -o tests/asan/$(LIB) \
	    socketserver.c $(TCL_STUB) $(LDFLAGS)
	cp pkgIndex.tcl prefork.tcl runas.tcl tests/asan/
	TCLSH=$(TCLSH) CC=$(CC) sh tests/checkmem.sh asan $(CURDIR)/tests/asan

# Side-by-side benchmarks (needs wrk): see bench/run.tcl for the settings.
bench: $(LIB) bench/c_reference bench/c_reuseport
	TCLLIBPATH=$(CURDIR) $(TCLSH) bench/run.tcl

bench/c_reference: bench/c_reference.c ancillary.h
	$(CC) $(CFLAGS) $(EXTRA_CFLAGS) -Wall -Wextra -o $@ bench/c_reference.c

bench/c_reuseport: bench/c_reuseport.c
	$(CC) $(CFLAGS) $(EXTRA_CFLAGS) -Wall -Wextra -o $@ bench/c_reuseport.c

# 'make install' records what it creates, for 'make uninstall', which
# removes nothing else: in INSTALL_DIR/.install-files every file it
# installed, and in INSTALL_DIR/.install-dirs, deepest first, every
# directory it made (removed when empty). Both hold paths with DESTDIR.
MAN_DIR    = $(DESTDIR)$(MANDIR)/mann
MAN_PAGES  = $(wildcard doc/*.n)
CREATED    = $(INSTALL_DIR)/.install-dirs
INSTALLED  = $(INSTALL_DIR)/.install-files

install: $(LIB)
	$(CHECK_TCLSH)
	@test -n "$(TCL_LIBDIR)" || { echo "can't tell where to install: set TCL_LIBDIR" >&2; exit 1; }
	@new=; for d in $(INSTALL_DIR) $(MAN_DIR); do \
	    while [ ! -d "$$d" ]; do new="$$new $$d"; d=$$(dirname "$$d"); done; \
	done; \
	install -d $(INSTALL_DIR) $(MAN_DIR) && \
	{ cat $(CREATED) 2>/dev/null; for d in $$new; do echo "$$d"; done; } | \
	    sort -u | awk '{print length, $$0}' | sort -rn | cut -d' ' -f2- \
	    > $(CREATED).new && mv $(CREATED).new $(CREATED)
	@{ cat $(INSTALLED) 2>/dev/null; \
	    for f in $(LIB) pkgIndex.tcl prefork.tcl runas.tcl; do echo "$(INSTALL_DIR)/$$f"; done; \
	    for f in $(notdir $(MAN_PAGES)); do echo "$(MAN_DIR)/$$f"; done; \
	} | sort -u > $(INSTALLED).new && mv $(INSTALLED).new $(INSTALLED)
	install -m 755 $(LIB) $(INSTALL_DIR)/
	install -m 644 pkgIndex.tcl prefork.tcl runas.tcl $(INSTALL_DIR)/
	install -m 644 $(MAN_PAGES) $(MAN_DIR)/
	@echo 'puts [expr {"$(TCL_LIBDIR)" in $$auto_path}]' | $(TCLSH) | grep -q 1 || \
	    echo "$(TCL_LIBDIR) is not on $(TCLSH)'s auto_path: use TCLLIBPATH=$(TCL_LIBDIR)"

# Only what .install-files lists. The package index, the manual pages and
# the directories are shared with a build for the other Tcl major version:
# they go with the last library.
uninstall:
	$(CHECK_TCLSH)
	@test -n "$(TCL_LIBDIR)" || { echo "can't tell where socketserver was installed: set TCL_LIBDIR; nothing removed" >&2; exit 1; }
	@test -f $(INSTALLED) || { echo "no record of an install in $(INSTALL_DIR) ($(INSTALLED) is missing): nothing removed" >&2; exit 1; }
	@lib=$(INSTALL_DIR)/$(LIB); \
	grep -qxF "$$lib" $(INSTALLED) || { echo "$(INSTALLED) does not list $$lib: nothing removed" >&2; exit 1; }; \
	echo "rm -f $$lib"; rm -f "$$lib" || exit 1; \
	{ grep -vxF "$$lib" $(INSTALLED) || true; } > $(INSTALLED).new && \
	    mv $(INSTALLED).new $(INSTALLED) || exit 1; \
	if ls $(INSTALL_DIR)/lib*$(PACKAGE)$(VERSION).so >/dev/null 2>&1; then \
	    echo "another build stays in $(INSTALL_DIR)"; exit 0; fi; \
	files=$$(cat $(INSTALLED)); \
	if [ -n "$$files" ]; then echo "rm -f" $$files && rm -f $$files || exit 1; fi; \
	rm -f $(INSTALLED); \
	if [ -f $(CREATED) ]; then \
	    dirs=$$(cat $(CREATED)); rm -f $(CREATED); \
	    for d in $$dirs; do rmdir "$$d" 2>/dev/null || true; done; \
	fi

dist: $(DIST_NAME).tar.gz

$(DIST_NAME).tar.gz: $(DIST_FILES)
	rm -rf $(DIST_NAME) $@
	mkdir $(DIST_NAME)
	tar cf - $(DIST_FILES) | tar xf - -C $(DIST_NAME)
	tar czf $@ $(DIST_NAME)
	rm -rf $(DIST_NAME)

clean:
	rm -f lib*$(PACKAGE)$(VERSION).so *.o .build bench/c_reference \
	    bench/c_reuseport tests/stress/libinject.so tests/sdharness
	rm -rf tests/asan $(DIST_NAME) $(DIST_NAME).tar.gz
