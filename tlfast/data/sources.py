"""Image sources: a folder of class sub-folders (optionally pre-split), or a TFDS dataset.

Two folder layouts are understood, the ones `flow_from_directory` and
`image_dataset_from_directory` read:

        root/<class>/<image>                      # split later by tlfast
        root/{train,validation|val[,test]}/<class>/<image>

Files are listed, not opened, here: `tlfast.data.scan` decides which are usable.
"""

import dataclasses
import os
import re
from pathlib import Path

from tlfast.data import walk

# What `tf.io.decode_image` can decode. Matched on the lower-cased suffix; the
# scan then checks the header, so a PNG named `.jpg` still works.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
# Operating-system droppings: reported as skipped (so a user who counts files
# sees where each went), never decoded. Other hidden files are ignored.
OS_METADATA_FILES = frozenset({"thumbs.db", "desktop.ini", ".ds_store", "icon\r"})
TRAIN_NAMES = ("train", "training")
VALIDATION_NAMES = ("validation", "val", "valid")
TEST_NAMES = ("test",)


@dataclasses.dataclass(frozen=True)
class FileEntry:
    """One candidate image file.

    Attributes:
        path: Absolute path of the file.
        relpath: Path relative to the dataset root, with `/` separators; the
            stable identity used by the split and the caches.
        label: Integer class index into the folder's `class_names`.
        size: Bytes of the file when the scan checked it (None before the
            scan): the pipeline decodes it only while it still has them.
    """

    path: str
    relpath: str
    label: int
    size: int = None


def content_id(path, relpath):
    """Content identity of a file: "relpath|size|mtime_ns".

    The feature-cache key of an example: an edited file gets a new id, so
    its feature is recomputed; a prepared dataset stores the same id per
    record, so records and loose files share the cache. `pathlib`, not
    `os`: the TFDS builder calls it, and TFDS's builder tests forbid `os`.
    """
    st = Path(path).stat()
    return content_id_of(relpath, st.st_size, st.st_mtime_ns)


def content_id_of(relpath, size, mtime_ns):
    """The content id of a file with this relpath, size and mtime."""
    return f"{relpath}|{size}|{mtime_ns}"


def example_id(entry):
    """`content_id` of a `FileEntry`."""
    return content_id(entry.path, entry.relpath)


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A file that is not used, and why."""

    path: str
    reason: str


@dataclasses.dataclass(frozen=True)
class ImageFolder:
    """The listing of an image folder.

    Attributes:
        root: Absolute dataset root.
        class_names: Sorted class names; `label` indexes into it.
        splits: Split name -> files. A flat folder has only `"all"`; a pre-split
            one has `"train"`, `"validation"` and possibly `"test"`.
        skipped: Files not considered images (by extension), with a reason.
    """

    root: str
    class_names: tuple
    splits: dict
    skipped: tuple

    @property
    def presplit(self):
        return "all" not in self.splits


# Control characters: a name holding one would forge lines in labels.txt,
# CSVs and the console.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _is_hidden(name):
    return name.startswith(".")


def _class_dirs(path):
    names = sorted(entry.name for entry in os.scandir(path)
                   if entry.is_dir() and not _is_hidden(entry.name))
    control = [name for name in names if CONTROL_CHARACTERS.search(name)]
    if control:
        # A class name goes into labels.txt (one per line), CSVs and the
        # console: a newline or escape sequence in it would forge lines.
        raise ValueError(
            f"Class folder names must not contain control characters "
            f"(newlines, tabs, escape sequences); rename the folders in "
            f"'{path}'. Received: {control}")
    bad = [name for name in names if not is_utf8(name)]
    if bad:
        # A class name is written to labels.txt, TFDS metadata and the
        # model's outputs: there is no skipping it like a file.
        shown = [name.encode("utf-8", "surrogateescape") for name in bad]
        raise ValueError(
            f"Class folder names must be valid UTF-8 (a zip made on Windows "
            f"can store other bytes); rename the folders in '{path}'. "
            f"Received: {shown}")
    return names


# Bytes that are not UTF-8 (e.g. names from a zip made on Windows) cannot be
# stored as an id, a TFDS string or a tf.string path.
NOT_UTF8 = "file name is not valid UTF-8; rename the file"


def is_utf8(name):
    """Whether `name` (a str from the file system) is valid UTF-8."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # Undecodable bytes arrive as surrogates.
        return False
    return True


