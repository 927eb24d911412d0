"""Prepare an image folder once as a TFDS dataset, then read it fast.

`prepare_image_folder` scans and splits a folder with the same rules as
`tlfast.data.prepare.prepare_folder` and writes the usable images, still encoded,
as TFDS records under

    <data_root>/tlfast_image_folder/<folder name>_<fingerprint>/1.0.0/

The fingerprint hashes every file's (relpath, size, mtime) and the split and
scan settings, so an unchanged folder is found again ("reusing prepared data")
and a touched, added or removed file leads to a new preparation (the one it
replaces, same settings but older content, is deleted). `prepared_examples` reads a split back with the
interface of `tlfast.data.examples.TfdsExamples`.
"""

import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import logging
import os
import re
import shutil
import time

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from tlfast import atomic
from tlfast import locks
from tlfast.config import DEFAULT_RESIZE
from tlfast.data import chunk_decode
from tlfast.data import examples as examples_lib
from tlfast.data import pipeline
from tlfast.data import scan as scan_lib
from tlfast.data import sources
from tlfast.data import split as split_lib
from tlfast.data.image_folder import ImageFolderConfig
from tlfast.data.image_folder import TlfastImageFolder
from tlfast.data.image_folder.image_folder_dataset_builder import settings_of

log = logging.getLogger("tlfast")

DATASET_NAME = TlfastImageFolder.name
# Ids and labels of every split in record order, written beside the records
# so that opening a split does not read all its images to learn its labels.
INDEX_FILE = "tlfast_index.json"
# One shard after the other: the record order is the order they were
# written in, and the same in every process (the index relies on it). No
# TFDS auto-cache: the pixel pipeline caches within tlfast's RAM budget.
READ_CONFIG = tfds.ReadConfig(interleave_cycle_length=1, try_autocache=False)
# How TlfastImageFolder's features are stored in its tf.train.Examples.
_RECORD_SPEC = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
    "id": tf.io.FixedLenFeature([], tf.string),
    "relpath": tf.io.FixedLenFeature([], tf.string),
}
_PARSE_BATCH = 256
# Chunks up to this many decoded bytes are decoded at once (`batched`):
# 512 images of 224 px take 77 MB.
_EAGER_CHUNK_BYTES = 256 * 2**20


@dataclasses.dataclass(frozen=True)
class PreparedImageFolder:
    """An image folder prepared as TFDS records.

    Attributes:
      builder: The `TlfastImageFolder` builder, ready for `as_dataset`.
      class_names: Class names; labels index into them.
      splits: Split names ("train", "validation"[, "test"]).
      num_examples: Split name -> number of examples.
      skipped: Every `Skipped` file (bad extension or failed the scan).
      reused: True when this exact folder content was already prepared and
        nothing was written.
      data_dir: Folder of the prepared records.
      root: The image folder.
      fingerprint: The config name: folder name + content hash.
      index: Split name -> (ids, int32 labels), in record order.
    """

    builder: object
    class_names: tuple
    splits: tuple
    num_examples: dict
    skipped: tuple
    reused: bool
    data_dir: str
    root: str
    fingerprint: str
    index: dict = dataclasses.field(repr=False)


def _slug(root):
    name = re.sub(r"[^a-z0-9]+", "_", os.path.basename(root).lower()).strip("_")
    return name[:40] or "folder"


