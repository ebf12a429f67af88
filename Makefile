# rapport — plain Makefile. `make` builds ./rapport (objects under build/).
# `make run` and `make test` first install missing Debian packages (tools/deps.sh).

PKGS      := libevent libcurl libpq lua5.4 lua5.4-cjson jansson readline libcrypto hiredis
CC        ?= cc
OPT       ?= -O2 -g
SANITIZE  ?=
CFLAGS    += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wstrict-prototypes \
             -Wno-unused-parameter $(OPT) -MMD -MP
CPPFLAGS  += $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS    += $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lm

ifeq ($(SANITIZE),1)
  CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer
  LDFLAGS += -fsanitize=address,undefined
  BUILD   := build/asan
else ifeq ($(BENCH),1)
  # asserts compiled out leave tables only they read (analysis.c legal_next)
  OPT     := -O3 -g -DNDEBUG -Wno-unused-const-variable -Wno-unused-variable -Wno-unused-but-set-variable
  BUILD   := build/bench
else
  BUILD   := build
endif

CORE_SRC  := $(wildcard core/*.c)
CORE_OBJ  := $(CORE_SRC:core/%.c=$(BUILD)/core/%.o)
LIB_OBJ   := $(filter-out $(BUILD)/core/main.o,$(CORE_OBJ))
FAKE_SRC  := $(wildcard tools/fake_openai/*.c)
FAKE_OBJ  := $(FAKE_SRC:tools/fake_openai/%.c=$(BUILD)/fake/%.o)
UNIT_SRC  := $(wildcard tests/unit/test_*.c)
UNIT_BIN  := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)

ifeq ($(BUILD),build)
  BIN     := rapport
else
  BIN     := $(BUILD)/rapport
endif

.PHONY: all deps run test unit-tests bench bench-workload clean asan
all: $(BIN) $(BUILD)/fake_openai $(UNIT_BIN)

$(BIN): $(CORE_OBJ)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/fake_openai: $(FAKE_OBJ)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/core/%.o: core/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c -o $@ $<

$(BUILD)/fake/%.o: tools/fake_openai/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -Icore -c -o $@ $<

$(BUILD)/tests/%: tests/unit/%.c $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -Icore $(LDFLAGS) -o $@ $(filter %.c %.o,$^) $(LDLIBS)

deps:
	@tools/deps.sh

# REDIS=1: a private redis-server, two instances sharing it and a local
# HAProxy in front on RAPPORT_LISTEN (tools/run.sh).
REDIS     ?=
# Set-up included: packages, build, private PostgreSQL under ./var, demo data,
# the fake upstream when OPENAI_API_KEY is unset, then `rapport serve`.
run: deps
	@$(MAKE) --no-print-directory $(BIN) $(BUILD)/fake_openai
	@REDIS=$(REDIS) tools/run.sh

# Every test: C unit tests and integration tests (real PostgreSQL, the fake
# upstream and the real binary over HTTP), all driven by pytest.
test:
	@tools/deps.sh --test
	@$(MAKE) --no-print-directory all
	@tools/test.sh

# The same suite under AddressSanitizer/UBSan.
asan:
	@tools/deps.sh --test
	@$(MAKE) --no-print-directory SANITIZE=1 all
	@RAPPORT_BIN=build/asan/rapport FAKE_BIN=build/asan/fake_openai tools/test.sh

# Optimised build under build/bench, then the harness (bench/bench.py).
# BENCH_ARGS passes options through (bench/bench.py --help), e.g. the
# 1,000,000-contact scale: make bench BENCH_ARGS="--scales 10000,100000,1000000".
bench: deps
	@$(MAKE) --no-print-directory BENCH=1 build/bench/rapport build/bench/fake_openai build/bench/bare_evhttp
	@RAPPORT_BIN=build/bench/rapport FAKE_BIN=build/bench/fake_openai \
	    BARE_BIN=build/bench/bare_evhttp bench/run.sh $(BENCH_ARGS)

# The ceiling for a cached hit (bench/bare_evhttp.c): plain evhttp, same bytes.
build/bench/bare_evhttp: bench/bare_evhttp.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -o $@ $< $(shell pkg-config --libs libevent)

# The CRM-day benchmark (bench/workload.py): a compressed working day, the
# seed-like policy and the full one side by side. WORKLOAD_ARGS="--help" lists its flags.
bench-workload: deps
	@$(MAKE) --no-print-directory BENCH=1 build/bench/rapport build/bench/fake_openai
	@RAPPORT_BIN=build/bench/rapport FAKE_BIN=build/bench/fake_openai \
	    /usr/bin/python3 bench/workload.py $(WORKLOAD_ARGS)

# `make install PREFIX=/usr DESTDIR=/tmp/pkg`: the binary to $(BINDIR), the
# scripts, prompts, web assets and example config to $(SHAREDIR), the systemd
# units to $(UNITDIR) with their paths pointing at those (docs/operations.md).
PREFIX    ?= /usr/local
BINDIR    ?= $(PREFIX)/bin
SHAREDIR  ?= $(PREFIX)/share/rapport
UNITDIR   ?= $(PREFIX)/lib/systemd/system
UNIT_SED  := -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@SHAREDIR@|$(SHAREDIR)|g'

.PHONY: install
install: $(BIN)
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(SHAREDIR) $(DESTDIR)$(UNITDIR)
	install -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/rapport
	cp -R scripts prompts web $(DESTDIR)$(SHAREDIR)/
	install -m 0644 etc/rapport.conf.example etc/haproxy.cfg.example $(DESTDIR)$(SHAREDIR)/
	sed $(UNIT_SED) etc/systemd/rapport@.service > $(DESTDIR)$(UNITDIR)/rapport@.service
	sed -e 's|/usr/local/bin/rapport|$(BINDIR)/rapport|' etc/rapport.service > $(DESTDIR)$(UNITDIR)/rapport.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/rapport@.service $(DESTDIR)$(UNITDIR)/rapport.service

clean:
	rm -rf build rapport

-include $(CORE_OBJ:.o=.d) $(FAKE_OBJ:.o=.d) $(UNIT_BIN:=.d)

# ---- fuzzing: libFuzzer targets for the SSE framing and Lua ⇄ JSON ----------
# `make fuzz-build` builds build/fuzz/fuzz_{sse,json} with clang (core sources
# compiled straight into each, instrumented); `make fuzz FUZZ_SECONDS=60` runs
# each for that long on build/fuzz/corpus/<name> seeded from tests/fuzz/corpus.
# tests/test_fuzz.py replays the seeds and does a short run on every `make test`.
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
FUZZ_NAMES   := sse json
FUZZ_BIN     := $(FUZZ_NAMES:%=build/fuzz/fuzz_%)
FUZZ_CORE    := core/sse.c core/luajson.c core/jschema.c core/util.c core/log.c core/fmt.c
FUZZ_CFLAGS  := -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
                -fno-omit-frame-pointer -g -O1 -std=c11 -D_GNU_SOURCE \
                -Wall -Wextra -Wno-unused-parameter -Icore
FUZZ_LIBS     = $(shell pkg-config --cflags --libs jansson lua5.4 libevent) -lm

.PHONY: fuzz fuzz-build
fuzz-build: $(FUZZ_BIN)

build/fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_CORE) $(wildcard core/*.h)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -o $@ $< $(FUZZ_CORE) $(FUZZ_LIBS)

fuzz: fuzz-build
	@for n in $(FUZZ_NAMES); do \
	    mkdir -p build/fuzz/corpus/$$n build/fuzz/artifacts/$$n || exit 1; \
	    echo "fuzz_$$n: $(FUZZ_SECONDS) s"; \
	    build/fuzz/fuzz_$$n -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	        -dict=tests/fuzz/$$n.dict -artifact_prefix=build/fuzz/artifacts/$$n/ \
	        build/fuzz/corpus/$$n tests/fuzz/corpus/$$n || exit 1; \
	done
