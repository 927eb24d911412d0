"""TFDS builder for a local image folder, validated and split by tlfast.

`tlfast.data.folder_builder.prepare_image_folder` is the tlfast-facing API;
this module is the TFDS side, so that the prepared data is an ordinary TFDS
dataset (`tfds.builder_from_directory` reads it anywhere, no tlfast needed).

Each example keeps the ORIGINAL file bytes in `image` (`tfds.features.Image`
stores given bytes as they are; it only encodes NumPy arrays). tlfast reads
them with `SkipDecoding` and decodes them with `pipeline.decode_image`, so a
prepared image gives exactly the pixels of the file on disk. Plain
`tfds.load`-style decoding works for JPEG, PNG, BMP, WebP and still GIFs; an
animated GIF needs `SkipDecoding` (TFDS would return all its frames).

The source folder and the split settings come from an `ImageFolderConfig`
whose name is a fingerprint of the folder's content (see
`folder_builder.folder_config`): a changed folder is a new config, so it is
prepared anew instead of being served stale.
"""

import dataclasses
import inspect

from absl import logging
from etils import epath
import tensorflow_datasets as tfds

from tlfast.data import prepare
from tlfast.data import headers
from tlfast.data import scan as scan_lib
from tlfast.data import sources


@dataclasses.dataclass(eq=False)
class ImageFolderConfig(tfds.core.BuilderConfig):
    """Which folder to prepare, and how.

    Build it with `tlfast.data.folder_builder.folder_config`, which lists the
    folder and names the config after a fingerprint of its content.

    Attributes:
      root: Absolute path of the image folder.
      class_names: The folder's class names (sorted sub-folder names).
      validation_split: Validation fraction when the folder has no
        validation folder of its own.
      seed: Seed of tlfast's stable split.
      max_pixels: Decompression-bomb guard of the scan.
      skip_placeholders: The scan skips "image not found" graphics.
      follow_links: The listing uses links out of the folder.
      cache_dir: Where the scan remembers its verdicts; None disables that.
        Does not change the prepared data, so not part of the fingerprint.
      strict: Fail on any bad file instead of skipping it.
      progress: Optional callable(done, total) during the scan.
      labels: Optional `tlfast.data.labels_csv.LabelsCsv`: labels from a CSV
        instead of class folder names.
      listing: The `tlfast.data.sources.ImageFolder` the config was named
        from: the preparation scans it instead of listing the folder again
        (None: it lists the folder).
    """

    root: str = ""
    class_names: tuple = ()
    validation_split: float = 0.2
    seed: int = 0
    max_pixels: int = scan_lib.DEFAULT_MAX_PIXELS
    skip_placeholders: bool = True
    follow_links: bool = False
    cache_dir: str = None
    strict: bool = False
    progress: object = dataclasses.field(default=None, repr=False)
    labels: object = None
    listing: object = dataclasses.field(default=None, repr=False)


# Bytes of checked images the scan hands to the record writer instead of
# the writer reading the files again: all of a small folder's, a fraction of
# a large one's (the rest is re-read).
KEEP_BYTES = 64 * 2**20


def settings_of(config):
    """What besides the folder's content decides the records (as JSON)."""
    settings = [float(config.validation_split), int(config.seed),
                int(config.max_pixels)]
    # Only when not the default: earlier preparations keep their settings.
    if not config.skip_placeholders:
        settings.append(0)
    if config.labels is not None:
        # Which CSV, not its content: a changed CSV replaces the old records.
        settings.append([config.labels.path,
                         config.labels.delimiter])
    return settings


class TlfastImageFolder(tfds.core.GeneratorBasedBuilder):
    """An image folder, scanned, split and stored as TFDS records."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Original file bytes, label, content id, relpath."}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        # TFDS 4.9.10 finds this through `importlib_resources`, which it only
        # installs on Python < 3.9 (tensorflow/datasets#11212): preparing
        # would fail with ModuleNotFoundError.
        return epath.Path(inspect.getfile(cls))

    def _info(self):
        config = self.builder_config
        if config is not None and config.class_names:
            label = tfds.features.ClassLabel(names=list(config.class_names))
        else:
            # No folder yet (TFDS's own tests build one bare): names unknown.
            label = tfds.features.ClassLabel()
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(
                    shape=(None, None, 3),
                    doc="The original file bytes (JPEG/PNG/BMP/GIF/WebP)."),
                "label": label,
                "id": tfds.features.Text(
                    doc="Content id 'relpath|size|mtime_ns' of the file."),
                "relpath": tfds.features.Text(
                    doc="Path relative to the folder, '/'-separated."),
            }),
            supervised_keys=("image", "label"),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Local files only: nothing is downloaded.
        config = self.builder_config
        if config is None or not config.root:
            raise ValueError(
                "TlfastImageFolder needs the folder to prepare: pass "
                "config=tlfast.data.folder_builder.folder_config(<folder>). "
                f"Received: config={config!r}")
        data = prepare.prepare_folder(
            config.root, validation_split=config.validation_split,
            seed=config.seed, cache_dir=config.cache_dir, strict=config.strict,
            max_pixels=config.max_pixels, progress=config.progress,
            skip_placeholders=config.skip_placeholders,
            follow_links=config.follow_links, labels=config.labels,
            listing=config.listing, keep_bytes=KEEP_BYTES)
        if tuple(data.class_names) != tuple(config.class_names):
            raise ValueError(
                f"The classes of '{config.root}' changed while it was being "
                f"prepared: {list(config.class_names)} became "
                f"{list(data.class_names)}. Run again once the folder is "
                "stable.")
        splits = {"train": data.train, "validation": data.validation}
        if data.test:
            splits["test"] = list(data.test)
        # Stored with the records, so that a reuse reports the same files.
        self.info.metadata.update({
            "root": config.root,
            "fingerprint": config.name,
            "presplit": data.presplit,
            # folder_builder deletes a replaced preparation only when these
            # match (same settings, older content).
            "settings": settings_of(config),
            "skipped": [[s.path, s.reason] for s in data.skipped],
            # Scan verdicts reused from the scan cache (an interrupted
            # preparation resumes its scan).
            "scan_cached": int(data.scan_cached),
        })
        return {name: self._generate_examples(entries, config.max_pixels,
                                              data.images)
                for name, entries in splits.items()}

    def _generate_examples(self, entries, max_pixels, images):
        for entry in entries:
            try:
                # The bytes the scan read and decoded, if it kept them (up
                # to KEEP_BYTES: 20k 48-px JPEGs re-read cost 0.4 s of a
                # 3 s preparation); else read again through the guard. The
                # id is of the file that was read.
                read = images.pop(entry.path, None) or headers.read_image_file(
                    entry.path, max_pixels)
            except headers.Refused as e:
                # Changed since the scan: the folder's fingerprint changed
                # too, so the next run prepares it again.
                logging.warning("Leaving out %s, changed since the scan: %s",
                                entry.path, e)
                continue
            image = read.data
            identity = sources.content_id_of(entry.relpath, read.size,
                                             read.mtime_ns)
            # relpath is unique in the folder and independent of where the
            # folder lives, so the record order is the same everywhere.
            yield entry.relpath, {
                "image": image,
                "label": entry.label,
                "id": identity,
                "relpath": entry.relpath,
            }
