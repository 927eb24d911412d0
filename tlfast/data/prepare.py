"""From a folder (or TFDS name) to validated, split examples, before any heavy work.

Everything here is cheap (listing, a cached scan, hashing) so that an unusable
dataset fails in seconds with a message saying what to fix.
"""

import dataclasses
import logging
import os

from tlfast.data import scan as scan_lib
from tlfast.data import sources
from tlfast.data import split as split_lib

log = logging.getLogger("tlfast")


@dataclasses.dataclass(frozen=True)
class PreparedFolder:
    """Usable, split examples of an image folder.

    Attributes:
      root: Dataset root.
      class_names: Class names; labels index into them.
      train: `FileEntry`s for training.
      validation: `FileEntry`s for validation.
      skipped: Every `Skipped` file (bad extension or failed the scan).
      presplit: True when the folder had its own train/validation folders.
      scan_cached: How many scan verdicts came from the scan cache.
      test: `FileEntry`s of the folder's own test/ folder that passed the
        scan (empty without one).
      images: The scan's `ScanResult.images` (bytes it read and checked).
    """

    root: str
    class_names: tuple
    train: tuple
    validation: tuple
    skipped: tuple
    presplit: bool
    scan_cached: int = 0
    test: tuple = ()
    images: dict = dataclasses.field(default_factory=dict, repr=False)


def prepare_folder(data_dir, *, validation_split=0.2, seed=0, cache_dir=None,
                   strict=False, max_pixels=scan_lib.DEFAULT_MAX_PIXELS,
                   progress=None, skip_placeholders=True, follow_links=False,
                   labels=None, listing=None, keep_bytes=0):
    """Lists, scans and splits an image folder.

    Args:
      data_dir: Folder of class sub-folders, or with train/ and validation/
        (or val/) sub-folders of them.
      validation_split: Fraction for validation when the folder has no
        validation folder.
      seed: Split seed.
      cache_dir: Remembers scan verdicts; None disables that.
      strict: Fail on any bad file instead of skipping it.
      max_pixels: Decompression-bomb guard.
      progress: Optional callable(done, total) during the scan.
      follow_links: Use links that resolve outside the folder (see
        `tlfast.data.walk`).
      skip_placeholders: Skip "image not found" graphics (few colours, one
        covering most of the image); False keeps them (e.g. line drawings).
      labels: Optional `tlfast.data.labels_csv.LabelsCsv` (labels from a CSV).
      listing: The folder's `sources.ImageFolder` if already listed (made
        with the same `follow_links` and `labels`); None lists it.
      keep_bytes: As for `scan.scan_files`.

    Returns:
      A `PreparedFolder`.

    Raises:
      FileNotFoundError: No such folder.
      ValueError: Fewer than two classes with usable training images, no
        usable validation image, or (strict) bad files.
    """
    folder = listing or sources.list_image_folder(data_dir, follow_links, labels)
    if folder.presplit:
        train = folder.splits["train"]
        validation = folder.splits.get("validation", [])
    else:
        train, validation = [], []
    entries = [e for files in folder.splits.values() for e in files]
    result = scan_lib.scan_files(entries, root=folder.root, cache_dir=cache_dir,
                                 max_pixels=max_pixels, strict=strict,
                                 progress=progress,
                                 skip_placeholders=skip_placeholders,
                                 keep_bytes=keep_bytes)
    usable = set(e.path for e in result.usable)
    skipped = tuple(folder.skipped) + tuple(result.skipped)
    if strict and folder.skipped:
        raise scan_lib.BadImagesError(folder.skipped)
    if folder.presplit:
        train = [e for e in train if e.path in usable]
        validation = [e for e in validation if e.path in usable]
        if not validation and folder.splits.get("validation"):
            listed = folder.splits["validation"]
            where = os.path.join(folder.root, listed[0].relpath.split("/")[0])
            bad = [s for s in result.skipped
                   if s.path in {e.path for e in listed}]
            example = f" e.g. '{bad[0].path}': {bad[0].reason}." if bad else ""
            raise ValueError(
                f"None of the {len(listed)} image(s) in the validation folder "
                f"'{where}' is usable.{example} Fix or replace them, or "
                "remove the folder to hold out part of train/ instead.")
        if not validation:
            # A train/ folder without val/: split train ourselves.
            parts = split_lib.split_entries(train, validation_split, seed)
            train, validation = parts["train"], parts["validation"]
    else:
        parts = split_lib.split_entries(result.usable, validation_split, seed)
        train, validation = parts["train"], parts["validation"]
    _check_usable(folder, train, validation, skipped)
    return PreparedFolder(folder.root, folder.class_names, tuple(train),
                          tuple(validation), skipped, folder.presplit,
                          result.cached,
                          test=tuple(e for e in folder.splits.get("test", ())
                                     if e.path in usable),
                          images=result.images)


def _check_usable(folder, train, validation, skipped):
    counts = [0] * len(folder.class_names)
    for entry in train:
        counts[entry.label] += 1
    empty = [name for name, n in zip(folder.class_names, counts) if n == 0]
    usable_classes = len(folder.class_names) - len(empty)
    if usable_classes < 2:
        raise ValueError(
            f"'{folder.root}' has {usable_classes} class(es) with usable "
            f"training images; classification needs at least 2. Classes "
            f"without usable images: {empty}. {len(skipped)} file(s) were "
            "skipped (see the reasons logged above / in metrics.json).")
    for name in empty:
        bad = [s for s in skipped
               if os.sep + name + os.sep in s.path]
        log.warning(
            "Class '%s' has no usable training images (%d file(s) skipped); "
            "the model will never predict it.", name, len(bad))
    if not validation:
        raise ValueError(
            f"'{folder.root}' leaves no usable validation images: add a "
            "validation/ folder or more images, or raise validation_split. "
            f"Received: {len(train)} training images.")


def log_skipped(skipped, limit=20):
    """Logs skipped files with their reasons (the first `limit` of them)."""
    if not skipped:
        return
    log.warning("Skipped %d file(s):", len(skipped))
    for item in skipped[:limit]:
        log.warning("  %s: %s", item.path, item.reason)
    if len(skipped) > limit:
        log.warning("  ... and %d more (all listed in metrics.json)",
                    len(skipped) - limit)
