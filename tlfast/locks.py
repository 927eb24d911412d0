"""Every lock tlfast takes: `fcntl.flock` on a lock file, through `lock` or `hold`.

Prepared data, feature caches, pixel caches and run folders coordinate
processes with flock on a lock file beside them:

    with locks.lock(path, waiting_message="Waiting for ..."):   # a block
        ...
    locks.hold(path, shared=True)                # the rest of the process

A finished cache on a read-only mount (or one owned by another user) must
still be readable, so opening the lock file falls back from read-write to
read-only (flock works on either), and to no lock at all when the file cannot
even be read. Where flock is missing (Windows), tlfast works unlocked. Where
the file system refuses it (some NFS and FUSE mounts answer ENOLCK /
EOPNOTSUPP), taking a lock fails with a message naming the way out: put the
caches and outputs on a local disk, or set TLFAST_UNLOCKED=1 to work
without locks (each file is still renamed into place whole by
`tlfast.atomic`, so no reader sees half of one; but two jobs on the same
folders at once could then both prepare or compute the same things).
"""

import contextlib
import errno
import logging
import os
import time

try:
    import fcntl
except ImportError:  # Windows.
    fcntl = None

log = logging.getLogger("tlfast")

# flock errors that mean "this file system cannot lock", not "taken".
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
_warned = []
# Seconds between attempts while waiting with a timeout.
_POLL_S = 0.2


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


UNLOCKED_ENV = "TLFAST_UNLOCKED"


def _unsupported(path, error):
    if os.environ.get(UNLOCKED_ENV) != "1":
        raise OSError(
            error.errno,
            f"File locks are not supported where '{path}' lives ({error}). "
            "Put --cache_dir and --output_dir on a local disk, or set "
            f"{UNLOCKED_ENV}=1 to work without locks (then never run two "
            "tlfast jobs on the same folders at once).")
    if not _warned:
        _warned.append(path)
        log.warning("File locks are not supported where '%s' lives (%s): "
                    "working without them (%s=1). Do not run two tlfast jobs "
                    "on the same caches or output folder at once.", path,
                    error, UNLOCKED_ENV)


def _try(fd, shared, path):
    """One non-blocking flock attempt: True when taken (or unsupported)."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
                    | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in _UNSUPPORTED:
            _unsupported(path, e)
            return True
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


def _wait(fd, shared, path, timeout):
    """Blocks until the flock is taken, or raises TimeoutError after `timeout` s."""
    if timeout is None:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        return
    deadline = time.monotonic() + timeout
    while not _try(fd, shared, path):
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"Waited {timeout:g} s for the lock '{path}', held by another "
                "process (another tlfast job on the same folder?). Wait for it "
                "to finish, or stop it.")
        time.sleep(_POLL_S)


@contextlib.contextmanager
def lock(path, *, shared=False, blocking=True, waiting_message=None,
         timeout=None):
    """Holds a flock on the lock file `path` for the block.

    Args:
      path: The lock file (created when possible; never deleted, as another
        process may be waiting on it).
      shared: A shared (reader) lock instead of an exclusive one.
      blocking: Wait for the lock; False yields False at once when another
        process holds a conflicting one.
      waiting_message: Logged once when the lock must be waited for.
      timeout: With `blocking`, seconds to wait before raising TimeoutError
        (None: no limit).

    Yields:
      True when held, and also where there is nothing to lock with (no
      flock, an unsupported or read-only file system: see the module
      docstring); False only with `blocking=False` when the lock is taken.
    """
    fd = None if fcntl is None else open_lock_file(path)
    try:
        if fd is not None and not _try(fd, shared, path):
            if not blocking:
                yield False
                return
            if waiting_message:
                log.info(waiting_message)
            _wait(fd, shared, path, timeout)
        yield True
    finally:
        if fd is not None:
            os.close(fd)  # Closing the descriptor releases the flock.


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
    if path in _HELD:
        return True
    fd = None if fcntl is None else open_lock_file(path)
    if fd is None:
        return False
    if not _try(fd, shared, path):
        os.close(fd)
        return False
    _HELD[path] = fd
    return True


def release(path):
    """Lets go of a lock taken by `hold` (nothing when it is not held)."""
    fd = _HELD.pop(path, None)
    if fd is not None:
        os.close(fd)
