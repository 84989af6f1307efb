# ---- CUDA plugin: build/libllmc_cuda.so ------------------------------------
# Included by the top-level Makefile. Built beside libllmc.so when nvcc,
# cuBLASLt, cuDNN and the cudnn-frontend headers are all found; otherwise
# skipped with a message, and the CPU library is unaffected.
# Looked for in order: nvcc on PATH, $(CUDA_HOME)/bin, /usr/local/cuda/bin;
# headers and libraries in the toolkit, a carried .carry/cudnn-frontend/include,
# and the pip wheels nvidia-cublas, nvidia-cudnn-frontend and nvidia-cuda-nvrtc;
# cuDNN: the newest of the system's, the toolkit's and the nvidia-cudnn-cu13
# wheel's; NCCL (optional, for distributed mode) in the system or the
# nvidia-nccl-cu13 wheel.
# `make CUDA_ARCH=80` builds for Ampere instead of Hopper (sm_90).
CUDA_ARCH ?= 90
NVCC ?= $(firstword $(shell command -v nvcc 2>/dev/null) $(wildcard $(CUDA_HOME)/bin/nvcc /usr/local/cuda/bin/nvcc))

ifneq ($(NVCC),)
CUDA_ROOTS := $(CUDA_HOME) $(abspath $(dir $(NVCC))..) /usr/local/cuda
PY_SITE := $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null)
CUDA_INC_DIRS := $(foreach r,$(CUDA_ROOTS),$(r)/include $(r)/targets/x86_64-linux/include)
CUDA_LIB_DIRS := $(foreach r,$(CUDA_ROOTS),$(r)/lib64 $(r)/lib $(r)/targets/x86_64-linux/lib)
PIP_NV := $(PY_SITE)/nvidia
# first directory of $(2) holding file $(1)
cuda_find_dir = $(patsubst %/$(1),%,$(firstword $(wildcard $(addsuffix /$(1),$(2)))))
cuda_find_file = $(firstword $(wildcard $(foreach d,$(2),$(addprefix $(d)/,$(1)))))

CUDART_INC  := $(call cuda_find_dir,cuda_runtime.h,$(CUDA_INC_DIRS))
CUBLAS_INC  := $(call cuda_find_dir,cublasLt.h,$(CUDA_INC_DIRS) $(PIP_NV)/cu13/include $(PIP_NV)/cublas/include)
NVRTC_INC   := $(call cuda_find_dir,nvrtc.h,$(CUDA_INC_DIRS) $(PIP_NV)/cu13/include $(PIP_NV)/cuda_nvrtc/include)
# cuDNN: the newest install found (the system's, the toolkit's, the pip wheel's), headers and
# library from the same one: newer releases bring faster attention kernels (9.19 against 9.14
# on the H200: -1% per d12 and d48 step, bench/CUDA_NOTES.md). Candidates are include=lib pairs.
CUDNN_CANDIDATES := /usr/include/x86_64-linux-gnu=/usr/lib/x86_64-linux-gnu \
    /usr/include=/usr/lib/x86_64-linux-gnu /usr/include=/usr/lib64 \
    $(foreach r,$(CUDA_ROOTS),$(r)/include=$(r)/lib64 $(r)/include=$(r)/lib) \
    $(PIP_NV)/cudnn/include=$(PIP_NV)/cudnn/lib
cudnn_lib_in = $(firstword $(wildcard $(1)/libcudnn.so $(1)/libcudnn.so.[0-9]))
# "000900190000/9.19.0": MAJOR, MINOR, PATCHLEVEL zero-padded (sorting the words sorts the
# versions), then as people write them
cudnn_version = $(shell awk '/define CUDNN_(MAJOR|MINOR|PATCHLEVEL)[ \t]/ \
    {k = k sprintf("%04d", $$3); v = v s $$3; s = "."} END {print k "/" v}' $(1)/cudnn_version.h 2>/dev/null)
# "version=include=lib" for an include=lib pair holding cudnn.h and the library, else nothing
cudnn_found = $(if $(wildcard $(1)/cudnn.h),$(if $(call cudnn_lib_in,$(2)),\
    $(or $(call cudnn_version,$(1)),0/unknown)=$(1)=$(call cudnn_lib_in,$(2))))
CUDNN_BEST  := $(subst =, ,$(lastword $(sort $(foreach c,$(CUDNN_CANDIDATES),\
    $(call cudnn_found,$(word 1,$(subst =, ,$(c))),$(word 2,$(subst =, ,$(c))))))))
