# rseqrt: build, test and install the C library (and the Rust crate it is made from).
#
#   make                      build build/lib/librseqrt.so.0, librseqrt.a, librseqrt_preload.so, rseqrt.pc
#   make check                every test: Rust unit and integration tests, the C ABI and crash suites,
#                             and the check that generated files match their sources, on this glibc,
#                             in Debian 11 and 13 chroots, and for the dist tarball (scripts/check)
#   make check-host           the same on this machine's glibc only
#   make install PREFIX=/usr/local [DESTDIR=...]
#   make generate             regenerate src/abi/linux_rseq.rs and include/rseqrt.h
#   make bench                benchmarks; results under docs/bench/
#   make dist                 one build for every glibc (made on glibc 2.31, in the Debian 11 chroot):
#                             build/dist/rseqrt-VERSION-x86_64-linux-gnu.tar.gz

SHELL     := bash
VERSION   := 0.1.0
SOVERSION := 0
PREFIX    ?= /usr/local
LIBDIR    ?= $(PREFIX)/lib
INCDIR    ?= $(PREFIX)/include
BINDIR    ?= $(PREFIX)/bin
CARGO     ?= cargo
CC        ?= cc
B         := build
RUST_A    := target/release/librseqrt.a
SO        := $(B)/lib/librseqrt.so.$(VERSION)
# The LD_PRELOAD shim is the whole library plus interposers of the calls that free memory, with the
# same SONAME (so a program that links rseqrt gets one copy). It lives in a subdirectory so that
# ldconfig, which picks one file per SONAME in a directory, never sees the two side by side.
PRELOAD   := $(B)/lib/rseqrt/librseqrt_preload.so
STAGE     := $(CURDIR)/$(B)/stage

.PHONY: all deps demo check check-host dist dist-here check-dist install stage generate check-generated bench clean FORCE

all: $(SO) $(B)/lib/librseqrt.a $(PRELOAD) $(B)/rseqrt.pc $(B)/bin/rseqrt

# Cargo decides what is stale; FORCE makes make ask it every time.
$(RUST_A): FORCE
	$(CARGO) build --release --features c-library -p rseqrt

# The shared library is linked from the static one so that our version script (with glibc's
# version nodes) is the only one; --whole-archive keeps the relocation-time hook in .init_array.
$(SO): $(RUST_A) rseqrt.map
	@mkdir -p $(B)/lib
	$(CC) -shared -o $@ -Wl,--whole-archive $(RUST_A) -Wl,--no-whole-archive \
	  -Wl,-soname,librseqrt.so.$(SOVERSION) -Wl,--version-script=rseqrt.map \
	  -Wl,-z,now -Wl,-z,relro -Wl,--gc-sections -Wl,--no-undefined -lpthread -ldl -lc
	ln -sf librseqrt.so.$(VERSION) $(B)/lib/librseqrt.so.$(SOVERSION)
	ln -sf librseqrt.so.$(SOVERSION) $(B)/lib/librseqrt.so

$(B)/lib/librseqrt.a: $(RUST_A)
	@mkdir -p $(B)/lib
	cp $< $@

# The shim is built from the crate with the `preload` feature (its dlclose/munmap/madvise/...
# entry points), in its own target directory so that librseqrt.a stays without them.
PRELOAD_A := target/preload/release/librseqrt.a
$(PRELOAD_A): FORCE
	$(CARGO) build --release --features preload -p rseqrt --target-dir target/preload

$(PRELOAD): $(PRELOAD_A) rseqrt.map
	@mkdir -p $(dir $@)
	$(CC) -shared -o $@ -Wl,--whole-archive $(PRELOAD_A) -Wl,--no-whole-archive \
	  -Wl,-soname,librseqrt.so.$(SOVERSION) -Wl,--version-script=rseqrt.map \
	  -Wl,-z,now -Wl,-z,relro -Wl,--gc-sections -Wl,--no-undefined -lpthread -ldl -lc

# The rseqrt command (info, selftest, bench); links the crate, embeds its selftest plugins.
$(B)/bin/rseqrt: FORCE
	$(CARGO) build --release -p rseqrt-cli
	@mkdir -p $(B)/bin
	cp target/release/rseqrt $@

$(B)/rseqrt.pc: rseqrt.pc.in Makefile
	@mkdir -p $(B)
	sed -e 's|@PREFIX@|$(PREFIX)|; s|@LIBDIR@|$(LIBDIR)|; s|@INCDIR@|$(INCDIR)|; s|@VERSION@|$(VERSION)|' $< > $@

install: all
	install -d $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(LIBDIR)/rseqrt $(DESTDIR)$(INCDIR)
	install -m 755 $(SO) $(DESTDIR)$(LIBDIR)/
	ln -sf librseqrt.so.$(VERSION) $(DESTDIR)$(LIBDIR)/librseqrt.so.$(SOVERSION)
	ln -sf librseqrt.so.$(SOVERSION) $(DESTDIR)$(LIBDIR)/librseqrt.so
	install -m 644 $(B)/lib/librseqrt.a $(DESTDIR)$(LIBDIR)/
	install -m 755 $(PRELOAD) $(DESTDIR)$(LIBDIR)/rseqrt/
	install -m 644 include/rseqrt.h $(DESTDIR)$(INCDIR)/
	install -d $(DESTDIR)$(BINDIR) && install -m 755 $(B)/bin/rseqrt $(DESTDIR)$(BINDIR)/
	sed -e 's|@PREFIX@|$(PREFIX)|; s|@LIBDIR@|$(LIBDIR)|; s|@INCDIR@|$(INCDIR)|; s|@VERSION@|$(VERSION)|' \
	  rseqrt.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/rseqrt.pc