def extension_reason(name):
    """Why a file `name` is not listed as an image by its extension, or None."""
    ext = os.path.splitext(name)[1]
    if ext.lower() in IMAGE_EXTENSIONS:
        return None
    return (f"unsupported file extension '{ext or name}' (expected one of "
            f"{', '.join(IMAGE_EXTENSIONS)})")


def _relpath(path, root):
    """`path` relative to `root`, '/'-separated.

    Walked paths start with `root` as given: slicing costs 0.3 us a file,
    `os.path.relpath` + `Path.as_posix` 6 us (0.1 s of a 20k-file listing).
    """
    prefix = root.rstrip(os.sep) + os.sep
    if path.startswith(prefix):
        relpath = path[len(prefix):]
    else:
        relpath = os.path.relpath(path, root)
    return relpath if os.sep == "/" else relpath.replace(os.sep, "/")


def _list_class_files(root, split_dir, class_name, label, skipped,
                      follow_links=False):
    """Lists one class folder (recursively) through `walk.walk_files`.

    Special files, links out of the folder and link loops are reported in
    `skipped` with their reasons (see `tlfast.data.walk`).
    """
    files = []
    class_dir = os.path.join(split_dir, class_name)
    walked = walk.walk_files(class_dir, os.path.realpath(root),
                             follow_links=follow_links,
                             hidden=lambda n: _is_hidden(n)
                             and n.lower() not in OS_METADATA_FILES)
    for path, reason in walked:
        name = os.path.basename(path)
        if reason is None and name.lower() in OS_METADATA_FILES:
            reason = "operating-system metadata file, not an image"
        elif reason is None:
            reason = extension_reason(name)
        relpath = _relpath(path, root)
        if reason is None and not is_utf8(relpath):
            reason = NOT_UTF8
        if reason is None:
            files.append(FileEntry(path, relpath, label))
        else:
            skipped.append(Skipped(path, reason))
    return files


def _find_child(root, names):
    children = {name.lower(): name for name in os.listdir(root)}
    for name in names:
        if name in children and os.path.isdir(os.path.join(root, children[name])):
            return children[name]
    return None


def list_image_folder(root, follow_links=False, labels=None):
    """Lists an image folder of either supported layout.

    Args:
        root: Dataset root (str or path-like).
        follow_links: Use files and folders reached through symbolic links
            that resolve outside `root` (by default they are skipped and
            reported; see `tlfast.data.walk`).
        labels: Optional `tlfast.data.labels_csv.LabelsCsv`: the images and
            their labels come from that CSV instead of class folders.

    Returns:
        An `ImageFolder`.

    Raises:
        FileNotFoundError: `root` does not exist or is not a directory.
        ValueError: No class sub-folders, or validation/test classes that the
            training split does not have.
    """
    if labels is not None:
        # Imported here: labels_csv builds on this module's entries.
        from tlfast.data import labels_csv

        return labels_csv.list_labelled_folder(root, labels, follow_links)
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise FileNotFoundError(
                f"Dataset folder not found: '{root}'. Expected a folder of class "
                "sub-folders (root/<class>/<image>) or with train/ and validation/ "
                f"sub-folders. Received: data_dir={root!r}")
    train_name = _find_child(root, TRAIN_NAMES)
    skipped = []
    if train_name is None:
        class_names = tuple(_class_dirs(root))
        _check_classes(root, class_names)
        _report_loose_images(root, skipped)
        files = []
        for label, name in enumerate(class_names):
            files += _list_class_files(root, root, name, label, skipped,
                                       follow_links)
        splits = {"all": files}
    else:
        train_dir = os.path.join(root, train_name)
        class_names = tuple(_class_dirs(train_dir))
        _check_classes(train_dir, class_names, hint=(
            f" '{root}' was read as split folders because it has a "
            f"'{train_name}' folder; if '{train_name}' is one of the classes "
            "of a flat dataset, rename that folder (e.g. to "
            f"'{train_name}_class')."))
        split_dirs = {"train": train_name}
        for split, names in (("validation", VALIDATION_NAMES), ("test", TEST_NAMES)):
            found = _find_child(root, names)
            if found is not None:
                split_dirs[split] = found
        splits = {}
        for split, dirname in split_dirs.items():
            split_dir = os.path.join(root, dirname)
            extra = sorted(set(_class_dirs(split_dir)) - set(class_names))
            if extra:
                raise ValueError(
                        f"The '{dirname}' folder has classes that '{train_name}' does not: "
                        f"{extra}. Every split must use the training classes "
                        f"{list(class_names)}. Received: {split_dir!r}")
            _report_loose_images(split_dir, skipped)
            files = []
            for label, name in enumerate(class_names):
                if os.path.isdir(os.path.join(split_dir, name)):
                    files += _list_class_files(root, split_dir, name, label,
                                               skipped, follow_links)
            splits[split] = files
    return ImageFolder(root, class_names, splits, tuple(skipped))


