"""Labels from a CSV file (`path,label`) instead of class folder names.

fastai's `from_csv` and Hugging Face datasets read labels this way; a folder
of photos exported from a labelling tool usually comes with such a file:

    path,label                     path,label            (--multi_label)
    img/0001.jpg,daisy             pairs/01.jpg,daisy roses
    img/0002.jpg,roses             pairs/02.jpg,tulips

Paths are relative to the data folder, `/`-separated, one row per image.
An optional `split` column (train / validation or val / test, as the split
folders are named) keeps a split made elsewhere; without it tlfast's stable
hash split divides the rows.
The rows are judged like a walked folder's files (`tlfast.data.walk`): a
path that leaves the folder (`..`, an absolute path, a link out of it), a
special file, a missing file or an unknown extension is reported as skipped
with its line, never read.

Multi-label rows hold several labels split by a delimiter. Each distinct
*set* of labels becomes one class of the listing (its labels sorted and
joined by the delimiter, e.g. "daisy roses"), so the scan, the stratified
split, the prepared records and the feature cache handle them as any class;
`label_sets` turns those set names back into the labels and a multi-hot
matrix for the model.
"""

import csv
import dataclasses
import hashlib
import os
import stat

import numpy as np

from tlfast.data import headers
from tlfast.data import sources
from tlfast.data import walk

# Bumped when the same CSV would be read differently.
LABELS_CSV_VERSION = 1


