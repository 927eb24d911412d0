"""The tf.data pixel pipeline: decode to uint8 -> cache -> shuffle -> batch -> prefetch.

Elements are dicts, `{"image": uint8 [H, W, 3], "label": int32 []}`; the
model boundary turns them into tuples (`to_supervised`). Nothing random runs
before the cache: augmentation lives inside the model, so every epoch sees new
augmentations of the same cached pixels. Pixels stay uint8 all the way to the
device, a quarter of the bytes of float32 to cache and to transfer.
"""

import dataclasses
import glob
import hashlib
import json
import logging
import os

import tensorflow as tf

from tlfast import atomic
from tlfast import locks
from tlfast.config import DEFAULT_RESIZE
from tlfast.config import RESIZE_MODES
from tlfast.data import orientation

CACHE_MODES = ("auto", "memory", "disk", "none")
# Part of every pixel and feature cache key: bump it whenever the pixels a
# file decodes to change. 2: JPEGs turned upright by their EXIF Orientation.
DECODE_VERSION = 2


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """How images become batches.

    Attributes:
      image_size: Side of the square uint8 images.
      batch_size: Examples per batch.
      resize: "resize" (stretch), "crop" (centre crop to square, then resize)
        or "pad" (letterbox to square, then resize).
      cache: "auto" (RAM when the estimate fits `ram_budget_mb`, else disk),
        "memory", "disk" or "none".
      ram_budget_mb: RAM the pixel cache and the shuffle buffer may use.
      cache_dir: Folder for the disk cache; required for disk caching.
      seed: Shuffle seed.
    """

    image_size: int = 224
    batch_size: int = 32
    resize: str = DEFAULT_RESIZE
    cache: str = "auto"
    ram_budget_mb: int = 2048
    cache_dir: str = None
    seed: int = 0

    def __post_init__(self):
        if self.image_size < 1:
            raise ValueError(
                f"image_size must be a positive integer. Received: "
                f"image_size={self.image_size!r}")
        if self.batch_size < 1:
            raise ValueError(
                "batch_size must be a positive integer. Received: "
                f"batch_size={self.batch_size!r}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(
                f"resize must be one of {RESIZE_MODES}. Received: "
                f"resize={self.resize!r}")
        if self.cache not in CACHE_MODES:
            raise ValueError(
                f"cache must be one of {CACHE_MODES}. Received: "
                f"cache={self.cache!r}")
        if self.ram_budget_mb < 0:
            raise ValueError(
                "ram_budget_mb must be >= 0. Received: "
                f"ram_budget_mb={self.ram_budget_mb!r}")

    @property
    def image_bytes(self):
        return self.image_size * self.image_size * 3