def _report_loose_images(folder, skipped):
    """Images lying in `folder` itself, outside any class folder, have no
    label: report them (other loose files, a README say, are left alone)."""
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if (not _is_hidden(name) and os.path.isfile(path)
                and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS):
            skipped.append(Skipped(
                path, "not inside a class folder, so it has no label; move "
                f"it into {os.path.basename(folder) or folder}/<class name>/"))


def _check_classes(path, class_names, hint=""):
    if len(class_names) < 2:
        raise ValueError(
                f"Image classification needs at least 2 class sub-folders in '{path}', "
                f"found {len(class_names)}: {list(class_names)}. Put each class's "
                f"images in a sub-folder named after the class.{hint}")



@dataclasses.dataclass(frozen=True)
class TfdsSource:
    """A TFDS split as unbatched {"image": uint8 [H, W, 3], "label": int32} dicts.

    Attributes:
      dataset: The `tf.data.Dataset` (images at their stored size).
      class_names: From the dataset's `ClassLabel` feature.
      num_examples: Size of the split.
    """

    dataset: object
    class_names: tuple
    num_examples: int


# TFDS's own mirror; most datasets, and TFDS metadata, come from there.
NETWORK_PROBE = ("storage.googleapis.com", 443)


def _probe_network(timeout=5.0):
    """Fails in milliseconds without network, where a download would retry."""
    import socket

    try:
        socket.create_connection(NETWORK_PROBE, timeout=timeout).close()
    except OSError as e:
        raise OSError(f"no network connection ({NETWORK_PROBE[0]} is "
                      f"unreachable: {e})") from e


def tfds_builder(name, data_dir=None, download=True):
    """A prepared TFDS builder, or a RuntimeError naming the offline options."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
        if download and not builder.is_prepared():
            _probe_network()
            builder.download_and_prepare()
        return builder
    except Exception as e:  # TFDS raises many kinds; all end the same way.
        raise RuntimeError(
            f"Could not load TFDS dataset '{name}': {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}. Downloading needs "
            "network access; offline, point --tfds_data_dir at a folder where "
            "the dataset was already prepared, or train from an image folder "
            "with --data_dir=<folder of class sub-folders>.") from e


def tfds_class_names(builder):
    """Class names of a TFDS image-classification builder.

    Raises:
      ValueError: The dataset has no "image" + "label" features.
    """
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise ValueError(
            f"TFDS dataset '{builder.name}' has no 'image' and 'label' features, "
            "so it is not an image-classification dataset. Received features: "
            f"{list(features.keys())}")
    return tuple(features["label"].names)


def load_tfds(name, split="train", data_dir=None, download=True):
    """Loads a TFDS image-classification dataset in tlfast's element format.

    Args:
      name: TFDS name, e.g. "tf_flowers" or "cats_vs_dogs".
      split: TFDS split string; slicing works ("train[:80%]").
      data_dir: Where TFDS keeps prepared data (default ~/tensorflow_datasets).
      download: Allow downloading and preparing when not there yet.

    Returns:
      A `TfdsSource`.

    Raises:
      RuntimeError: The dataset could not be downloaded or prepared (usually
        no network), with the offline alternatives.
      ValueError: The dataset has no "image" + "label" features.
    """
    import tensorflow as tf

    builder = tfds_builder(name, data_dir, download)
    class_names = tfds_class_names(builder)
    try:
        ds = builder.as_dataset(split=split, shuffle_files=False)
    except Exception as e:
        raise RuntimeError(
            f"Could not read split '{split}' of TFDS dataset '{name}': "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}. "
            "Offline, point --tfds_data_dir at a folder where it was already "
            "prepared, or train from an image folder with --data_dir.") from e
    num_examples = builder.info.splits[split].num_examples
    ds = ds.map(
        lambda e: {"image": e["image"], "label": tf.cast(e["label"], tf.int32)},
        num_parallel_calls=tf.data.AUTOTUNE)
    return TfdsSource(ds, class_names, int(num_examples))
