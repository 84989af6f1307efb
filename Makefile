# llmc: `make` builds libllmc (CPU always, the CUDA plugin when a toolkit is
# found) and installs the Python packages the tools need, pyllmc itself
# editable; `make test` also installs the tests' packages and runs the suite.
PYTHON ?= python3
.DEFAULT_GOAL := all
BUILD  := build
# the active Python environment: each gets its own install stamp
PYENV  := $(shell $(PYTHON) -c 'import sys, hashlib; print(hashlib.sha1(sys.prefix.encode()).hexdigest()[:10])')
DEPS   := $(BUILD)/.deps-$(PYENV)
CC     ?= gcc
CFLAGS := -O3 -march=native -fopenmp -fPIC -std=c11 -Wall -Wextra -Wno-unused-parameter \
          -Ilibllmc/include -Ilibllmc/src
LDLIBS := -lm -ldl -fopenmp

# ---- CPU library ----------------------------------------------------------
CPU_SRC := $(wildcard libllmc/src/*.c) $(wildcard libllmc/src/cpu/*.c)
CPU_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(CPU_SRC))
HEADERS := $(wildcard libllmc/include/*.h libllmc/src/*.h libllmc/src/cpu/*.h)

# The CPU backend's matrix products go through OpenBLAS from the
# scipy-openblas32 wheel (requirements.txt): a tuned GEMM for every x86/ARM
# core, no system package needed. Its paths are asked from the installed
# wheel, once `deps` has installed it; the library finds it at run time
# through an rpath to the wheel's lib directory.
ifneq ($(MAKECMDGOALS),clean)
include $(BUILD)/blas.mk
endif
# -fno-math-errno: errno is never read, and without it sqrtf cannot vectorise.
$(BUILD)/libllmc/src/cpu/%.o: CFLAGS += -I$(BLAS_INC) -fno-math-errno
$(BUILD)/libllmc.so: LDLIBS += -L$(BLAS_LIB) -lscipy_openblas -Wl,-rpath,$(BLAS_LIB)

# ---- CUDA plugin (owned by the CUDA backend; see the file) ----------------
include libllmc/src/cuda/cuda.mk

.PHONY: all lib deps test-deps test clean
all: deps lib
lib: $(BUILD)/libllmc.so $(CUDA_PLUGIN)

$(BUILD)/%.o: %.c $(HEADERS) | $(BUILD)/.dirs
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/libllmc.so: $(CPU_OBJ)
	$(CC) -shared -o $@ $^ $(LDLIBS) -Wl,-rpath,'$$ORIGIN'

$(BUILD)/blas.mk: $(DEPS) | $(BUILD)/.dirs
	$(PYTHON) -c 'import scipy_openblas32 as b; print("BLAS_INC :=", b.get_include_dir()); print("BLAS_LIB :=", b.get_lib_dir())' > $@

$(BUILD)/.dirs:
	@mkdir -p $(BUILD)
	@touch $@

# ---- Python packages ------------------------------------------------------
# pyllmc is installed in editable mode into the active Python, so that
# `python -m pyllmc.train` and the scripts work from any folder and find
# build/libllmc.so here. `make lib DEPS=` skips all of it (an offline machine
# whose packages are already there).
deps: $(DEPS)
$(BUILD)/.deps-$(PYENV): requirements.txt pyproject.toml | $(BUILD)/.dirs
	$(PYTHON) -m pip install -q -r requirements.txt
	$(PYTHON) -m pip install -q --no-deps -e .
	@touch $@

# ---- tests ----------------------------------------------------------------
# the suite's own packages (requirements-test.txt: pytest, the PyTorch reference, ...)
test-deps: $(BUILD)/.test-deps-$(PYENV)
$(BUILD)/.test-deps-$(PYENV): requirements-test.txt | $(BUILD)/.dirs
	$(PYTHON) -m pip install -q -r requirements-test.txt
	@touch $@

test: all test-deps
	$(PYTHON) -m pytest -q tests

clean:
	rm -rf $(BUILD)