def resize_image(image, image_size, mode=DEFAULT_RESIZE):
    """Resizes one decoded image to a square uint8 image.

    Args:
      image: uint8 tensor [H, W, 3].
      image_size: Output side.
      mode: One of `RESIZE_MODES`.

    Returns:
      uint8 tensor [image_size, image_size, 3].
    """
    size = (image_size, image_size)
    if mode == "crop":
        shape = tf.shape(image)
        h, w = shape[0], shape[1]
        side = tf.minimum(h, w)
        image = tf.image.crop_to_bounding_box(
            image, (h - side) // 2, (w - side) // 2, side, side)
        image = tf.image.resize(image, size)
    elif mode == "pad":
        image = tf.image.resize_with_pad(image, image_size, image_size)
    else:
        image = tf.image.resize(image, size)
    image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
    return tf.ensure_shape(image, (image_size, image_size, 3))


def _byte(header, position):
    """The byte at `position` of a (padded) header string, as int32."""
    return tf.cast(tf.io.decode_raw(tf.strings.substr(header, position, 1),
                                    tf.uint8)[0], tf.int32)


def decode_rgb(data):
    """Decodes JPEG/PNG/GIF/BMP/WebP bytes (format from the header) to RGB.

    Grayscale, RGBA, CMYK and 16-bit images all become RGB uint8; an animated
    GIF gives its first frame; a JPEG is turned upright as its EXIF
    Orientation says (`tlfast.data.orientation`). Works eagerly, in
    `tf.function` and in `tf.data`.

    Args:
      data: Scalar string tensor, the encoded file.

    Returns:
      uint8 tensor [H, W, 3].
    """
    # JPEG (most photos) straight to its decoder: the same kernel that
    # decode_image would pick, without the format dispatch around it.
    is_jpeg = tf.equal(tf.strings.substr(data, 0, 3), b"\xff\xd8\xff")
    image = tf.cond(
        is_jpeg,
        lambda: orientation.upright(tf.io.decode_jpeg(data, channels=3),
                                    orientation.exif_orientation(data)),
        lambda: _decode_other(data))
    image.set_shape((None, None, 3))
    return image


def decode_stored(data, fmt):
    """`decode_rgb`'s pixels before the EXIF turn, for a known format.

    For the scan, eagerly, file by file: the JPEG decoder alone is one op
    (78 us a 48-px image here) where `decode_rgb`'s format dispatch and
    EXIF parse are a dozen (510 us eagerly). The turn changes neither the
    size, nor the colours, nor whether the file decodes.

    Args:
      data: The encoded bytes (str or scalar string tensor).
      fmt: `tlfast.data.headers.sniff_format`'s name for them.
    """
    if fmt == "jpeg":
        return tf.io.decode_jpeg(data, channels=3)
    return _decode_other(tf.convert_to_tensor(data))


def _decode_other(data):
    # Padded: substr past the end of a short (broken) file would raise.
    header = tf.strings.join([tf.strings.substr(data, 0, 21), b"\0" * 21])
    is_webp = tf.logical_and(
        tf.equal(tf.strings.substr(header, 0, 4), b"RIFF"),
        tf.equal(tf.strings.substr(header, 8, 4), b"WEBP"))
    animated = tf.logical_and(
        tf.equal(tf.strings.substr(header, 12, 4), b"VP8X"),
        tf.not_equal(tf.bitwise.bitwise_and(_byte(header, 20), 2), 0))
    # TF decodes a WebP only to its own channel count: RGBA when it has
    # alpha (channels=3 fails on it). Not an animated one: decoding that
    # natively can crash the process; channels=3 refuses it cleanly.
    return tf.cond(
        tf.logical_and(is_webp, tf.logical_not(animated)),
        lambda: tf.io.decode_image(data, channels=0,
                                   expand_animations=False)[..., :3],
        lambda: tf.io.decode_image(data, channels=3, dtype=tf.uint8,
                                   expand_animations=False))


def decode_image(data, image_size, mode=DEFAULT_RESIZE):
    """Decodes JPEG/PNG/GIF/BMP/WebP bytes (format from the header) to uint8.

    Grayscale, RGBA, CMYK and 16-bit images all become RGB uint8; an animated
    GIF gives its first frame.

    Args:
      data: Scalar string tensor, the encoded file.
      image_size: Output side.
      mode: One of `RESIZE_MODES`.

    Returns:
      uint8 tensor [image_size, image_size, 3].
    """
    return to_size(decode_rgb(data), image_size, mode)


def to_size(image, image_size, mode=DEFAULT_RESIZE):
    """uint8 [H, W, 3] -> uint8 [image_size, image_size, 3] by `mode`."""
    shape = tf.shape(image)
    # Already the target size (e.g. a folder resized beforehand): every mode
    # would return the image unchanged, so skip the float round trip.
    image = tf.cond(
        tf.logical_and(tf.equal(shape[0], image_size),
                       tf.equal(shape[1], image_size)),
        lambda: image,
        lambda: resize_image(image, image_size, mode))
    # Outside the cond: in a tf.function (not tf.data) an EnsureShape inside
    # the untaken branch still runs, and fails on every other size.
    return tf.ensure_shape(image, (image_size, image_size, 3))


def files_dataset(entries, image_size, resize=DEFAULT_RESIZE,
                  indices=None):
    """Decoded, unbatched, uncached elements for a list of files.

    Args:
      entries: `FileEntry`s that passed the scan (with their `size`: a file
        whose size changed since is dropped).
      image_size: Output side.
      resize: One of `RESIZE_MODES`.
      indices: Optional int per entry, passed through as "index" so that
        consumers can match outputs to inputs even if an element is dropped.

    Returns:
      A `tf.data.Dataset` of {"image": uint8 [S, S, 3], "label": int32 []
      [, "index": int32 []]}, in the order of `entries`.
    """
    paths = [e.path for e in entries]
    labels = [e.label for e in entries]
    # -1: not scanned, no size to check.
    sizes = [-1 if e.size is None else e.size for e in entries]
    columns = {"path": tf.constant(paths, tf.string),
               "label": tf.constant(labels, tf.int32),
               "size": tf.constant(sizes, tf.int64)}
    if indices is not None:
        columns["index"] = tf.constant(list(indices), tf.int32)
    ds = tf.data.Dataset.from_tensor_slices(columns)

    def load(element):
        element = dict(element)
        path, size = element.pop("path"), element.pop("size")
        data = tf.io.read_file(path)
        # The scan's verdict holds for the bytes it checked: a file of
        # another size since (edited, replaced by something the guard would
        # refuse) is dropped, not decoded.
        tf.debugging.assert_equal(
            tf.logical_or(size < 0, tf.cast(tf.strings.length(data), tf.int64) == size),
            True, message="file changed since the scan")
        element["image"] = decode_image(data, image_size, resize)
        return element

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # The scan already refused every file that does not decode; this only
    # guards against a file changed on disk since, so an epoch never dies.
    return ds.ignore_errors(log_warning=True)


def content_key(entries, *parts):
    """A hex digest of the files' identity (path, size, mtime, label) + parts.

    Any edit, addition or removal of a file changes it, so a cache keyed by it
    is never served stale.
    """
    h = hashlib.sha256()
    for entry in entries:
        try:
            st = os.stat(entry.path)
            stamp = f"{st.st_size}\0{st.st_mtime_ns}"
        except OSError:  # Gone since the scan: the pipeline skips it.
            stamp = "missing"
        # The path, not the relpath: a copy of the folder elsewhere (same
        # layout, sizes and times) is other pixels.
        h.update(f"{entry.path}\0{stamp}\0{entry.label}\n".encode("utf-8"))
    for part in (*parts, f"decode{DECODE_VERSION}"):
        h.update(f"|{part}".encode("utf-8"))
    return h.hexdigest()[:20]


def choose_cache(num_examples, config):
    """Picks "memory", "disk" or "none" for `config.cache`, by estimated size."""
    if config.cache != "auto":
        return config.cache
    if num_examples * config.image_bytes <= config.ram_budget_mb * 2**20:
        return "memory"
    return "disk" if config.cache_dir else "none"


_COMPLETE = ".tlfast-complete"


def _cache_complete(prefix, num_examples):
    """Whether the file cache at `prefix` was filled whole: its marker (written
    after tf.data closed the cache and its files were flushed) names this many
    elements and the files' sizes as they are now."""
    try:
        with open(prefix + _COMPLETE, encoding="utf-8") as f:
            marker = json.load(f)
        return (marker.get("count") == num_examples
                and marker.get("files") == _cache_files(prefix))
    except (OSError, ValueError):
        return False


def _cache_files(prefix):
    """{name: size} of tf.data's files of the cache at `prefix`."""
    files = {}
    for path in glob.glob(glob.escape(prefix) + "*"):
        name = os.path.basename(path)
        if not name.endswith((".lockfile", ".tlfast-lock", _COMPLETE)):
            files[name] = os.path.getsize(path)
    return files


def _mark_complete(prefix, num_examples):
    """Flushes the cache's files and writes its marker; in tf.data, once."""

    def mark(_):
        if (not os.path.exists(prefix + ".index")  # The pass was cut short.
                or _cache_complete(prefix, num_examples)):  # Marked already.
            return 0
        for name in _cache_files(prefix):
            fd = os.open(os.path.join(os.path.dirname(prefix), name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        atomic.write_json(prefix + _COMPLETE, {
            "count": num_examples, "files": _cache_files(prefix)})
        return 0

    # An element after the last cached one: reached only when the cache's
    # pass ended, after tf.data wrote its index. Filtered out again.
    return tf.data.Dataset.from_tensors(0).map(
        lambda x: tf.py_function(mark, [x], tf.int32)).filter(
        lambda x: False)


def clean_stale_cache(prefix, num_examples=None):
    """Removes what a killed run left beside a tf.data file cache.

    tf.data refuses a cache whose `.lockfile` exists ("There appears to be a
    concurrently running job"), and a killed run leaves one behind, along with
    half-written shards. A cache with an index but no completion marker for
    `num_examples` elements (a fill cut short by power loss, or by a version
    of tlfast before the marker) is removed too. Only call this while holding
    the cache's lock.

    Returns:
      The removed paths.
    """
    removed = []
    complete = os.path.exists(prefix + ".index") and (
        num_examples is None or _cache_complete(prefix, num_examples))
    for path in glob.glob(glob.escape(prefix) + "*"):
        stale = path.endswith(".lockfile") or (
            not complete and not path.endswith(".tlfast-lock"))
        if stale:
            os.remove(path)
            removed.append(path)
    if removed:
        logging.info("Removed stale cache files of a killed run: %s", removed)
    return removed


def disk_cache_prefix(cache_dir, key):
    """Path prefix of the tf.data file cache for one content key."""
    directory = os.path.join(cache_dir, "pixels", key)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise OSError(
            f"Cannot create the pixel cache folder '{directory}': {e}. Pass a "
            "writable cache_dir (or --cache_dir), or cache='memory'/'none'.") from e
    if not os.access(directory, os.W_OK):
        raise PermissionError(
            f"The pixel cache folder '{directory}' is not writable. Pass a "
            "writable cache_dir (or --cache_dir), or cache='memory'/'none'.")
    return os.path.join(directory, "cache")


def finish(ds, num_examples, config, *, training, key=None):
    """Caches, shuffles (when training), batches and prefetches.

    Args:
      ds: Unbatched dataset of {"image": uint8, "label": int32} dicts, in a
        deterministic order.
      num_examples: Its size (for the cache decision and the shuffle buffer).
      config: A `PipelineConfig`.
      training: Shuffle (seeded, reshuffled every epoch) when True.
      key: Content key naming the disk cache; required for disk caching.

    Returns:
      A batched, prefetched `tf.data.Dataset` of dicts.
    """
    mode = choose_cache(num_examples, config)
    if mode == "disk":
        if not config.cache_dir or not key:
            raise ValueError(
                "A disk cache needs cache_dir and a content key. Received: "
                f"cache_dir={config.cache_dir!r}, key={key!r}")
        prefix = disk_cache_prefix(config.cache_dir, key)
        # Held for this process's lifetime: the file cache fills over an epoch.
        if locks.hold(prefix + ".tlfast-lock"):
            clean_stale_cache(prefix, num_examples)
            ds = ds.cache(prefix)
            if not _cache_complete(prefix, num_examples):
                element = ds.element_spec
                ds = ds.concatenate(_mark_complete(prefix, num_examples).map(
                    lambda _: tf.nest.map_structure(
                        lambda s: tf.zeros([d or 0 for d in s.shape], s.dtype),
                        element)))
        elif _cache_complete(prefix, num_examples):
            # Complete and counted: reading it needs no lock, even while
            # the process that filled it still runs.
            ds = ds.cache(prefix)
        else:
            logging.warning(
                "Another process is filling the pixel cache '%s'; this run "
                "decodes without a cache instead of waiting.", prefix)
    elif mode == "memory":
        ds = ds.cache()
    if training:
        # Cached elements are shared, not copied, by the shuffle buffer, so a
        # full-size buffer is free for the RAM cache; from disk it costs RAM.
        buffer = num_examples
        if mode != "memory":
            budget = max(config.ram_budget_mb * 2**20 // 4, config.image_bytes)
            buffer = min(num_examples, max(config.batch_size,
                                           budget // config.image_bytes))
        ds = ds.shuffle(max(buffer, 1), seed=config.seed,
                        reshuffle_each_iteration=True)
    return ds.batch(config.batch_size).prefetch(tf.data.AUTOTUNE)


def image_folder_dataset(entries, config, *, training):
    """The whole pipeline for scanned files.

    Args:
      entries: `FileEntry`s that passed the scan.
      config: A `PipelineConfig`.
      training: Shuffle when True.

    Returns:
      Batched dataset of {"image": uint8 [B, S, S, 3], "label": int32 [B]}.
    """
    entries = list(entries)
    key = None
    if choose_cache(len(entries), config) == "disk":
        key = content_key(entries, config.image_size, config.resize)
    ds = files_dataset(entries, config.image_size, config.resize)
    return finish(ds, len(entries), config, training=training, key=key)


def to_supervised(ds):
    """Turns dict elements into (image, label) tuples for `model.fit`."""
    return ds.map(lambda e: (e["image"], e["label"]),
                  num_parallel_calls=tf.data.AUTOTUNE)
