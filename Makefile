# llmc: `make` builds libllmc (CPU always, the CUDA plugin when a toolkit is
# found) and installs the Python packages the tools need; `make test` runs
# the whole suite.
PYTHON ?= python3
BUILD  := build
CC     ?= gcc
CFLAGS := -O3 -march=native -fopenmp -fPIC -std=c11 -Wall -Wextra -Wno-unused-parameter \
          -Ilibllmc/include -Ilibllmc/src
LDLIBS := -lm -ldl -fopenmp

# ---- CPU library ----------------------------------------------------------
CPU_SRC := $(wildcard libllmc/src/*.c) $(wildcard libllmc/src/cpu/*.c)
CPU_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(CPU_SRC))
HEADERS := $(wildcard libllmc/include/*.h libllmc/src/*.h libllmc/src/cpu/*.h)

.PHONY: all lib deps test clean
all: deps lib
lib: $(BUILD)/libllmc.so

$(BUILD)/%.o: %.c $(HEADERS) | $(BUILD)/.dirs
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/libllmc.so: $(CPU_OBJ)
	$(CC) -shared -o $@ $^ $(LDLIBS) -Wl,-rpath,'$$ORIGIN'

$(BUILD)/.dirs:
	@mkdir -p $(BUILD)
	@touch $@

# ---- Python packages ------------------------------------------------------
deps: $(BUILD)/.deps
$(BUILD)/.deps: requirements.txt | $(BUILD)/.dirs
	$(PYTHON) -m pip install -q -r requirements.txt
	@touch $@

# ---- tests ----------------------------------------------------------------
test: all
	$(PYTHON) -m pytest -q tests

clean:
	rm -rf $(BUILD)
