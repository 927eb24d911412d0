"""Temporary files for atomic writes: written beside the target, then renamed.

`tempfile.mkstemp` creates files readable by their owner only (0600), which
the rename then gives to the final file: metrics, split files and caches
that other users of a shared cache or output folder could not read. These
temporary files get the permissions a plain `open` would give.
"""

import os
import tempfile

# The process's umask, read once (reading it means setting it).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def mkstemp(directory, prefix=".tmp-", suffix=""):
    """`tempfile.mkstemp` in `directory`, with 0666 & ~umask permissions.

    Returns:
      (fd, path) of the new, empty, open file.
    """
    fd, path = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=suffix)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
    except OSError:  # E.g. a file system without permissions: keep going.
        pass
    return fd, path
