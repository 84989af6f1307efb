"""
Files pyllmc writes: the one atomic write every writer goes through, and the
cache folder (tokenized default corpus, HellaSwag download).
"""
import os


def write_atomic(path, chunks):
    """Write byte chunks (any iterable, e.g. a download) to path so that
    readers see the old file or the whole new one, never a part: temp file in
    the same folder, fsync, rename, fsync of the folder (so the rename itself
    survives a crash)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def cache_dir():
    """$LLMC_CACHE_DIR, else $XDG_CACHE_HOME/llmc, else ~/.cache/llmc."""
    if os.environ.get("LLMC_CACHE_DIR"):
        return os.environ["LLMC_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "llmc")


def os_error_message(e):
    """An OSError as a sentence naming the file ("out/x: Not a directory"),
    instead of Python's "[Errno 20] Not a directory: 'out/x'"."""
    if e.filename is None or e.strerror is None:
        return str(e)
    return f"{os.fspath(e.filename)}: {e.strerror}"
