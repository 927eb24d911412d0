"""Validation scan: decode every file once, in parallel, and remember the verdict.

A file is usable when TensorFlow's own decoder (the one the pipeline uses)
decodes it. The format comes from the header, never the extension, so a PNG
named `.jpg` is used and a text file named `.jpg` is skipped with a reason.
Verdicts are remembered per (path, size, mtime) in an append-only file under the
cache directory, so re-scanning an unchanged folder only costs `stat` calls.
"""

import collections
import concurrent.futures
import dataclasses
import math
import os
import re
import time

import numpy as np
import tensorflow as tf

from tlfast.config import DEFAULT_MAX_PIXELS
from tlfast.data import headers
from tlfast.data import pipeline
from tlfast.data import scan_cache
from tlfast.data.sources import FileEntry
from tlfast.data.sources import Skipped

# 2: alpha WebP decoded (was "corrupt"); palette BMP and animated WebP
# refused with their reasons (the first decoded wrongly).
SCAN_CACHE_VERSION = 2
# Below this a "photo" carries no usable content (tracking pixels, icons).
MIN_SIDE = 8
# How often a long scan saves its verdicts, so that a killed scan resumes:
# every 5 s or 4096 files, whichever comes first (each checkpoint appends
# only what it adds, see `tlfast.data.scan_cache`).
CHECKPOINT_SECONDS = 5.0
CHECKPOINT_FILES = 4096
PLACEHOLDER_MAX_COLOURS = 64


@dataclasses.dataclass(frozen=True)
class ScanResult:
    """What the scan found.

    Attributes:
      usable: The `FileEntry`s that decode, in input order.
      skipped: `Skipped(path, reason)` for every file left out.
      cached: How many verdicts came from the scan cache.
      images: Path -> `headers.ImageFile` of usable files as this scan read
        and checked them, up to `scan_files`'s `keep_bytes` in all.
    """

    usable: tuple
    skipped: tuple
    cached: int = 0
    images: dict = dataclasses.field(default_factory=dict, repr=False)


class BadImagesError(ValueError):
    """Raised by a strict scan; `.skipped` lists every bad file."""

    def __init__(self, skipped):
        self.skipped = tuple(skipped)
        lines = "\n".join(f"  {s.path}: {s.reason}" for s in self.skipped)
        super().__init__(
            f"{len(self.skipped)} file(s) cannot be used as images (strict "
            f"mode). Fix or remove them, or run without strict to skip them:\n"
            f"{lines}")


def placeholder_reason(image):
    """Says why a decoded image looks like a placeholder graphic, or None.

    Photo sites serve "image not found" graphics in place of deleted photos
    (hymenoptera's `imageNotFound.gif` is one). Such a graphic has a handful
    of exact colours and one background colour covering most of it; a photo,
    even a JPEG of a white-background product, has hundreds of distinct
    colours from sensor noise and compression.

    Args:
      image: uint8 array [H, W, 3].
    """
    step = _sample_step(image.shape[0], image.shape[1])
    sample = image[::step, ::step].reshape(-1, 3).astype(np.int32)
    packed = (sample[:, 0] << 16) | (sample[:, 1] << 8) | sample[:, 2]
    colours, counts = np.unique(packed, return_counts=True)
    return _placeholder_text(len(colours), counts.max() / counts.sum())


def _sample_step(height, width):
    """Every step-th row and column: about 4096 pixels are looked at."""
    return max(1, int(math.sqrt(height * width / 4096)))


def _placeholder_text(colours, dominant):
    if colours <= PLACEHOLDER_MAX_COLOURS and dominant >= 0.5:
        return (f"looks like a placeholder graphic, not a photo: "
                f"{colours} colour(s), {dominant:.0%} of it one colour "
                "(e.g. an 'image not found' image); to keep such images pass "
                "--noskip_placeholders (skip_placeholders=False)")
    return None


def _read_checked(path, max_pixels):
    """(reason, None) for a file refused before decoding, else (None, ImageFile)."""
    try:
        image_file = headers.read_image_file(path, max_pixels)
    except headers.Refused as e:
        return str(e), None
    data, fmt = image_file.data, image_file.format
    reason = (headers.bmp_reason(data) if fmt == "bmp" else
              headers.webp_reason(data) if fmt == "webp" else None)
    return (reason, None) if reason else (None, image_file)


def _size_reason(height, width, max_pixels):
    if height * width > max_pixels:  # The header said less: forged.
        return (f"image too large: {width}x{height} pixels exceeds the limit "
                f"of {max_pixels} (decompression-bomb guard)")
    if min(height, width) < MIN_SIDE:
        return (f"image too small: {width}x{height} pixels (need at least "
                f"{MIN_SIDE} on each side)")
    return None


def check_image(path, max_pixels=DEFAULT_MAX_PIXELS, skip_placeholders=True):
    """Decides whether one file is a usable image.

    Args:
      path: File to check.
      max_pixels: Larger images are refused before decoding (see
        `tlfast.data.headers`: frames count for animated GIFs).
      skip_placeholders: Refuse blank / "image not found" graphics.

    Returns:
      `(None, info)` when usable, where info is a dict with "format",
      "height", "width"; else `(reason, None)` with a specific reason.
    """
    reason, image_file = _read_checked(path, max_pixels)
    if reason:
        return reason, None
    data, fmt = image_file.data, image_file.format
    try:
        # With the pipeline's decoders, so what passes here decodes there.
        image = pipeline.decode_stored(data, fmt)
    except (tf.errors.InvalidArgumentError, tf.errors.ResourceExhaustedError) as e:
        message = str(e.message if hasattr(e, "message") else e).split("[Op:")[0]
        # Drop TF's "{{function_node ...}}" prefix: it names the op, not the file.
        message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", message)
        return f"corrupt or truncated {fmt}: {message.strip()}", None
    height, width = int(image.shape[0]), int(image.shape[1])
    reason = _size_reason(height, width, max_pixels)
    if reason:
        return reason, None
    if skip_placeholders:
        reason = placeholder_reason(image.numpy())
        if reason:
            return reason, None
    return None, {"format": fmt, "height": height, "width": width}


def _decoded_stats(data, is_jpeg):
    """(height, width, colours, dominant count, sampled pixels) of encoded
    bytes: what `check_image` judges, as graph ops for a tf.data map."""
    image = tf.cond(is_jpeg, lambda: tf.io.decode_jpeg(data, channels=3),
                    lambda: pipeline.decode_stored(data, "other"))
    shape = tf.shape(image)
    step = tf.maximum(1, tf.cast(tf.sqrt(
        tf.cast(shape[0] * shape[1], tf.float64) / 4096.0), tf.int32))
    sample = tf.cast(image[::step, ::step], tf.int32)
    packed = tf.reshape(sample[..., 0] * 65536 + sample[..., 1] * 256
                        + sample[..., 2], [-1])
    _, _, counts = tf.unique_with_counts(packed)
    return (shape[0], shape[1], tf.size(counts), tf.reduce_max(counts),
            tf.size(packed))


# Files decoded by one call; a chunk with a file that does not decode is
# judged again file by file (`check_image`), for each file's reason.
_CHUNK = 64
_STATS_SPEC = (tf.TensorSpec([], tf.int32),) * 5


@tf.function(input_signature=[tf.TensorSpec([None], tf.string),
                              tf.TensorSpec([None], tf.bool)])
def _chunk_stats(data, is_jpeg):
    return tf.map_fn(lambda x: _decoded_stats(*x), (data, is_jpeg),
                     fn_output_signature=_STATS_SPEC)


def _judge_chunk(chunk, max_pixels, skip_placeholders):
    """[(path, reason, [size, mtime_ns] or None, ImageFile or None)] of a
    chunk of paths: read, then decoded in one call. The stat and the
    `headers.ImageFile` are of the file that was read (None where it could
    not be)."""
    out, read = [], []
    for path in chunk:
        reason, image_file = _read_checked(path, max_pixels)
        if reason:
            out.append((path, reason, None, None))
        else:
            read.append((path, image_file))
    if not read:
        return out
    try:
        stats = _chunk_stats(tf.constant([f.data for _, f in read], tf.string),
                             tf.constant([f.format == "jpeg" for _, f in read]))
    except (tf.errors.InvalidArgumentError, tf.errors.ResourceExhaustedError):
        return out + [(path, check_image(path, max_pixels, skip_placeholders)[0],
                       [f.size, f.mtime_ns], f) for path, f in read]
    for (path, f), (height, width, colours, top, total) in zip(
            read, zip(*(s.numpy() for s in stats))):
        reason = _size_reason(int(height), int(width), max_pixels)
        if reason is None and skip_placeholders:
            reason = _placeholder_text(int(colours), top / total)
        out.append((path, reason, [f.size, f.mtime_ns], f))
    return out


def _verdicts(paths, max_pixels, skip_placeholders):
    """Yields (path, reason or None, stat or None, ImageFile or None) for
    `paths`, chunk by chunk, in order (see `_judge_chunk`).

    Each chunk of files is read through the guard, then decoded and judged
    by one traced call (`_chunk_stats`), chunks in a thread per core. A
    thread pool calling `check_image` per file ran at 330 us a 48-px JPEG
    with one thread and worse with more (eager calls contend for the GIL),
    and a tf.data pipeline fed by a generator at 390 (`from_generator` alone
    costs 274 us an element).
    """
    # One thread more than cores: a thread's reads (Python, holding the GIL)
    # overlap the others' decoding. 20k 48-px JPEGs on 2 cores: 1.35 s with
    # 2 threads, 1.09 with 3, 1.07 with 4.
    threads = (os.cpu_count() or 1) + 1
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        # A few chunks in flight, not every file of a large folder at once.
        pending = collections.deque()
        for start in range(0, len(paths), _CHUNK):
            pending.append(pool.submit(_judge_chunk, paths[start:start + _CHUNK],
                                       max_pixels, skip_placeholders))
            if len(pending) > 2 * threads:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def _stat_key(path):
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def scan_files(entries, *, root=None, cache_dir=None, max_pixels=DEFAULT_MAX_PIXELS,
               skip_placeholders=True, strict=False, progress=None,
               keep_bytes=0):
    """Checks every file by decoding it, in parallel.

    Args:
      entries: `FileEntry`s (see `tlfast.data.sources`).
      root: Dataset root; with `cache_dir`, names the scan cache file.
      cache_dir: Where verdicts are remembered; None disables the cache.
      max_pixels: Decompression-bomb guard (width * height).
      skip_placeholders: Skip blank / "image not found" graphics.
      strict: Raise `BadImagesError` listing every bad file instead of
        skipping them.
      progress: Optional callable(done, total) over the files not cached.
      keep_bytes: Keep the bytes of usable files this scan reads, up to this
        many in all (`ScanResult.images`), for a caller that stores them.

    Returns:
      A `ScanResult`.
    """
    entries = list(entries)
    options = [max_pixels, bool(skip_placeholders)]
    cache = scan_cache.ScanCache(scan_cache.cache_file(
        cache_dir, root or ""), SCAN_CACHE_VERSION) if cache_dir else None
    known = cache.load() if cache else {}
    verdicts, todo, stats = {}, [], {}
    for entry in entries:
        record = known.get(entry.path)
        if not record:
            # Stat as it is read: a cold scan of 20k files spent 0.2 s on a
            # stat pass before reading them.
            todo.append(entry.path)
            continue
        try:
            stats[entry.path] = _stat_key(entry.path)
        except OSError as e:
            verdicts[entry.path] = f"cannot read file: {e.strerror or e}"
            continue
        if (record["stat"] == stats[entry.path]
                and record.get("options") == options):
            verdicts[entry.path] = record["reason"]
        else:
            todo.append(entry.path)
    cached = len(entries) - len(todo)

    unsaved = []  # Checked since the last checkpoint.

    def save():
        new = {p: {"stat": stats[p], "reason": verdicts[p], "options": options}
               for p in unsaved}
        cache.append(new)
        known.update(new)
        unsaved.clear()

    last_save = time.monotonic()
    images, kept = {}, 0
    for done, (path, reason, stat, image_file) in enumerate(
            _verdicts(todo, max_pixels, skip_placeholders), 1):
        verdicts[path] = reason
        if (reason is None and image_file
                and kept + len(image_file.data) <= keep_bytes):
            images[path] = image_file
            kept += len(image_file.data)
        try:
            stats[path] = stat or _stat_key(path)
            unsaved.append(path)
        except OSError:
            pass  # Gone or unreadable: its verdict is not remembered.
        if progress and (done % 256 == 0 or done == len(todo)):
            progress(done, len(todo))
        # Checkpoint now and then: a killed scan keeps what it checked.
        if cache and (len(unsaved) >= CHECKPOINT_FILES or
                      time.monotonic() - last_save > CHECKPOINT_SECONDS):
            save()
            last_save = time.monotonic()
    if cache and unsaved:
        save()
    if cache:
        cache.compact(known)
    usable, skipped = [], []
    for entry in entries:
        reason = verdicts[entry.path]
        if reason is None:
            usable.append(FileEntry(entry.path, entry.relpath, entry.label,
                                    stats[entry.path][0]))
        else:
            skipped.append(Skipped(entry.path, reason))
    if strict and skipped:
        raise BadImagesError(skipped)
    return ScanResult(tuple(usable), tuple(skipped), cached, images)