# What the test suites compile and run against: a real installation, in build/stage.
stage:
	$(MAKE) --no-print-directory install PREFIX=$(STAGE) DESTDIR=

# One build for every glibc people run: built against the oldest glibc of the matrix (Debian 11's
# 2.31, in its chroot; scripts/glibc-matrix), so that it references no symbol version above
# GLIBC_2.31. The tarball is the `make install` tree with a relocatable rseqrt.pc.
DIST_NAME := rseqrt-$(VERSION)-x86_64-linux-gnu
dist:
	scripts/glibc-matrix --make-dist

# What `make dist` runs in the chroot.
dist-here: all
	rm -rf $(B)/dist && mkdir -p $(B)/dist/root
	$(MAKE) --no-print-directory install PREFIX=/$(DIST_NAME) DESTDIR=$(CURDIR)/$(B)/dist/root
	printf '%s\n' 'prefix=$${pcfiledir}/../..' 'libdir=$${prefix}/lib' 'includedir=$${prefix}/include' > $(B)/dist/pc.head
	sed -e '1,3d' -e 's|@VERSION@|$(VERSION)|' rseqrt.pc.in | cat $(B)/dist/pc.head - > $(B)/dist/root/$(DIST_NAME)/lib/pkgconfig/rseqrt.pc
	tar -C $(B)/dist/root --owner=0 --group=0 -czf $(B)/dist/$(DIST_NAME).tar.gz $(DIST_NAME)

# The tests of an unpacked dist tarball (RSEQRT_STAGE=its directory): what its objects reference,
# and the crash suite compiled and run against it.
check-dist:
	@test -n "$(RSEQRT_STAGE)" || { echo "check-dist: set RSEQRT_STAGE to an unpacked dist tree" >&2; exit 2; }
	@mkdir -p $(B)
	@set -o pipefail; $(CARGO) test --release --test dist --test crash --no-fail-fast -- --test-threads=1 2>&1 \
	  | tee $(B)/check-dist.log; rc=$$?; scripts/test-summary $(B)/check-dist.log && exit $$rc

generate:
	$(CARGO) run --release -q -p rseqrt-gen -- write

check-generated:
	$(CARGO) run --release -q -p rseqrt-gen -- check

deps:
	scripts/install-deps

# The README's first command: build, install into build/stage, and show what rseqrt does.
EXAMPLES := $(B)/examples
demo: deps stage
	@mkdir -p $(EXAMPLES)
	$(CC) -O2 -Wall examples/hello.c $$(PKG_CONFIG_PATH=$(STAGE)/lib/pkgconfig pkg-config --cflags --libs rseqrt) -o $(EXAMPLES)/hello
	$(CC) -O2 -Wall -shared -fPIC examples/plugin.c -o $(EXAMPLES)/plugin.so
	$(CC) -O2 -Wall examples/unload.c -o $(EXAMPLES)/unload -lpthread -ldl
	@echo; echo "== rseqrt info: what this machine offers"; $(STAGE)/bin/rseqrt info
	@echo; echo "== rseqrt selftest: the crash, without and with rseqrt"; $(STAGE)/bin/rseqrt selftest
	@echo; echo "== what a C program linked with rseqrt sees (glibc 2.35+ registers rseq and rseqrt adopts; older glibc does not and rseqrt registers)"; $(EXAMPLES)/hello
	@echo; echo "== the same with glibc's registration turned off: rseqrt leaves registration to the program"
	@GLIBC_TUNABLES=glibc.pthread.rseq=0 $(EXAMPLES)/hello
	@echo; echo "== ... unless RSEQRT_REGISTER=1 asks rseqrt to register in glibc's place"
	@GLIBC_TUNABLES=glibc.pthread.rseq=0 RSEQRT_REGISTER=1 $(EXAMPLES)/hello
	@echo; echo "== an unmodified program unloads a plugin that a sleeping thread ran an rseq critical section in"
	@$(EXAMPLES)/unload $(EXAMPLES)/plugin.so; echo "   exit status $$? (139 = killed by SIGSEGV)"
	@echo; echo "== the same program with LD_PRELOAD=$(STAGE)/lib/rseqrt/librseqrt_preload.so"
	@LD_PRELOAD=$(STAGE)/lib/rseqrt/librseqrt_preload.so $(EXAMPLES)/unload $(EXAMPLES)/plugin.so; echo "   exit status $$?"

# Every test on this machine's glibc, then on Debian 11 and 13 (scripts/glibc-matrix), one closing line.
check:
	@scripts/check

# Every test on this machine's glibc alone (what the matrix runs inside each chroot).
check-host: deps stage check-generated
	@mkdir -p $(B)
	@set -o pipefail; $(CARGO) test --release --workspace --exclude rseqrt-gen --no-fail-fast -- --test-threads=1 2>&1 \
	  | tee $(B)/check.log; rc=$$?; scripts/test-summary $(B)/check.log && exit $$rc

# Benchmarks: C programs compiled at run time against the freshly built build/lib/librseqrt.so;
# results (Markdown, JSON, SVG) under docs/bench/.
bench: all
	$(CARGO) run --release -q -p rseqrt-cli -- bench --lib-dir $(CURDIR)/$(B)/lib --out $(CURDIR)/docs/bench

clean:
	$(CARGO) clean
	rm -rf $(B)

FORCE:
