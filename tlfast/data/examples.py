"""Example sets: what training needs of a split, whatever the source.

A folder split (scanned `FileEntry`s), a prepared folder's split
(`tlfast.data.records.PreparedExamples`) and a TFDS split offer the
same things, the `Examples` protocol: stable per-example ids (the
feature-cache keys), integer labels, batched uint8 images for any subset
(feature extraction), the full cached/shuffled pixel pipeline (fine-tuning),
and the files behind them where there are files. All decode through
`pipeline.decode_image`, so a TFDS image and the same file on disk give the
same pixels.
"""

import hashlib
from typing import Protocol
from typing import Sequence

import numpy as np
import tensorflow as tf

from tlfast.config import DEFAULT_RESIZE
from tlfast.data import pipeline
from tlfast.data import sources


class Examples(Protocol):
    """One split of a run's data, as training wants it.

    Attributes:
      entries: The split's `FileEntry`s (paths, relpaths, labels), in the
        order of `ids`; None where the examples are not files (a TFDS
        dataset): evaluation from pixels and exports then have no images.
    """

    entries: Sequence[sources.FileEntry] | None

    def __len__(self) -> int:
        """Number of examples N."""

    @property
    def ids(self) -> list:
        """N stable content ids (str), the feature-cache keys."""

    @property
    def labels(self) -> np.ndarray:
        """int32 [N] labels."""

    def batched(self, indices, batch_size) -> tf.data.Dataset:
        """{"image": uint8 [B, S, S, 3], "label": int32 [B], "index": [B]}
        for the examples at `indices` (sorted), "index" saying which."""

    def pixels(self, config, *, training, shard=None) -> tf.data.Dataset:
        """The whole split through `pipeline.finish` (cached, shuffled when
        training, batched) for a `pipeline.PipelineConfig`; with `shard`
        (index, count) only the examples i with i % count == index (one
        worker's part), decoding no other."""


class FileExamples:
    """Scanned image files of one split (an `Examples`)."""

    def __init__(self, entries, image_size, resize=DEFAULT_RESIZE, service=None):
        self.entries = list(entries)
        self.image_size, self.resize = image_size, resize
        # tf.data service address: decoding then runs on its workers.
        self.service = service

    def _decoded(self, entries, indices=None):
        ds = pipeline.files_dataset(entries, self.image_size, self.resize,
                                    indices=indices)
        if self.service:
            from tlfast.data import service

            ds = service.distribute(ds, self.service)
        return ds

    def __len__(self):
        return len(self.entries)

    @property
    def ids(self):
        return [sources.example_id(entry) for entry in self.entries]

    @property
    def labels(self):
        return np.array([e.label for e in self.entries], np.int32)

    def batched(self, indices, batch_size):
        """{"image": uint8 [B, S, S, 3], "label", "index"} for `indices`, in order."""
        subset = [self.entries[i] for i in indices]
        return self._decoded(subset, indices).batch(batch_size).prefetch(
            tf.data.AUTOTUNE)

    def pixels(self, config, *, training, shard=None):
        """The cached, (shuffled,) batched pipeline of the split (or shard)."""
        entries = self.entries if shard is None else self.entries[
            shard[0]::shard[1]]
        if not self.service:
            return pipeline.image_folder_dataset(entries, config,
                                                 training=training)
        from tlfast.data import service

        return service.finish_served(self._decoded(entries), len(entries),
                                     config, training=training)


class TfdsExamples:
    """One split of a TFDS image-classification dataset (an `Examples`).

    Images are read still encoded (`SkipDecoding`) and decoded by tlfast's own
    decoder; labels are read once up front (cheap: no image is decoded).
    """

    entries = None  # Records of a dataset, not files.

    def __init__(self, name, split, data_dir=None, image_size=224,
                 resize=DEFAULT_RESIZE, download=True):
        import tensorflow_datasets as tfds

        self.name, self.split = name, split
        self.image_size, self.resize = image_size, resize
        builder = sources.tfds_builder(name, data_dir, download)
        self.version = str(builder.info.version)
        self.class_names = sources.tfds_class_names(builder)
        raw = builder.as_dataset(
            split=split, shuffle_files=False,
            decoders={"image": tfds.decode.SkipDecoding()})
        self._raw = raw.map(lambda e: (e["image"], tf.cast(e["label"], tf.int32)))
        self.labels = np.fromiter(
            (int(label) for _, label in self._raw.as_numpy_iterator()), np.int32)

    def __len__(self):
        return len(self.labels)

    @property
    def ids(self):
        return [f"tfds:{self.name}:{self.version}:{self.split}:{i}"
                for i in range(len(self))]

    def _decoded(self, with_index, shard=None):
        size, resize = self.image_size, self.resize

        def load(index, item):
            element = {"image": pipeline.decode_image(item[0], size, resize),
                       "label": item[1]}
            if with_index:
                element["index"] = tf.cast(index, tf.int32)
            return element

        ds = self._raw.enumerate()
        if shard is not None:
            ds = ds.shard(shard[1], shard[0])
        return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)

    def batched(self, indices, batch_size):
        # A mask looked up per element: comparing each element with every
        # wanted index would cost N x M on a large dataset.
        mask = np.zeros(len(self), bool)
        mask[np.asarray(list(indices), np.int64)] = True
        wanted = tf.constant(mask)
        ds = self._raw.enumerate().filter(lambda i, _: tf.gather(wanted, i))
        size, resize = self.image_size, self.resize
        ds = ds.map(lambda i, item: {
            "image": pipeline.decode_image(item[0], size, resize),
            "label": item[1], "index": tf.cast(i, tf.int32)},
            num_parallel_calls=tf.data.AUTOTUNE)
        if list(indices) != sorted(indices):
            raise ValueError("TfdsExamples.batched needs sorted indices. "
                             f"Received: indices={list(indices)[:5]}...")
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    def pixels(self, config, *, training, shard=None):
        key = hashlib.sha256(
            f"{self.name}|{self.version}|{self.split}|{config.image_size}|"
            f"{config.resize}|decode{pipeline.DECODE_VERSION}"
            f"{shard_suffix(shard)}".encode()).hexdigest()[:20]
        ds = self._decoded(with_index=False, shard=shard)
        return pipeline.finish(ds, shard_size(len(self), shard), config,
                               training=training, key=key)


def shard_size(num_examples, shard):
    """Examples of `num_examples` in `shard` (index, count), or all."""
    return num_examples if shard is None else len(
        range(shard[0], num_examples, shard[1]))


def shard_suffix(shard):
    """What a shard adds to a pixel cache's key ("" for the whole split)."""
    return "" if shard is None else f"|shard{shard[0]}of{shard[1]}"
