"""
Files pyllmc reads and writes: the one atomic write every writer goes through,
opening inputs that must be regular files, and the cache folder (tokenized
default corpus, HellaSwag download).

open() on a FIFO blocks until a writer appears, and reading a device or a
directory gives nonsense or hangs; every loader opens its input through
open_regular, which refuses anything but a regular file before any read that
could block.
"""
import os
import secrets
import stat


NAME_TRIES = 8


def temporary_name(path):
    """PATH.tmp.<16 random hex digits>: a name no one can plant a file under
    in advance (the library's atomic writer names its files alike)."""
    return f"{path}.tmp.{secrets.token_hex(8)}"


def write_atomic(path, chunks):
    """Write byte chunks (any iterable, e.g. a download) to path so that
    readers see the old file or the whole new one, never a part: temp file in
    the same folder, fsync, rename, fsync of the folder (so the rename itself
    survives a crash). The temp file is created new (O_EXCL, O_NOFOLLOW), so
    a symlink or FIFO someone left at its name is never written through."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    for attempt in range(NAME_TRIES):  # a clash draws another name
        tmp = temporary_name(path)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o666)
            break
        except FileExistsError:
            if attempt == NAME_TRIES - 1:
                raise
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
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


class NotRegularFileError(OSError):
    """The path names a FIFO, device, socket or directory, not a file."""


def open_regular(path):
    """path opened for binary reading, or NotRegularFileError naming it. The
    open itself uses O_NONBLOCK, so that a FIFO without a writer cannot block
    it; the descriptor is made blocking again once it is known to be a file."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                    else "a device or socket")
            raise NotRegularFileError(f"{os.fspath(path)}: is {kind}, expected a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path):
    """All bytes of the regular file at path (see open_regular)."""
    with open_regular(path) as f:
        return f.read()
