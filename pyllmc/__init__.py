"""pyllmc: Python bindings of libllmc, GPT-2 training in C/CUDA.

`Model` and `Config` load the compiled library on first access (a
LibraryError, an ImportError, says to run `make` if it is missing or stale); the pure-Python
modules (tokenizer, shards) work without it.
"""
from ._lib import (DeviceError, FileFormatError, InvalidArgumentError, LibraryError, LlmcError,
                   LlmcIOError, NumericError, OutOfMemoryError, UnsupportedError)


def __getattr__(name):
    if name in ("Model", "Config"):
        from . import model
        return getattr(model, name)
    raise AttributeError(f"module 'pyllmc' has no attribute {name!r}")


def cuda_available():
    """True when the CUDA backend was built and a GPU is visible."""
    from ._lib import lib
    return bool(lib.llmc_cuda_available())


__all__ = ["Config", "Model", "cuda_available", "LibraryError", "LlmcError", "InvalidArgumentError",
           "LlmcIOError", "FileFormatError", "OutOfMemoryError", "UnsupportedError",
           "DeviceError", "NumericError"]
