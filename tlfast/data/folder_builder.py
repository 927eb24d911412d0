"""Prepare an image folder once as a TFDS dataset, then read it fast.

`prepare_image_folder` scans and splits a folder with the same rules as
`tlfast.data.prepare.prepare_folder` and writes the usable images, still encoded,
as TFDS records under

    <data_root>/tlfast_image_folder/<folder name>_<fingerprint>/1.0.0/

The fingerprint hashes every file's (relpath, size, mtime) and the split and
scan settings, so an unchanged folder is found again ("reusing prepared data")
and a touched, added or removed file leads to a new preparation (the one it
replaces, same settings but older content, is deleted).
`tlfast.data.records.prepared_examples` reads a split back.
"""

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import shutil
import time

import numpy as np
import tensorflow_datasets as tfds

from tlfast import atomic
from tlfast import locks
from tlfast.data import records as records_lib
from tlfast.data import scan as scan_lib
from tlfast.data import sources
from tlfast.data import split as split_lib
from tlfast.data.image_folder import ImageFolderConfig
from tlfast.data.image_folder import TlfastImageFolder
from tlfast.data.image_folder.image_folder_dataset_builder import settings_of

log = logging.getLogger("tlfast")

# Record bytes TFDS's writer may hold in memory (see `_writer_memory`).
_WRITER_BUFFER_BYTES = 64 * 2**20

DATASET_NAME = TlfastImageFolder.name
# Ids and labels of every split in record order, written beside the records
# so that opening a split does not read all its images to learn its labels.
INDEX_FILE = "tlfast_index.json"


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


def _read_index(builder):
    """Ids and labels of every split in record order (reads no image).

    Parsed from the records directly: through TFDS's partial decoding it
    took 0.84 s for 20,000 records, 0.1 s so.
    """
    index = {}
    for split, info in builder.info.splits.items():
        ids, labels = [], []
        for batch in records_lib.parsed(
                info.filepaths, ("id", "label")).as_numpy_iterator():
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


@contextlib.contextmanager
def _writer_memory(limit):
    """Caps what TFDS's record writer holds in memory before it spills.

    The writer keeps every serialized example of a split in RAM until they
    pass `tfds.core.shuffle.MAX_MEM_BUFFER_SIZE` (1 GB), then moves them to
    bucket files on disk. TFDS has no setting for it, hence the module
    global, restored after.
    """
    from tensorflow_datasets.core import shuffle

    saved = shuffle.MAX_MEM_BUFFER_SIZE
    shuffle.MAX_MEM_BUFFER_SIZE = min(saved, limit)
    try:
        yield
    finally:
        shuffle.MAX_MEM_BUFFER_SIZE = saved


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
            with contextlib.redirect_stdout(io.StringIO()) as printed, \
                    _writer_memory(_WRITER_BUFFER_BYTES):
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
