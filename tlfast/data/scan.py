"""Validation scan: decode every file once, in parallel, and remember the verdict.

A file is usable when TensorFlow's own decoder (the one the pipeline uses)
decodes it. The format comes from the header, never the extension, so a PNG
named `.jpg` is used and a text file named `.jpg` is skipped with a reason.
Verdicts are remembered per (path, size, mtime) in a small JSON file under the
cache directory, so re-scanning an unchanged folder only costs `stat` calls.
"""

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import re
import struct
import time

import numpy as np
import tensorflow as tf

from tlfast import atomic
from tlfast.config import DEFAULT_MAX_PIXELS
from tlfast.data import pipeline
from tlfast.data.sources import Skipped

# 2: alpha WebP decoded (was "corrupt"); palette BMP and animated WebP
# refused with their reasons (the first decoded wrongly).
SCAN_CACHE_VERSION = 2
# Below this a "photo" carries no usable content (tracking pixels, icons).
MIN_SIDE = 8
# How often a long scan saves its verdicts, so that a killed scan resumes.
CHECKPOINT_SECONDS = 5.0
PLACEHOLDER_MAX_COLOURS = 64


@dataclasses.dataclass(frozen=True)
class ScanResult:
    """What the scan found.

    Attributes:
      usable: The `FileEntry`s that decode, in input order.
      skipped: `Skipped(path, reason)` for every file left out.
      cached: How many verdicts came from the scan cache.
    """

    usable: tuple
    skipped: tuple
    cached: int = 0


class BadImagesError(ValueError):
    """Raised by a strict scan; `.skipped` lists every bad file."""

    def __init__(self, skipped):
        self.skipped = tuple(skipped)
        lines = "\n".join(f"  {s.path}: {s.reason}" for s in self.skipped)
        super().__init__(
            f"{len(self.skipped)} file(s) cannot be used as images (strict "
            f"mode). Fix or remove them, or run without strict to skip them:\n"
            f"{lines}")


