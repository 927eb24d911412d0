"""Lock files for `fcntl.flock`, also on read-only storage.

Prepared data, feature caches and pixel caches coordinate processes with
flock on a lock file beside them. A finished cache on a read-only mount (or
one owned by another user) must still be readable, so opening the lock file
falls back from read-write to read-only (flock works on either), and to no
lock at all when the file cannot even be read.
"""

import os


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
