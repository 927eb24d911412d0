"""Stable, stratified, seeded train/validation split.

Each file's side is decided by a hash of (seed, relative path) alone, as the
old TF `retrain.py` did, so adding images (or classes) never moves existing
ones between splits, and the same folder always splits the same way. The
relative path names the class folder, so every class is split on its own;
the one exception to the hash keeps a tiny class usable: one image always
trains, and a class of two or more always has one validation image.
"""

import csv
import hashlib
import os
import unicodedata

from tlfast import atomic

# The assignment rule's version: prepared data records its split, so a change
# of rule must change the preparation's fingerprint too.
SPLIT_VERSION = 3  # 3: names hashed in Unicode NFC.


def hash_fraction(relpath, seed=0):
    """Maps a relative path to a stable number in [0, 1).

    Args:
      relpath: The file's path relative to the dataset root.
      seed: Changes the whole assignment.
    """
    # NFC: a folder zipped on macOS (decomposed accents) and unzipped
    # elsewhere must split as the original did.
    relpath = unicodedata.normalize("NFC", relpath)
    digest = hashlib.sha1(f"{seed}:{relpath}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_entries(entries, validation_split=0.2, seed=0):
    """Splits files into train and validation, per class.

    Args:
      entries: `FileEntry`s of one flat folder.
      validation_split: Fraction in (0, 1) that goes to validation.
      seed: Seed of the hash.

    Returns:
      {"train": [...], "validation": [...]}, each in input order.

    Raises:
      ValueError: `validation_split` outside (0, 1).
    """
    if not 0.0 < validation_split < 1.0:
        raise ValueError(
            "validation_split must be a fraction strictly between 0 and 1. "
            f"Received: validation_split={validation_split!r}")
    scores = [hash_fraction(entry.relpath, seed) for entry in entries]
    validation = {i for i, score in enumerate(scores) if score < validation_split}
    by_class = {}
    for i, entry in enumerate(entries):
        by_class.setdefault(entry.label, []).append(i)
    for members in by_class.values():
        held_out = [i for i in members if i in validation]
        if len(held_out) == len(members):  # Nothing left to learn the class.
            validation.discard(max(members, key=scores.__getitem__))
        elif not held_out and len(members) >= 2:  # Nothing to check it on.
            validation.add(min(members, key=scores.__getitem__))
    out = {"train": [], "validation": []}
    for i, entry in enumerate(entries):
        out["validation" if i in validation else "train"].append(entry)
    return out


def split_counts(splits, num_classes):
    """{split: [count per class]} for reports and balance checks."""
    counts = {}
    for name, entries in splits.items():
        per_class = [0] * num_classes
        for entry in entries:
            per_class[entry.label] += 1
        counts[name] = per_class
    return counts


def write_split(path, splits, class_names):
    """Writes which file went where, as CSV (split, label, class, relpath).

    Written atomically; the file is enough to reproduce a run's split.
    """
    atomic.write_csv(path, ["split", "label", "class", "relpath"], (
        [name, entry.label, class_names[entry.label], entry.relpath]
        for name, entries in splits.items() for entry in entries))


def read_split(path):
    """Reads a split file back: {split: [(relpath, label), ...]}."""
    out = {}
    # utf-8-sig: a file saved again by a spreadsheet on Windows has a BOM.
    with open(path, newline="", encoding="utf-8-sig") as f:
        for row in csv.DictReader(f):
            out.setdefault(row["split"], []).append(
                (atomic.csv_value(row["relpath"]), int(row["label"])))
    return out