def sniff_format(header):
    """Names the image format from the first bytes of a file.

    Args:
      header: At least the first 32 bytes of the file.

    Returns:
      "jpeg", "png", "gif", "bmp", "webp", or the name of a known format TF
      cannot decode ("tiff", "heic", ...), or None when unrecognised.
    """
    if header[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if header[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if header[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if header[:2] == b"BM":
        return "bmp"
    if header[:4] == b"RIFF" and header[8:12] == b"WEBP":
        return "webp"
    if header[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if header[4:8] == b"ftyp":
        return "heic/avif"
    if header[:4] == b"%PDF":
        return "pdf"
    return None


def _webp_size(data):
    """(height, width) from the first chunk of a WebP file (RFC 9649)."""
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # Lossy.
        w, h = struct.unpack("<HH", data[26:30])
        return h & 0x3FFF, w & 0x3FFF
    if chunk == b"VP8L" and data[20:21] == b"\x2f":  # Lossless.
        bits = struct.unpack("<I", data[21:25])[0]
        return ((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1
    if chunk == b"VP8X":  # Extended: the canvas size.
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return h, w
    return None


def _bmp_reason(data):
    """Why TF would decode a BMP wrongly (palette images), or None."""
    try:
        header_size, = struct.unpack("<I", data[14:18])
        if header_size < 40:  # OS/2 core header: left to the decoder.
            return None
        bits, = struct.unpack("<H", data[28:30])
        if bits > 8:
            return None
        if bits < 8:
            return (f"{bits}-bit BMP: TensorFlow cannot decode it (convert it "
                    "to PNG)")
        used = struct.unpack("<I", data[46:50])[0] or 256
        start = 14 + header_size
        palette = np.frombuffer(data[start:start + 4 * used], np.uint8)
        palette = palette.reshape(-1, 4)[:, :3]
    except (struct.error, ValueError):
        return None  # Malformed: the decoder says how.
    # TF reads the colour indices as grey levels: right only for a grey
    # palette whose entry i is (i, i, i).
    if np.array_equal(palette, np.repeat(np.arange(len(palette))[:, None], 3, 1)):
        return None
    return ("palette BMP (8-bit colour table): TensorFlow would read its "
            "colour indices as grey levels (convert it to PNG)")


def _webp_reason(data):
    """Animated WebP, which TensorFlow does not decode, or None."""
    if data[12:16] == b"VP8X" and len(data) > 20 and data[20] & 0x02:
        return ("animated WebP: TensorFlow decodes only still WebP images "
                "(convert it to GIF, or its first frame to PNG)")
    return None


def _header_size(fmt, data):
    """(height, width) from the header, or None when it does not say."""
    try:
        if fmt == "jpeg":
            h, w, _ = tf.image.extract_jpeg_shape(data).numpy()
            return int(h), int(w)
        if fmt == "png":
            w, h = struct.unpack(">II", data[16:24])
            return h, w
        if fmt == "gif":
            w, h = struct.unpack("<HH", data[6:10])
            return h, w
        if fmt == "bmp":
            w, h = struct.unpack("<ii", data[18:26])
            return abs(h), abs(w)
        if fmt == "webp":
            return _webp_size(data)
    except (tf.errors.InvalidArgumentError, struct.error):
        return None
    return None


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
    step = max(1, int((image.shape[0] * image.shape[1] / 4096) ** 0.5))
    sample = image[::step, ::step].reshape(-1, 3).astype(np.int32)
    packed = (sample[:, 0] << 16) | (sample[:, 1] << 8) | sample[:, 2]
    colours, counts = np.unique(packed, return_counts=True)
    dominant = counts.max() / counts.sum()
    if len(colours) <= PLACEHOLDER_MAX_COLOURS and dominant >= 0.5:
        return (f"looks like a placeholder graphic, not a photo: "
                f"{len(colours)} colour(s), {dominant:.0%} of it one colour "
                "(e.g. an 'image not found' image); to keep such images pass "
                "--noskip_placeholders (skip_placeholders=False)")
    return None


def check_image(path, max_pixels=DEFAULT_MAX_PIXELS, skip_placeholders=True):
    """Decides whether one file is a usable image.

    Args:
      path: File to check.
      max_pixels: Larger images are refused before decoding.
      skip_placeholders: Refuse blank / "image not found" graphics.

    Returns:
      `(None, info)` when usable, where info is a dict with "format",
      "height", "width"; else `(reason, None)` with a specific reason.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return f"cannot read file: {e.strerror or e}", None
    if not data:
        return "empty file (0 bytes)", None
    fmt = sniff_format(data[:32])
    if fmt is None:
        return "not an image (unrecognised file header)", None
    if fmt not in ("jpeg", "png", "gif", "bmp", "webp"):
        return f"unsupported image format '{fmt}' (convert it to JPEG or PNG)", None
    reason = (_bmp_reason(data) if fmt == "bmp" else
              _webp_reason(data) if fmt == "webp" else None)
    if reason:
        return reason, None
    size = _header_size(fmt, data)
    if size is not None and size[0] * size[1] > max_pixels:
        return (f"image too large: {size[1]}x{size[0]} pixels exceeds the "
                f"limit of {max_pixels} (decompression-bomb guard)"), None
    try:
        image = pipeline.decode_rgb(data)  # As the pipeline will decode it.
    except (tf.errors.InvalidArgumentError, tf.errors.ResourceExhaustedError) as e:
        message = str(e.message if hasattr(e, "message") else e).split("[Op:")[0]
        # Drop TF's "{{function_node ...}}" prefix: it names the op, not the file.
        message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", message)
        return f"corrupt or truncated {fmt}: {message.strip()}", None
    height, width = int(image.shape[0]), int(image.shape[1])
    if height * width > max_pixels:
        return (f"image too large: {width}x{height} pixels exceeds the limit "
                f"of {max_pixels} (decompression-bomb guard)"), None
    if min(height, width) < MIN_SIDE:
        return (f"image too small: {width}x{height} pixels (need at least "
                f"{MIN_SIDE} on each side)"), None
    if skip_placeholders:
        reason = placeholder_reason(image.numpy())
        if reason:
            return reason, None
    return None, {"format": fmt, "height": height, "width": width}


def _stat_key(path):
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def _cache_file(cache_dir, root):
    digest = hashlib.sha256(os.path.abspath(root).encode()).hexdigest()[:16]
    return os.path.join(cache_dir, "scan", f"{digest}.json")


def _load_cache(path):
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    if data.get("version") != SCAN_CACHE_VERSION:
        return {}
    return data.get("files", {})


def scan_files(entries, *, root=None, cache_dir=None, max_pixels=DEFAULT_MAX_PIXELS,
               skip_placeholders=True, strict=False, num_workers=None,
               progress=None):
    """Checks every file by decoding it, in parallel.

    Args:
      entries: `FileEntry`s (see `tlfast.data.sources`).
      root: Dataset root; with `cache_dir`, names the scan cache file.
      cache_dir: Where verdicts are remembered; None disables the cache.
      max_pixels: Decompression-bomb guard (width * height).
      skip_placeholders: Skip blank / "image not found" graphics.
      strict: Raise `BadImagesError` listing every bad file instead of
        skipping them.
      num_workers: Decoding threads; default twice the CPU count (TF ops
        release the GIL while decoding).
      progress: Optional callable(done, total) over the files not cached.

    Returns:
      A `ScanResult`.
    """
    entries = list(entries)
    options = [max_pixels, bool(skip_placeholders)]
    cache_path = _cache_file(cache_dir, root or "") if cache_dir else None
    known = _load_cache(cache_path) if cache_path else {}
    verdicts, todo, stats = {}, [], {}
    for entry in entries:
        try:
            stats[entry.path] = _stat_key(entry.path)
        except OSError as e:
            verdicts[entry.path] = f"cannot read file: {e.strerror or e}"
            continue
        record = known.get(entry.path)
        if (record and record["stat"] == stats[entry.path]
                and record.get("options") == options):
            verdicts[entry.path] = record["reason"]
        else:
            todo.append(entry.path)
    cached = len(entries) - len(todo)
    workers = num_workers or 2 * (os.cpu_count() or 1)

    def save():
        files = {p: {"stat": stats[p], "reason": verdicts[p], "options": options}
                 for p in stats if p in verdicts}
        # Keep verdicts of files outside this listing (e.g. other splits).
        merged = {k: v for k, v in known.items() if k not in files}
        merged.update(files)
        try:
            atomic.write_json(cache_path,
                              {"version": SCAN_CACHE_VERSION, "files": merged})
        except OSError as e:
            raise OSError(
                f"Cannot write the scan cache '{cache_path}': {e}. Pass a "
                "writable cache_dir (or --cache_dir).") from e

    last_save = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        results = pool.map(
            lambda p: check_image(p, max_pixels, skip_placeholders), todo)
        for done, (path, (reason, _)) in enumerate(zip(todo, results), 1):
            verdicts[path] = reason
            if progress and (done % 256 == 0 or done == len(todo)):
                progress(done, len(todo))
            # Checkpoint now and then: a killed scan keeps what it checked.
            if cache_path and time.monotonic() - last_save > CHECKPOINT_SECONDS:
                save()
                last_save = time.monotonic()
    if cache_path and todo:
        save()
    usable, skipped = [], []
    for entry in entries:
        reason = verdicts[entry.path]
        if reason is None:
            usable.append(entry)
        else:
            skipped.append(Skipped(entry.path, reason))
    if strict and skipped:
        raise BadImagesError(skipped)
    return ScanResult(tuple(usable), tuple(skipped), cached)
