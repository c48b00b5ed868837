# rseqrt: build, test and install the C library (and the Rust crate it is made from).
#
#   make                      build build/lib/librseqrt.so.0, librseqrt.a, librseqrt_preload.so, rseqrt.pc
#   make check                every test: Rust unit and integration tests, the C ABI and crash suites,
#                             and the check that generated files match their sources
#   make install PREFIX=/usr/local [DESTDIR=...]
#   make generate             regenerate src/abi/linux_rseq.rs and include/rseqrt.h
#   make bench                benchmarks; results under docs/bench/

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

.PHONY: all deps demo check install stage generate check-generated bench clean FORCE

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
	@echo; echo "== what a C program linked with rseqrt sees (glibc registers rseq; rseqrt adopts)"; $(EXAMPLES)/hello
	@echo; echo "== the same with glibc's registration turned off (rseqrt registers)"
	@GLIBC_TUNABLES=glibc.pthread.rseq=0 $(EXAMPLES)/hello
	@echo; echo "== an unmodified program unloads a plugin that a sleeping thread ran an rseq critical section in"
	@$(EXAMPLES)/unload $(EXAMPLES)/plugin.so; echo "   exit status $$? (139 = killed by SIGSEGV)"
	@echo; echo "== the same program with LD_PRELOAD=$(STAGE)/lib/rseqrt/librseqrt_preload.so"
	@LD_PRELOAD=$(STAGE)/lib/rseqrt/librseqrt_preload.so $(EXAMPLES)/unload $(EXAMPLES)/plugin.so; echo "   exit status $$?"

check: deps stage check-generated
	@mkdir -p $(B)
	set -o pipefail; $(CARGO) test --release --workspace --exclude rseqrt-gen -- --test-threads=1 2>&1 | tee $(B)/check.log
	@scripts/test-summary $(B)/check.log

# Benchmarks: C programs compiled at run time against the freshly built build/lib/librseqrt.so;
# results (Markdown, JSON, SVG) under docs/bench/.
bench: all
	$(CARGO) run --release -q -p rseqrt-cli -- bench --lib-dir $(CURDIR)/$(B)/lib --out $(CURDIR)/docs/bench

clean:
	$(CARGO) clean
	rm -rf $(B)

FORCE:
