"""Lock files for `fcntl.flock`, also on read-only storage.

Prepared data, feature caches and pixel caches coordinate processes with
flock on a lock file beside them. A finished cache on a read-only mount (or
one owned by another user) must still be readable, so opening the lock file
falls back from read-write to read-only (flock works on either), and to no
lock at all when the file cannot even be read.
"""

import contextlib
import logging
import os

log = logging.getLogger("tlfast")


def open_lock_file(path):
    """A file descriptor of the lock file `path` for flock, or None.

    Creates the file when it can. Returns None when it neither exists nor
    can be created (read-only storage): the caller then proceeds unlocked,
    which is safe for reading what is already complete.
    """
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        try:
            return os.open(path, os.O_RDONLY)
        except OSError:
            return None


# Locks this process holds until it exits: path -> file descriptor.
_HELD = {}


def hold(path, shared=False):
    """Takes a flock on the lock file `path` for the rest of this process.

    Non-blocking. A second call for the same path is a no-op that succeeds.

    Args:
      path: The lock file (created when possible).
      shared: A shared lock (readers) instead of an exclusive one.

    Returns:
      True when this process holds the lock; False when another process
      holds a conflicting one or the file cannot be opened.
    """
    import fcntl  # POSIX only.

    if path in _HELD:
        return True
    fd = open_lock_file(path)
    if fd is None:
        return False
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
                    | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _HELD[path] = fd
    return True


def release(path):
    """Lets go of a lock taken by `hold` (nothing when it is not held)."""
    fd = _HELD.pop(path, None)
    if fd is not None:
        os.close(fd)


@contextlib.contextmanager
def exclusive(path, waiting_message, blocking=True):
    """Holds an exclusive flock on the lock file `path`, waiting for it.

    Logs `waiting_message` when another process holds it and waits, or with
    `blocking=False` yields False at once. Yields True when held, and also
    where the file cannot be opened or flock is missing (read-only storage,
    as `open_lock_file`; Windows): then there is nothing to protect.
    """
    try:
        import fcntl
    except ImportError:  # Windows.
        fcntl = None
    fd = None if fcntl is None else open_lock_file(path)
    try:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                if not blocking:
                    yield False
                    return
                log.info(waiting_message)
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield True
    finally:
        if fd is not None:
            os.close(fd)