def folder_config(data_dir, *, validation_split=0.2, seed=0, cache_dir=None,
                  max_pixels=scan_lib.DEFAULT_MAX_PIXELS, strict=False,
                  progress=None, skip_placeholders=True, follow_links=False,
                  labels=None, listing=None):
    """The `ImageFolderConfig` of a folder as it is now (reads no image).

    Args: as for `prepare_image_folder`.

    Returns:
      An `ImageFolderConfig` named `<folder name>_<16 hex digits>`, holding
      the listing it was named from (its preparation scans that listing
      rather than listing the folder again).

    Raises:
      FileNotFoundError: No such folder.
      ValueError: Fewer than two class sub-folders.
    """
    folder = listing or sources.list_image_folder(data_dir, follow_links, labels)
    h = hashlib.sha256()
    # Everything that changes what is stored: the builder's format, the
    # scan's rules, the split settings and every file's identity.
    h.update(f"{DATASET_NAME} {TlfastImageFolder.VERSION} scan "
             f"{scan_lib.SCAN_CACHE_VERSION} split {split_lib.SPLIT_VERSION} "
             f"{max_pixels} "
             f"{float(validation_split)!r} {int(seed)} "
             f"{json.dumps(folder.class_names)}"
             # Only when not the default: earlier preparations stay valid.
             f"{'' if skip_placeholders else ' keep-placeholders'}"
             f"{' follow-links' if follow_links else ''}"
             # The labels' content: a relabelled image is another dataset.
             f"{' ' + labels.identity() if labels else ''}"
             # Where it is: two folders of the same layout, sizes and times
             # (a copy) are still two datasets.
             f" {os.path.realpath(folder.root)}\n"
             .encode("utf-8"))
    h.update(_listed_content(folder))
    return ImageFolderConfig(
        name=f"{_slug(folder.root)}_{h.hexdigest()[:16]}",
        description=f"The image folder {folder.root}",
        root=folder.root, class_names=tuple(folder.class_names),
        validation_split=validation_split, seed=seed, max_pixels=max_pixels,
        skip_placeholders=bool(skip_placeholders),
        follow_links=bool(follow_links), cache_dir=cache_dir,
        strict=strict, progress=progress, labels=labels, listing=folder)


def _listed_content(folder):
    """Every listed file's relpath, size and mtime as they are now (bytes)."""
    rows = [(e.relpath, e.path) for files in folder.splits.values()
            for e in files]
    rows += [(os.path.relpath(s.path, folder.root).replace(os.sep, "/"), s.path)
             for s in folder.skipped]
    lines = []
    for relpath, path in sorted(rows):
        try:
            st = os.stat(path)
            lines.append(f"{relpath}\0{st.st_size}\0{st.st_mtime_ns}\n")
        except OSError:
            lines.append(f"{relpath}\0unreadable\n")
    return "".join(lines).encode("utf-8", "surrogateescape")


def _changed(config):
    """Whether a file of `config`'s listing changed since it was named.

    Re-checks the listed files' sizes and times, without listing again: a
    file added meanwhile is not seen here, but it changes the next run's
    listing, which then prepares the folder anew.
    """
    fresh = folder_config(
        config.root, validation_split=config.validation_split,
        seed=config.seed, max_pixels=config.max_pixels,
        skip_placeholders=config.skip_placeholders,
        follow_links=config.follow_links, labels=config.labels,
        listing=config.listing)
    return fresh.name != config.name


def _remove_replaced(dataset_dir, config):
    """Deletes older preparations of the same folder with the same settings.

    Their content is gone, so they can never be reused, and each one is a full
    copy of the images. Other settings (a seed sweep) are kept: still usable.
    """
    for name in os.listdir(dataset_dir):
        path = os.path.join(dataset_dir, name)
        if name == config.name or not os.path.isdir(path):
            continue
        metadata = os.path.join(path, str(TlfastImageFolder.VERSION),
                                "metadata.json")
        try:
            with open(metadata) as f:
                found = json.load(f)
        except (OSError, ValueError):
            continue
        root = found.get("root")
        if root != config.root or found.get("settings") != settings_of(config):
            continue
        # This process has moved on to the new preparation: its own shared
        # lock on the old one must not keep it.
        locks.release(path + ".use")
        with locks.lock(path + ".lock", blocking=False) as preparing, \
                locks.lock(path + ".use", blocking=False) as unused:
            if not (preparing and unused):
                # Another process is reading or (re)preparing it; a later
                # run removes it.
                log.info("Keeping the replaced preparation of '%s' while "
                         "another process uses it: %s", root, path)
                continue
            log.info("Removing the replaced preparation of '%s': %s",
                     root, path)
            # Its lock files stay (a few bytes): another process may be
            # waiting on them, and a new file under the same name would let
            # two processes hold "the" lock at once.
            shutil.rmtree(path, ignore_errors=True)


def _parsed(files, spec):
    """The split's records (TFRecord `files`, in order), parsed by `spec` in
    batches: the records of `builder.as_dataset(split)` (tested), without
    TFDS's one-example-at-a-time parsing."""
    return (tf.data.TFRecordDataset([os.fspath(f) for f in files])
            .batch(_PARSE_BATCH)
            .map(lambda x: tf.io.parse_example(x, spec)))


def _read_index(builder):
    """Ids and labels of every split in record order (reads no image).

    Parsed from the records directly: through TFDS's partial decoding it
    took 0.84 s for 20,000 records, 0.1 s so.
    """
    index = {}
    spec = {name: _RECORD_SPEC[name] for name in ("id", "label")}
    for split, info in builder.info.splits.items():
        ids, labels = [], []
        for batch in _parsed(info.filepaths, spec).as_numpy_iterator():
            ids.extend(x.decode("utf-8") for x in batch["id"])
            labels.extend(int(x) for x in batch["label"])
        index[split] = {"ids": ids, "labels": labels}
    return index


def _load_index(builder, fingerprint):
    """The index file, checked against the records; rebuilt when unusable."""
    path = os.path.join(os.fspath(builder.data_path), INDEX_FILE)
    splits = {name: info.num_examples
              for name, info in builder.info.splits.items()}
    try:
        with open(path) as f:
            data = json.load(f)
        if (data["fingerprint"] == fingerprint and
                {k: len(v["ids"]) for k, v in data["splits"].items()} == splits):
            return data["splits"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    index = _read_index(builder)
    try:
        atomic.write_json(path, {"fingerprint": fingerprint, "splits": index})
    except OSError as e:  # A read-only copy still works, a little slower.
        log.warning("Cannot write the prepared data's index '%s': %s", path, e)
    return index


def prepare_image_folder(data_dir, *, data_root, validation_split=0.2, seed=0,
                         cache_dir=None, max_pixels=scan_lib.DEFAULT_MAX_PIXELS,
                         strict=False, progress=None, skip_placeholders=True,
                         follow_links=False, lock_timeout=None, labels=None,
                         listing=None):
    """Prepares an image folder as TFDS records once; reuses them while unchanged.

    Args:
      data_dir: Folder of class sub-folders, or with train/ and validation/
        (or val/, and optionally test/) sub-folders of them.
      data_root: TFDS data folder (e.g. `--tfds_data_dir`, or
        `<cache_dir>/tfds`).
      validation_split: Validation fraction for a folder without its own
        validation folder (tlfast's stable, per-class hash split).
      seed: Split seed.
      cache_dir: Where the scan remembers its verdicts; None disables that.
      max_pixels: Decompression-bomb guard.
      strict: Fail on any bad file instead of skipping it (also when
        reusing data prepared with skipped files).
      progress: Optional callable(done, total) during the scan.
      skip_placeholders: Skip "image not found" graphics (few colours, one
        covering most of the image); False keeps them (e.g. line drawings).
      follow_links: Use links that resolve outside the folder.
      lock_timeout: Seconds to wait for another process preparing it.
      labels: Optional `tlfast.data.labels_csv.LabelsCsv` (labels from a CSV).
      listing: The folder's `sources.ImageFolder` if the caller listed it
        already (with the same `follow_links` and `labels`); None lists it.
        A run lists its folder once: 20k files cost ~170 ms a listing.

    Returns:
      A `PreparedImageFolder`.

    Raises:
      FileNotFoundError: No such folder.
      ValueError: Unusable folder (see `tlfast.data.prepare.prepare_folder`).
      tlfast.data.scan.BadImagesError: Bad files with `strict=True`.
    """
    config = folder_config(data_dir, validation_split=validation_split,
                           seed=seed, cache_dir=cache_dir, max_pixels=max_pixels,
                           skip_placeholders=skip_placeholders,
                           follow_links=follow_links, labels=labels,
                           strict=strict, progress=progress, listing=listing)
    data_root = os.path.abspath(os.path.expanduser(os.fspath(data_root)))
    dataset_dir = os.path.join(data_root, DATASET_NAME)
    try:
        os.makedirs(dataset_dir, exist_ok=True)
    except OSError as e:
        raise OSError(
            f"Cannot create the prepared-data folder '{dataset_dir}': {e}. Pass "
            "a writable data_root (--tfds_data_dir or --cache_dir).") from e
    lock_path = os.path.join(dataset_dir, config.name + ".lock")
    # Two processes preparing the same folder take turns: the second one
    # then reuses what the first wrote.
    with locks.lock(lock_path, timeout=lock_timeout,
                    waiting_message="Waiting for another process preparing "
                    f"the same folder (lock {lock_path})"):
        # Built under the lock: a builder made before another process
        # finished would not see its data.
        builder = TlfastImageFolder(config=config, data_dir=data_root,
                                    file_format="tfrecord")
        reused = os.path.exists(os.path.join(os.fspath(builder.data_path),
                                             "dataset_info.json"))
        if reused:
            log.info("Reusing prepared data for '%s' (unchanged since it was "
                     "prepared): %s", config.root, builder.data_path)
        else:
            # What a killed preparation left behind (we hold its lock).
            config_dir = os.path.join(dataset_dir, config.name)
            for name in os.listdir(config_dir) if os.path.isdir(config_dir) else ():
                if name.startswith("incomplete."):
                    shutil.rmtree(os.path.join(config_dir, name), ignore_errors=True)
            log.info("Preparing '%s' as TFDS records in %s", config.root,
                     builder.data_path)
            start = time.perf_counter()
            # TFDS prints "Downloading and preparing dataset Unknown size"
            # for a local folder: kept for the log file, not the console.
            with contextlib.redirect_stdout(io.StringIO()) as printed:
                builder.download_and_prepare(
                    download_dir=os.path.join(data_root, "downloads"),
                    download_config=tfds.download.DownloadConfig(
                        try_download_gcs=False,
                        compute_stats=tfds.download.ComputeStatsMode.SKIP))
            for line in printed.getvalue().splitlines():
                log.debug("tfds: %s", line)
            log.info("Prepared %d images in %.1f s",
                     builder.info.splits.total_num_examples,
                     time.perf_counter() - start)
        index = _load_index(builder, config.name)
        # Marks the preparation as read by this process (a shared lock on
        # its ".use" file, not the ".lock" of preparing, which a reuse
        # takes): then `_remove_replaced` in another process leaves it alone
        # instead of deleting records a running job still reads. Taken
        # before ".lock" is let go: between the two, another process could
        # find it free and delete it.
        locks.hold(os.path.join(dataset_dir, config.name + ".use"), shared=True)
    # On a reuse too: a replaced preparation kept while another job read it
    # is removed by the next run that finds it free.
    _remove_replaced(dataset_dir, config)
    if not reused and _changed(config):
        log.warning("'%s' changed while it was being prepared; it will be "
                    "prepared again on the next run.", config.root)
    skipped = tuple(sources.Skipped(path, reason)
                    for path, reason in builder.info.metadata["skipped"])
    if strict and skipped:
        raise scan_lib.BadImagesError(skipped)
    splits = tuple(name for name in ("train", "validation", "test")
                   if name in builder.info.splits)
    return PreparedImageFolder(
        builder=builder, class_names=tuple(config.class_names), splits=splits,
        num_examples={s: builder.info.splits[s].num_examples for s in splits},
        skipped=skipped, reused=reused, data_dir=os.fspath(builder.data_path),
        root=config.root, fingerprint=config.name,
        index={s: (tuple(index[s]["ids"]), np.array(index[s]["labels"], np.int32))
               for s in splits})


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
        # {"image": SkipDecoding()})` (tested), parsed in batches: TFDS parses
        # one example at a time, which costs a quarter of decoding a 224-px
        # JPEG. The builder writes tf.train.Example TFRecords in shard order.
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
        ds = _parsed(files, _RECORD_SPEC).unbatch()
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
            f"{DATASET_NAME}|{self.prepared.fingerprint}|{self.split}|"
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
