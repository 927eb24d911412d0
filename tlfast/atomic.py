"""Atomic writes: every file tlfast writes goes through here.

A file is written to a temporary file beside its target, flushed to disk
(`fsync`) and renamed over the target, and the folder is flushed too: a reader, a crash or a kill never
sees half of it, and the previous version stays until the new one is
complete. On any error the temporary file is removed and the target is left
as it was.

`tempfile.mkstemp` creates files readable by their owner only (0600), which
the rename would give the final file: metrics, split files and caches that
other users of a shared cache or output folder could not read. These
temporary files get the permissions a plain `open` would give.

    write_json(path, {"a": 1})
    with replacing(path) as tmp:          # for writers that want a path
        model.save(tmp)                   # (the suffix is the target's)
    with open_atomic(path, "wb") as f:    # for writers that want a file
        np.savez(f, ...)
"""

import contextlib
import csv
import io
import json
import os
import shutil
import tempfile

# The process's umask, read once (reading it means setting it).
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def json_text(obj):
    """The one JSON layout of tlfast's files (sorted keys, one-space indent)."""
    return json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n"


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


def _remove(path):
    with contextlib.suppress(OSError):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


def _fsync_one(path):
    """Flushes one file or folder entry to disk; best effort (some FUSE
    mounts refuse fsync, or folders' fsync)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync(path):
    """Flushes a written file to disk (a folder: each of its files)."""
    paths = [path]
    if os.path.isdir(path):
        paths = [os.path.join(d, n) for d, _, names in os.walk(path)
                 for n in names]
    for p in paths:
        _fsync_one(p)


def publish(tmp, path):
    """Flushes `tmp` (a file or a folder) to disk and renames it to `path`.

    `tmp` must be on `path`'s file system (beside it). A folder replaces an
    existing folder: the old one is moved aside first and deleted after (a
    reader may find neither for that moment).
    """
    _fsync(tmp)
    if os.path.isdir(tmp) and os.path.isdir(path):
        old = tmp + ".old"
        os.replace(path, old)
        os.replace(tmp, path)
        _remove(old)
    else:
        os.replace(tmp, path)
    # The rename is in the folder's own data: flushed too.
    _fsync_one(os.path.dirname(os.path.abspath(path)))


@contextlib.contextmanager
def replacing(path, prefix=".tmp-", suffix=None, folder=False):
    """Yields a temporary path beside `path`; renames it over `path` at the end.

    The temporary path exists, as an empty file (or an empty folder with
    `folder=True`, for writers of folders such as a SavedModel). Its suffix
    is the target's: `model.save` and `savefig` choose the format by it. On
    an error the temporary path is removed and `path` is left as it was.

    Args:
      path: The final path.
      prefix: Prefix of the temporary name (hidden by default).
      suffix: Suffix of the temporary name; default: the target's extension.
      folder: Create a temporary folder instead of a file.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    if suffix is None:
        suffix = os.path.splitext(path)[1]
    if folder:
        tmp = tempfile.mkdtemp(dir=directory, prefix=prefix, suffix=suffix)
    else:
        fd, tmp = mkstemp(directory, prefix=prefix, suffix=suffix)
        os.close(fd)
    try:
        yield tmp
        publish(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def open_atomic(path, mode="w", prefix=".tmp-", **kwargs):
    """`open(path, mode)` on a temporary file that replaces `path` when closed.

    Args:
      path: The final path.
      mode: "w" or "wb" (text mode defaults to UTF-8 and newline="").
      prefix: Prefix of the temporary name.
      **kwargs: More arguments for `open`.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb'. Received: mode={mode!r}")
    if mode == "w":
        kwargs.setdefault("encoding", "utf-8")
        kwargs.setdefault("newline", "")
    with replacing(path, prefix=prefix) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f


def write_bytes(path, data):
    with open_atomic(path, "wb") as f:
        f.write(data)


def write_text(path, text):
    with open_atomic(path, "w") as f:
        f.write(text)


def append_text(path, text):
    """Appends `text` to `path` and syncs it (an append-only log, e.g. the
    scan cache: a reader must skip a last line cut short by a crash)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        data = text.encode("utf-8")
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path, obj):
    write_text(path, json_text(obj))


# A spreadsheet opening a CSV runs a cell starting with these as a formula
# (CSV injection): a class or file name "=HYPERLINK(...)" would be one.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value):
    """A text cell a spreadsheet shows as text: "'" before a formula start.

    Numbers (not str) are left alone; `csv_value` undoes it.
    """
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def csv_value(cell):
    """The value `csv_cell` made `cell` from."""
    if cell.startswith("'") and cell[1:].startswith(_FORMULA_START):
        return cell[1:]
    return cell


def csv_text(header, rows):
    """CSV text (header line, then rows), as `write_csv` writes it.

    Text cells are neutralised with `csv_cell`: the files tlfast writes are
    meant to be opened in spreadsheets.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([csv_cell(h) for h in header])
    writer.writerows([csv_cell(v) for v in row] for row in rows)
    return buffer.getvalue()


def write_csv(path, header, rows):
    """Writes a CSV file atomically.

    Args:
      path: The final path.
      header: Column names.
      rows: Sequences of cell values, in the header's order.
    """
    write_text(path, csv_text(header, rows))
