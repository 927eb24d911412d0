"""Reading a prepared folder's TFDS records back, fast.

`tlfast.data.folder_builder.prepare_image_folder` writes an image folder as
`TlfastImageFolder` records (tf.train.Examples of the still-encoded image,
its label, content id and relpath) and says which split holds which ids.
`prepared_examples` reads one split with the `tlfast.data.examples.Examples`
interface: records parsed in batches (`parsed`), decoded by
`pipeline.decode_image`, so the pixels equal those of the original files.
"""

import functools
import hashlib
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from tlfast.config import DEFAULT_RESIZE
from tlfast.data import chunk_decode
from tlfast.data import examples as examples_lib
from tlfast.data import pipeline
from tlfast.data import sources
from tlfast.data.image_folder import TlfastImageFolder

# One shard after the other: the record order is the order they were
# written in, and the same in every process (the index relies on it). No
# TFDS auto-cache: the pixel pipeline caches within tlfast's RAM budget.
READ_CONFIG = tfds.ReadConfig(interleave_cycle_length=1, try_autocache=False)
# How TlfastImageFolder's features are stored in its tf.train.Examples.
RECORD_SPEC = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
    "id": tf.io.FixedLenFeature([], tf.string),
    "relpath": tf.io.FixedLenFeature([], tf.string),
}
_PARSE_BATCH = 256
# Chunks up to this many decoded bytes are decoded at once (`batched`):
# 512 images of 224 px take 77 MB.
_EAGER_CHUNK_BYTES = 256 * 2**20


def parsed(files, fields=tuple(RECORD_SPEC)):
    """A split's records (TFRecord `files`, in order), parsed in batches.

    The records of `builder.as_dataset(split)` (tested), without TFDS's
    one-example-at-a-time parsing, which cost a quarter of decoding a 224-px
    JPEG.

    Args:
      files: The split's TFRecord files, in shard order.
      fields: The `RECORD_SPEC` fields to parse.

    Returns:
      A `tf.data.Dataset` of dicts of `fields`, each [B] (B <= 256).
    """
    spec = {name: RECORD_SPEC[name] for name in fields}
    return (tf.data.TFRecordDataset([os.fspath(f) for f in files])
            .batch(_PARSE_BATCH)
            .map(lambda x: tf.io.parse_example(x, spec)))


