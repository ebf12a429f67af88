# rapport — plain Makefile. `make` builds ./rapport (objects under build/).
# `make run` and `make test` first install missing Debian packages (tools/deps.sh).

PKGS      := libevent libcurl libpq lua5.4 lua5.4-cjson jansson readline
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
  OPT     := -O3 -g -DNDEBUG
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

.PHONY: all deps run test unit-tests bench clean asan
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

# Set-up included: packages, build, private PostgreSQL under ./var, demo data,
# the fake upstream when OPENAI_API_KEY is unset, then `rapport serve`.
run: deps
	@$(MAKE) --no-print-directory $(BIN) $(BUILD)/fake_openai
	@tools/run.sh

# Every test: C unit tests and integration tests (real PostgreSQL, the fake
# upstream and the real binary over HTTP), all driven by pytest.
test: deps
	@$(MAKE) --no-print-directory all
	@tools/test.sh

# The same suite under AddressSanitizer/UBSan.
asan: deps
	@$(MAKE) --no-print-directory SANITIZE=1 all
	@RAPPORT_BIN=build/asan/rapport FAKE_BIN=build/asan/fake_openai tools/test.sh

# Optimised build under build/bench, then the harness (bench/bench.py).
bench: deps
	@$(MAKE) --no-print-directory BENCH=1 build/bench/rapport build/bench/fake_openai
	@RAPPORT_BIN=build/bench/rapport FAKE_BIN=build/bench/fake_openai bench/run.sh

clean:
	rm -rf build rapport

-include $(CORE_OBJ:.o=.d) $(FAKE_OBJ:.o=.d) $(UNIT_BIN:=.d)