CUDNN_VERSION := $(lastword $(subst /, ,$(word 1,$(CUDNN_BEST))))
CUDNN_INC   := $(word 2,$(CUDNN_BEST))
CUDNN_LIB   := $(word 3,$(CUDNN_BEST))
CUDNN_FE_INC := $(call cuda_find_dir,cudnn_frontend.h,$(CUDNN_FRONTEND_INCLUDE) .carry/cudnn-frontend/include $(PY_SITE)/include /usr/include /usr/local/include)
CUBLASLT_LIB := $(call cuda_find_file,libcublasLt.so libcublasLt.so.[0-9]*,$(CUDA_LIB_DIRS) $(PIP_NV)/cu13/lib $(PIP_NV)/cublas/lib)
NVRTC_LIB   := $(call cuda_find_file,libnvrtc.so libnvrtc.so.[0-9]*,$(CUDA_LIB_DIRS) $(PIP_NV)/cu13/lib $(PIP_NV)/cuda_nvrtc/lib)
# NCCL is optional: its header for distributed mode, its library opened at run time
NCCL_INC    := $(call cuda_find_dir,nccl.h,$(NCCL_HOME)/include /usr/include /usr/local/include $(CUDA_INC_DIRS) $(PIP_NV)/nccl/include)
NCCL_LIB    := $(call cuda_find_file,libnccl.so.2,$(NCCL_HOME)/lib /usr/lib/x86_64-linux-gnu /usr/lib64 $(CUDA_LIB_DIRS) $(PIP_NV)/nccl/lib)
CUDA_MISSING := $(if $(CUDART_INC),,cuda_runtime.h) $(if $(CUBLAS_INC),,cublasLt.h) \
    $(if $(NVRTC_INC),,nvrtc.h) $(if $(CUDNN_INC),,cudnn.h) \
    $(if $(CUDNN_FE_INC),,cudnn_frontend.h) $(if $(CUBLASLT_LIB),,libcublasLt.so) \
    $(if $(CUDNN_LIB),,libcudnn.so) $(if $(NVRTC_LIB),,libnvrtc.so)
else
CUDA_MISSING := nvcc
endif

ifeq ($(strip $(CUDA_MISSING)),)
CUDA_PLUGIN := $(BUILD)/libllmc_cuda.so
CUDA_INCS := -Ilibllmc/include -Ilibllmc/src $(addprefix -I,$(sort $(CUDART_INC) $(CUBLAS_INC) $(NVRTC_INC) $(CUDNN_INC)))
CUDA_RPATHS := $(sort $(dir $(CUBLASLT_LIB) $(CUDNN_LIB) $(NVRTC_LIB)))
cuda_comma := ,
# CUDA_DEFS: extra -D flags, e.g. a variant of fp8.cu's cast knobs (bench/fp8_cast_probe.sh)
NVCCFLAGS := -std=c++17 -O3 -gencode arch=compute_$(CUDA_ARCH),code=sm_$(CUDA_ARCH) \
    -Xcompiler -fPIC,-fvisibility=hidden,-Wall $(CUDA_INCS) $(CUDA_DEFS)
# The frontend calls NVRTC for some engines, hence libnvrtc.
# cudnn-frontend is header-only and slow to compile: its one unit is built by
# the host compiler, without the frontend's JSON serialisation, and depends on
# attention.h alone so that it is rebuilt rarely.
CUDNN_FE_FLAGS := -std=c++17 -O2 -fPIC -fvisibility=hidden -DCUDNN_FRONTEND_SKIP_JSON_LIB \
    $(CUDA_INCS) -I$(CUDNN_FE_INC)
CUDA_CU  := $(wildcard libllmc/src/cuda/*.cu)
CUDA_OBJ := $(patsubst %.cu,$(BUILD)/%.o,$(CUDA_CU)) $(BUILD)/libllmc/src/cuda/attention_cudnn.o
CUDA_HDR := $(wildcard libllmc/src/cuda/*.cuh) libllmc/src/cuda/attention.h \
    libllmc/include/llmc.h libllmc/src/model.h libllmc/src/config.h libllmc/src/comm.h \
    libllmc/src/error.h
ifeq ($(filter clean,$(MAKECMDGOALS)),)
$(info CUDA backend: nvcc $(NVCC), sm_$(CUDA_ARCH); cuBLASLt $(CUBLASLT_LIB); cuDNN $(CUDNN_LIB) \
    $(CUDNN_VERSION) (headers $(CUDNN_INC)); cudnn-frontend $(CUDNN_FE_INC); NCCL $(or $(NCCL_INC),none: no distributed mode))
endif

$(BUILD)/libllmc/src/cuda/comm_nccl.o: NVCCFLAGS += $(if $(NCCL_INC),-I$(NCCL_INC),-DLLMC_NO_NCCL) \
    $(if $(NCCL_LIB),-DLLMC_NCCL_BUILD_LIB='"$(NCCL_LIB)"')

$(BUILD)/libllmc/src/cuda/%.o: libllmc/src/cuda/%.cu $(CUDA_HDR) | $(BUILD)/.dirs
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

$(BUILD)/libllmc/src/cuda/attention_cudnn.o: libllmc/src/cuda/attention_cudnn.cpp \
        libllmc/src/cuda/attention.h | $(BUILD)/.dirs
	@mkdir -p $(dir $@)
	$(CXX) $(CUDNN_FE_FLAGS) -c $< -o $@

$(CUDA_PLUGIN): $(CUDA_OBJ) $(BUILD)/libllmc.so
	$(NVCC) -shared -o $@ $(CUDA_OBJ) -L$(BUILD) -lllmc \
	    $(foreach f,$(CUBLASLT_LIB) $(CUDNN_LIB) $(NVRTC_LIB),-L$(dir $(f)) -l:$(notdir $(f))) \
	    -Xlinker -rpath,'$$ORIGIN' $(addprefix -Xlinker -rpath$(cuda_comma),$(CUDA_RPATHS))
else
CUDA_PLUGIN :=
ifeq ($(filter clean,$(MAKECMDGOALS)),)
$(info CUDA backend skipped (CPU only): not found: $(strip $(CUDA_MISSING)))
endif
endif

.PHONY: cuda
cuda: $(CUDA_PLUGIN)