class PreparedExamples:
    """One split of a prepared folder (a `tlfast.data.examples.Examples`).

    Images are read
    still encoded and decoded by `pipeline.decode_image`, so they equal the
    pixels of the original files. Ids are the files' content ids, the same
    as `FileExamples` gives, so both share the feature cache.
    """

    def __init__(self, prepared, split, image_size=224, resize=DEFAULT_RESIZE,
                 service=None):
        if split not in prepared.splits:
            raise ValueError(
                f"The prepared folder '{prepared.root}' has no split "
                f"'{split}'. Available: {list(prepared.splits)}")
        self.prepared, self.split = prepared, split
        self.image_size, self.resize = image_size, resize
        # tf.data service address: decoding then runs on its workers, which
        # must see the prepared records at the same path.
        self.service = service
        self.class_names = prepared.class_names
        ids, self.labels = prepared.index[split]
        self._ids = list(ids)
        self._cursor = None  # See `_take`.

    def __len__(self):
        return len(self._ids)

    @property
    def ids(self):
        return list(self._ids)

    @functools.cached_property
    def entries(self):
        """`FileEntry`s of the records' files, for split files and evaluation.

        Built once (the split file, the evaluation and the exports all use
        them)."""
        # Ids are "relpath|size|mtime": a file name may hold "|" too.
        entries = []
        for identity, label in zip(self._ids, self.labels):
            relpath, size, _ = identity.rsplit("|", 2)
            entries.append(sources.FileEntry(
                os.path.join(self.prepared.root, relpath), relpath, int(label),
                int(size)))
        return entries

    def records(self, check_count=True):
        """The split's records in order, images still encoded.

        Args:
          check_count: Raise when the records are fewer than the index says
            (off where the tf.data service hands each worker a part).

        Returns:
          A `tf.data.Dataset` of {"image": string [], "label": int64 [],
          "id": string [], "relpath": string []}.
        """
        # The same records as `builder.as_dataset(split, decoders=
        # {"image": SkipDecoding()})`, parsed in batches (see `parsed`).
        files = [os.fspath(f) for f in
                 self.prepared.builder.info.splits[self.split].filepaths]
        missing = [f for f in files if not os.path.exists(f)]
        if missing:
            raise FileNotFoundError(
                f"The prepared data of '{self.prepared.root}' is incomplete: "
                f"{len(missing)} record file(s) are missing, e.g. '{missing[0]}'. "
                f"Delete '{self.prepared.data_dir}' and run again to prepare "
                "the folder anew.")
        # No ignore_errors downstream: the records were checked when they
        # were prepared, so a read or decode error is damage to say, not an
        # image to skip (and ignoring a reader's error retries it forever).
        ds = parsed(files).unbatch()
        if check_count:
            # A shard cut short just after a record ends reads as a shorter
            # shard, without a read error.
            ds = ds.apply(tf.data.experimental.assert_cardinality(len(self)))
        return ds

    def batched(self, indices, batch_size):
        """{"image": uint8 [B, S, S, 3], "label", "index"} for `indices`.

        Examples come in record order, whatever the order of `indices`;
        "index" says which each one is. Successive calls for increasing
        indices (feature extraction asks chunk by chunk) continue one pass
        over the records: asking every chunk of a pass over all of them
        made extraction quadratic (200k images: 67% of its time in that
        pass, 340 images/s at 20k falling to 115 at 72k).
        """
        indices = np.unique(np.asarray(list(indices), np.int64))
        if self.service:
            mask = np.zeros(len(self), bool)
            mask[indices] = True
            return self._served_batched(tf.constant(mask), batch_size)
        encoded, labels, ids = self._take(indices)
        stale = [i for i, found in zip(indices, ids) if found != self._ids[i]]
        if stale:
            # A stale index would pair features with the wrong ids in the
            # feature cache: refuse rather than poison it.
            raise ValueError(
                f"The prepared data of '{self.prepared.root}' and its index "
                f"disagree at record {stale[0]}: delete "
                f"'{self.prepared.data_dir}' and run again.")
        labels = tf.constant(labels, tf.int32)
        index = tf.constant(indices, tf.int32)
        if len(indices) * self.image_size ** 2 * 3 <= _EAGER_CHUNK_BYTES:
            # A feature shard's chunk: decoded now, without a pipeline of
            # its own (see `tlfast.data.chunk_decode`).
            decode = chunk_decode.shared(self.image_size, self.resize)
            ds = tf.data.Dataset.from_tensor_slices({
                "image": decode(encoded), "label": labels,
                "index": index})
            return ds.batch(batch_size)
        # Many images (all of a split, when decoding overlaps a GPU model):
        # streamed, not held decoded.
        size, resize = self.image_size, self.resize
        ds = tf.data.Dataset.from_tensor_slices({
            "image": tf.constant(encoded, tf.string), "label": labels,
            "index": index})
        ds = ds.map(lambda e: {**e, "image": pipeline.decode_image(
                        e["image"], size, resize)},
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    def _take(self, indices):
        """(encoded images, labels, ids) of the records at sorted `indices`.

        Reads on from where the last call stopped when it can (a cursor
        over the records, read in parsed batches), else from the start.
        """
        wanted = set(indices.tolist())
        last = int(indices[-1]) if len(indices) else -1
        c = self._cursor
        if c is None or (len(indices) and indices[0] < c["position"]):
            c = self._cursor = {
                "records": self.records().batch(_PARSE_BATCH).as_numpy_iterator(),
                "position": 0, "batch": None, "offset": 0}
        encoded, labels, ids = [], [], []
        while c["position"] <= last:
            if c["batch"] is None or c["offset"] == len(c["batch"]["id"]):
                c["batch"], c["offset"] = next(c["records"]), 0
            if c["position"] in wanted:
                batch, k = c["batch"], c["offset"]
                encoded.append(batch["image"][k])
                labels.append(int(batch["label"][k]))
                ids.append(batch["id"][k].decode("utf-8"))
            c["position"] += 1
            c["offset"] += 1
        return encoded, labels, ids

    def _served_batched(self, mask, batch_size):
        """`batched` with decoding on tf.data service workers.

        Served records arrive in any order and from any worker, so each one's
        position comes from its id, on this side of the service.
        """
        from tlfast.data import service

        size, resize = self.image_size, self.resize
        ds = self.records(check_count=False).map(
            lambda e: _decode_record(e, size, resize, keep=("id",)),
            num_parallel_calls=tf.data.AUTOTUNE)
        ds = service.distribute(ds, self.service)
        positions = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(self._ids or [""], tf.string),
                tf.range(max(len(self._ids), 1), dtype=tf.int32)), -1)

        def locate(element):
            element = dict(element)
            element["index"] = positions.lookup(element.pop("id"))
            return element

        ds = ds.map(locate).filter(
            lambda e: tf.logical_and(e["index"] >= 0,
                                     tf.gather(mask, tf.maximum(e["index"], 0))))
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    def pixels(self, config, *, training, shard=None):
        """The cached, (shuffled,) batched pipeline of the split (or shard)."""
        count = examples_lib.shard_size(len(self), shard)
        records = self.records(check_count=not self.service)
        if shard is not None:
            records = records.shard(shard[1], shard[0])
        ds = decode_records(records, config.image_size, config.resize)
        if self.service:
            from tlfast.data import service

            return service.finish_served(service.distribute(ds, self.service),
                                         count, config, training=training)
        key = hashlib.sha256(
            f"{TlfastImageFolder.name}|{self.prepared.fingerprint}|{self.split}|"
            f"{config.image_size}|{config.resize}|"
            f"decode{pipeline.DECODE_VERSION}"
            f"{examples_lib.shard_suffix(shard)}".encode()).hexdigest()[:20]
        return pipeline.finish(ds, count, config, training=training, key=key)


def _decode_record(example, image_size, resize, keep=()):
    """A record's pipeline element: decoded uint8 image, int32 label, and
    the record's fields named in `keep` as they are."""
    element = {"image": pipeline.decode_image(example["image"], image_size, resize),
               "label": tf.cast(example["label"], tf.int32)}
    element.update((name, example[name]) for name in keep)
    return element


def decode_records(records, image_size, resize=DEFAULT_RESIZE):
    """Decodes prepared records to pipeline elements, in parallel, in order.

    Args:
      records: Dataset of {"image": encoded string, "label": int, ...}, e.g.
        `PreparedExamples.records()`.
      image_size: Output side.
      resize: One of `tlfast.data.pipeline.RESIZE_MODES`.

    Returns:
      A `tf.data.Dataset` of {"image": uint8 [S, S, 3], "label": int32 []}.
      Damaged records raise (see `PreparedExamples.records`).
    """
    return records.map(lambda e: _decode_record(e, image_size, resize),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def prepared_examples(prepared, split, image_size=224, resize=DEFAULT_RESIZE,
                      service=None):
    """A `PreparedExamples` of one split ("train", "validation" or "test").

    Args:
      service: Optional tf.data service address for the decoding.

    Raises:
      ValueError: `prepared` has no such split.
    """
    return PreparedExamples(prepared, split, image_size, resize, service)
