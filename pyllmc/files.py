"""Opening files that must be regular files.

open() on a FIFO blocks until a writer appears, and reading a device or a
directory gives nonsense or hangs; every loader opens its input through
open_regular, which refuses anything but a regular file before any read
that could block."""
import os
import stat


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
