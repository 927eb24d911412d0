"""The input side of benchmarks/run.py: where images come from, and the input modes.

tlfast's own modes (`pipeline`, `pipeline_cached`, `extract`) read the folder
the way `tlfast-train --data_dir` does: through the `tlfast_image_folder`
TFDS builder, prepared once and reused while the folder is unchanged. The
baselines (`bare_decode`, `idg`, the seed recipe) read the loose files, as
their users do.
"""

import logging
import os
import statistics
import tempfile
import time

import numpy as np
import tensorflow as tf

from tlfast import data as tld
from tlfast.data import folder_builder
from tlfast.data import records as records_lib
from tlfast.data import pipeline as pipeline_lib
from tlfast.config import TrainConfig

log = logging.getLogger("tlfast")


def _require_data_dir(settings):
    if not settings.data_dir:
        raise ValueError("This mode reads images: pass --data_dir, a folder of "
                         "class sub-folders. Received: data_dir=None")


def _cycled(items, n):
    """`items` repeated to length `n` (a small folder still gives timings
    long enough not to be dominated by start-up)."""
    if not n:
        return list(items)
    return (list(items) * -(-n // max(len(items), 1)))[:n]


def load_entries(settings, workdir):
    """Scanned, usable loose files, cycled to `max_images`; page cache warmed."""
    _require_data_dir(settings)
    folder = tld.list_image_folder(settings.data_dir)
    entries = [e for split in folder.splits.values() for e in split]
    cache_dir = settings.cache_dir or os.path.join(workdir, "scan")
    usable = _cycled(tld.scan_files(entries, root=folder.root,
                                    cache_dir=cache_dir).usable,
                     settings.max_images)
    for entry in usable:  # No mode pays for disk reads.
        with open(entry.path, "rb") as f:
            f.read()
    return usable


class PreparedSource:
    """The folder as prepared TFDS records, every split, cycled to `n`.

    Args:
      settings: The benchmark's `Settings`.
      workdir: Scratch folder; the prepared data lives under --cache_dir
        (reused across runs) or here.
    """

    def __init__(self, settings, workdir):
        _require_data_dir(settings)
        root = settings.cache_dir or workdir
        self.prepared = folder_builder.prepare_image_folder(
            settings.data_dir, data_root=os.path.join(root, "tfds"),
            validation_split=TrainConfig.validation_split,
            seed=TrainConfig.seed, cache_dir=os.path.join(root, "scan"))
        log.info("%s prepared data: %s", "Reusing" if self.prepared.reused
                 else "Wrote", self.prepared.data_dir)
        self._splits = [records_lib.prepared_examples(self.prepared, s)
                        for s in self.prepared.splits]
        ids = [i for split in self._splits for i in split.ids]
        self.size = len(ids)
        # A cycled folder repeats files: the position keeps each id unique.
        self.ids = [f"{k}|{i}" for k, i in enumerate(
            _cycled(ids, settings.max_images))]
        for _ in self.records():  # Warms the page cache, as for the files.
            pass

    def __len__(self):
        return len(self.ids)

    def records(self):
        """Encoded records ({"image": string, "label", ...}), `len(self)` of them."""
        ds = self._splits[0].records()
        for split in self._splits[1:]:
            ds = ds.concatenate(split.records())
        return ds.repeat().take(len(self))

    def decoded(self, image_size, resize):
        """Unbatched {"image": uint8, "label": int32} elements, in order."""
        return records_lib.decode_records(self.records(), image_size, resize)

    def batched(self, indices, image_size, resize, batch_size):
        """{"image", "index"} batches of the examples at `indices` (any order)."""
        mask = np.zeros(len(self), bool)
        mask[np.asarray(list(indices), np.int64)] = True
        mask = tf.constant(mask)

        def decode(i, example):
            return {"image": pipeline_lib.decode_image(example["image"],
                                                       image_size, resize),
                    "index": tf.cast(i, tf.int32)}

        ds = (self.records().enumerate()
              .filter(lambda i, _: tf.gather(mask, i))
              .map(decode, num_parallel_calls=tf.data.AUTOTUNE))
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------- input modes


def timed_epoch(ds):
    """Iterates one epoch; returns (images, seconds)."""
    start = time.perf_counter()
    images = 0
    for batch in ds:
        image = batch["image"] if isinstance(batch, dict) else batch
        images += int(image.shape[0])  # .shape of a produced tensor: read back.
    return images, time.perf_counter() - start


def _bare_decode(job):
    """The decode ceiling: loose files, parallel decode + resize + batch."""
    paths = [e.path for e in job.entries()]
    size = (job.image_size, job.image_size)

    def load(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3,
                                   expand_animations=False)
        return tf.image.resize(image, size)

    ds = (tf.data.Dataset.from_tensor_slices(paths)
          .map(load, num_parallel_calls=tf.data.AUTOTUNE)
          .batch(job.settings.batch_size).prefetch(tf.data.AUTOTUNE))
    return timed_epoch(ds)


def _pipeline_ds(job):
    source = job.prepared_source()
    config = tld.PipelineConfig(image_size=job.image_size,
                                batch_size=job.settings.batch_size,
                                resize=job.settings.resize, cache="memory")
    ds = source.decoded(job.image_size, job.settings.resize)
    return pipeline_lib.finish(ds, len(source), config, training=True)


def _pipeline(job):
    """tlfast's pipeline over the prepared records, first epoch."""
    return timed_epoch(_pipeline_ds(job))


def _pipeline_cached(job):
    """The same pipeline, an epoch served from its cache."""
    ds = _pipeline_ds(job)
    timed_epoch(ds)  # Fills the cache.
    return timed_epoch(ds)


def _idg(job):
    """The seed recipe's input side: ImageDataGenerator + flow_from_directory."""
    entries = job.entries()
    with tempfile.TemporaryDirectory(dir=job.workdir) as tmp:
        for i, entry in enumerate(entries):
            class_dir = os.path.join(tmp, f"class_{entry.label}")
            os.makedirs(class_dir, exist_ok=True)
            ext = os.path.splitext(entry.path)[1]
            os.symlink(os.path.abspath(entry.path),
                       os.path.join(class_dir, f"{i}{ext}"))
        generator = tf.keras.preprocessing.image.ImageDataGenerator(
            rescale=1 / 255, rotation_range=20, width_shift_range=0.2,
            height_shift_range=0.2, shear_range=0.2, zoom_range=0.2,
            horizontal_flip=True)
        flow = generator.flow_from_directory(
            tmp, target_size=(job.image_size, job.image_size),
            batch_size=job.settings.batch_size, class_mode="categorical", seed=0)
        start = time.perf_counter()
        images = 0
        for _ in range(len(flow)):
            x, _ = next(flow)
            images += x.shape[0]
        return images, time.perf_counter() - start


def _repeated(fn):
    def run(job):
        runs = [fn(job) for _ in range(job.settings.repeats)]
        seconds = statistics.median(s for _, s in runs)
        return {"images": runs[0][0], "seconds": seconds,
                "images_per_sec": runs[0][0] / seconds,
                "repeats": len(runs)}
    run.__doc__ = fn.__doc__
    return run


INPUT_MODES = {
    "bare_decode": _repeated(_bare_decode),
    "pipeline": _repeated(_pipeline),
    "pipeline_cached": _repeated(_pipeline_cached),
    "idg": _repeated(_idg),
}