@dataclasses.dataclass(frozen=True)
class LabelsCsv:
    """Where labels come from when not from folder names.

    Attributes:
      path: The CSV file (columns `path,label`, a header row); stored as
        its real absolute path.
      delimiter: None for one label per image; else the string between the
        labels of a multi-label row (e.g. " ").
    """

    path: str
    delimiter: str = None

    def __post_init__(self):
        # Absolute: it names the CSV in prepared data's settings.
        object.__setattr__(self, "path", os.path.realpath(
            os.path.expanduser(os.fspath(self.path))))
        if self.delimiter is not None and (
                not self.delimiter or self.delimiter in "\r\n"):
            raise ValueError(
                "The label delimiter must be a non-empty string without line "
                f"breaks. Received: label_delimiter={self.delimiter!r}")

    @property
    def multi_label(self):
        return self.delimiter is not None

    def identity(self):
        """What of the CSV decides the listing: its bytes and the delimiter."""
        try:
            with open(self.path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
        except OSError as e:
            raise FileNotFoundError(
                f"Cannot read the labels CSV '{self.path}': {e.strerror or e}. "
                f"Received: labels_csv={self.path!r}") from e
        return (f"labels-csv {LABELS_CSV_VERSION} {digest} "
                f"{self.delimiter!r}")


def of_settings(labels_csv, multi_label=False, label_delimiter=" "):
    """The `LabelsCsv` of a run's settings, or None (labels from folders)."""
    if not labels_csv:
        return None
    return LabelsCsv(labels_csv, label_delimiter if multi_label else None)


def _rows(labels):
    """(line number, path, label, split) of every data row; checks the header.

    split is None without a split column."""
    try:
        f = open(labels.path, newline="", encoding="utf-8-sig")
    except OSError as e:
        raise FileNotFoundError(
            f"Cannot read the labels CSV '{labels.path}': {e.strerror or e}. "
            f"Received: labels_csv={labels.path!r}") from e
    with f:
        try:
            reader = csv.reader(f)
            header = [h.strip().lower() for h in next(reader, [])]
            if "path" not in header or "label" not in header:
                raise ValueError(
                    f"The labels CSV '{labels.path}' must start with a header "
                    "row naming the columns 'path' and 'label' (paths "
                    "relative to the data folder). Received: header="
                    f"{header}")
            columns = [header.index(c) if c in header else None
                       for c in ("path", "label", "split")]
            width = max(c for c in columns if c is not None) + 1
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                cells = [c.strip() for c in row] + [""] * (width - len(row))
                yield (reader.line_num, *(None if c is None else cells[c]
                                          for c in columns))
        except UnicodeDecodeError as e:
            raise ValueError(
                f"The labels CSV '{labels.path}' is not UTF-8 text: {e}. Save "
                "it as UTF-8.") from e


def _label_of(raw, labels):
    """The class name of a row's label field ('' when it has none)."""
    if not labels.multi_label:
        return raw
    parts = sorted({part.strip() for part in raw.split(labels.delimiter)} - {""})
    return labels.delimiter.join(parts)


def _check_names(names, labels):
    bad = [n for n in names if sources.CONTROL_CHARACTERS.search(n)]
    if bad:
        # Labels go into labels.txt (one per line), CSVs and the console.
        raise ValueError(
            f"Labels in '{labels.path}' must not contain control characters "
            f"(newlines, tabs, escape sequences). Received: {bad[:5]}")


def _judge(root, root_real, relpath, follow_links):
    """(absolute path, skip reason or None) of one row's path."""
    path = os.path.join(root, *relpath.split("/"))
    parts = relpath.split("/")
    if os.path.isabs(relpath) or ".." in parts or "" in parts:
        return path, ("not a relative path inside the data folder (no "
                      "absolute paths, '..' or '//'): not read")
    try:
        mode = os.lstat(path).st_mode
    except OSError as e:
        return path, f"not found ({e.strerror or e})"
    if stat.S_ISLNK(mode):
        target = os.path.realpath(path)
        if not follow_links and not walk.inside(target, root_real):
            return path, walk.outside_reason(path, target)
        try:
            mode = os.stat(path).st_mode
        except OSError as e:
            return path, f"broken symbolic link to '{target}': {e.strerror or e}"
    elif not follow_links and not walk.inside(os.path.realpath(path), root_real):
        # A folder link on the way out of the data folder.
        return path, walk.outside_reason(path, os.path.realpath(path))
    if not stat.S_ISREG(mode):
        return path, headers.not_regular_reason(mode)
    return path, sources.extension_reason(os.path.basename(path))


def list_labelled_folder(root, labels, follow_links=False):
    """Lists the images a labels CSV names, as a flat `sources.ImageFolder`.

    Args:
      root: The data folder the CSV's paths are relative to.
      labels: A `LabelsCsv`.
      follow_links: Use links that resolve outside `root`.

    Returns:
      A `sources.ImageFolder` with one split, "all" (or those of its split
      column); its class names are the sorted labels (multi-label: the
      sorted label sets).

    Raises:
      FileNotFoundError: No such folder or CSV.
      ValueError: No header, not UTF-8, control characters in a label, or
        fewer than two labels.
    """
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"Dataset folder not found: '{root}'. With --labels_csv, the "
            "data folder holds the images the CSV's paths are relative to. "
            f"Received: data_dir={root!r}")
    root_real, name = os.path.realpath(root), os.path.basename(labels.path)
    rows, skipped, seen = [], [], {}
    for line, relpath, raw, split in _rows(labels):
        path, reason = _judge(root, root_real, relpath, follow_links)
        label, split = _label_of(raw, labels), _split_of(split)
        if reason is None and not label:
            reason = "no label"
        if reason is None and split == "":
            reason = ("its split is none of "
                      f"{', '.join(_SPLITS)} (or empty)")
        if reason is None and relpath in seen:
            reason = f"listed again (first on line {seen[relpath]}): the first row is used"
        if reason is not None:
            skipped.append(sources.Skipped(path, f"{name} line {line}: {reason}"))
            continue
        seen[relpath] = line
        rows.append((path, relpath, label, split))
    class_names = tuple(sorted({row[2] for row in rows}))
    _check_names(class_names, labels)
    found = label_sets(class_names, labels.delimiter)[0] if labels.multi_label \
        else class_names
    if len(found) < 2:
        raise ValueError(
            f"Image classification needs at least 2 labels; the usable rows "
            f"of '{labels.path}' have {len(found)}: {list(found)} "
            f"({len(skipped)} row(s) skipped).")
    index = {c: i for i, c in enumerate(class_names)}
    splits = {}
    for path, relpath, label, split in rows:
        splits.setdefault(split or "all", []).append(
            sources.FileEntry(path, relpath, index[label]))
    if "all" in splits and len(splits) > 1:
        raise ValueError(
            f"The split column of '{labels.path}' is empty on some rows and "
            f"not on others ({len(splits['all'])} row(s) without one): give "
            "every row a split, or remove the column to let tlfast split.")
    if splits and "all" not in splits and "train" not in splits:
        raise ValueError(
            f"The split column of '{labels.path}' names no training row: "
            "mark some rows 'train'.")
    return sources.ImageFolder(root, class_names, splits, tuple(skipped))


_SPLITS = {**{n: "train" for n in sources.TRAIN_NAMES},
           **{n: "validation" for n in sources.VALIDATION_NAMES},
           **{n: "test" for n in sources.TEST_NAMES}}


def _split_of(value):
    """A split column's value as a split name; None without the column or a
    value, "" for one that names no split."""
    if not value:
        return None
    return _SPLITS.get(value.lower(), "")


def label_sets(class_names, delimiter):
    """The labels of a multi-label listing and its multi-hot matrix.

    Args:
      class_names: Label-set names from `list_labelled_folder` (labels sorted
        and joined by `delimiter`).
      delimiter: The delimiter they were joined with.

    Returns:
      (labels: sorted tuple of L label names, matrix: float32 [C, L] with
      matrix[c, l] = 1 when class (label set) c holds label l).
    """
    sets = [name.split(delimiter) for name in class_names]
    names = tuple(sorted({label for s in sets for label in s}))
    column = {label: i for i, label in enumerate(names)}
    matrix = np.zeros((len(sets), len(names)), np.float32)
    for row, labels_of_set in enumerate(sets):
        matrix[row, [column[label] for label in labels_of_set]] = 1.0
    return names, matrix
