"""What a training run trains on: a scanned folder, a prepared TFDS folder, or a TFDS dataset."""

import dataclasses
import logging
import os

from tlfast import run_folder
from tlfast.data import examples as examples_lib
from tlfast.data import labels_csv
from tlfast.data import prepare
from tlfast.data import sources
from tlfast.progress import Phase

log = logging.getLogger("tlfast")


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """The two example sets of a run and what is known about them."""

    class_names: tuple
    train: examples_lib.Examples
    validation: examples_lib.Examples
    skipped: tuple = ()
    presplit: bool = False
    scan_cached: int = 0
    split_file: str = None
    tfds_splits: tuple = None
    prepared_tfds: dict = None
    # Multi-label: the labels (the model's outputs) and float32 [sets,
    # labels] multi-hot rows of the label sets that `class_names` name.
    label_names: tuple = None
    label_matrix: object = dataclasses.field(default=None, repr=False)

    @property
    def outputs(self):
        """Names of the model's outputs: the labels, or the classes."""
        return self.label_names or self.class_names

    def with_label_sets(self, delimiter):
        """This data with multi-label `label_names` and `label_matrix`."""
        names, matrix = labels_csv.label_sets(self.class_names, delimiter)
        return dataclasses.replace(self, label_names=names,
                                   label_matrix=matrix)


def labels_of(config):
    """The run's `LabelsCsv` (--labels_csv), or None: labels from folders."""
    return labels_csv.of_settings(config.labels_csv, config.multi_label,
                                  config.label_delimiter)


def list_folder(config):
    """The run's folder listed (a `sources.ImageFolder`), or None for TFDS.

    Listed once a run: the run key and the preparation both use it.
    """
    if config.tfds_name or not config.data_dir:
        return None
    return sources.list_image_folder(config.data_dir, config.follow_links,
                                     labels_of(config))


def load_data(run, folder, timings, listing=None):
    """Scans and splits a folder, or opens a TFDS dataset's splits.

    Args:
      run: The `tlfast.resolve.ResolvedRun`.
      folder: Its `tlfast.run_folder.RunFolder` (split.csv goes there).
      timings: Phase timings to add to.
      listing: The folder's `list_folder`, if listed already.

    Returns:
      A `TrainingData`.
    """
    data = _load(run, folder, timings, listing)
    if run.config.multi_label:
        data = data.with_label_sets(run.config.label_delimiter)
        log.info("Multi-label: %d labels in %d label sets", len(data.label_names),
                 len(data.class_names))
    return data


def _load(run, folder, timings, listing):
    config, size = run.config, run.image_size
    if config.tfds_name:
        return load_tfds_data(config, size, timings)
    if config.prepare_tfds:
        return load_prepared_data(config, size, folder, timings, listing)
    with Phase("scan", timings=timings) as phase:
        data = prepare.prepare_folder(
            config.data_dir, validation_split=config.validation_split,
            seed=config.seed, cache_dir=os.path.expanduser(config.cache_dir),
            strict=config.strict, max_pixels=config.max_pixels,
            skip_placeholders=config.skip_placeholders,
            follow_links=config.follow_links, labels=labels_of(config),
            listing=listing,
            progress=lambda done, total: phase.update(done, total))
    prepare.log_skipped(data.skipped)
    folder.write_split({"train": data.train, "validation": data.validation},
                       data.class_names)
    return TrainingData(
        data.class_names,
        examples_lib.FileExamples(data.train, size, config.resize,
                                  config.data_service_address),
        examples_lib.FileExamples(data.validation, size, config.resize,
                                  config.data_service_address),
        data.skipped, data.presplit, data.scan_cached, run_folder.SPLIT)


def load_prepared_data(config, size, folder, timings, listing=None):
    """A folder read through the tlfast_image_folder TFDS builder."""
    cache_dir = os.path.expanduser(config.cache_dir)
    with Phase("prepare", timings=timings) as phase:
        # Imported here: TFDS takes a moment to import, and only this path
        # needs it.
        from tlfast.data import folder_builder
        from tlfast.data import records

        prepared = folder_builder.prepare_image_folder(
            config.data_dir,
            data_root=config.tfds_data_dir or os.path.join(cache_dir, "tfds"),
            validation_split=config.validation_split, seed=config.seed,
            cache_dir=cache_dir, strict=config.strict,
            max_pixels=config.max_pixels,
            skip_placeholders=config.skip_placeholders,
            follow_links=config.follow_links, lock_timeout=config.lock_timeout,
            labels=labels_of(config), listing=listing,
            progress=lambda done, total: phase.update(done, total))
    prepare.log_skipped(prepared.skipped)
    sets = {split: records.prepared_examples(
                prepared, split, size, config.resize,
                config.data_service_address)
            for split in ("train", "validation")}
    folder.write_split({k: v.entries for k, v in sets.items()},
                       prepared.class_names)
    # A reuse scans nothing; a preparation may resume an interrupted scan.
    scan_cached = 0 if prepared.reused else int(
        prepared.builder.info.metadata.get("scan_cached", 0))
    return TrainingData(
        prepared.class_names, sets["train"], sets["validation"],
        prepared.skipped, bool(prepared.builder.info.metadata.get("presplit")),
        scan_cached, run_folder.SPLIT, prepared_tfds={"data_dir": prepared.data_dir,
                                       "reused": prepared.reused,
                                       "fingerprint": prepared.fingerprint})


def load_tfds_data(config, size, timings):
    """Train and validation splits of `config.tfds_name`.

    Uses the dataset's own validation split when it has one, else the last
    `validation_split` of "train" (TFDS slicing is deterministic).
    """
    with Phase("tfds", timings=timings):
        builder = sources.tfds_builder(config.tfds_name, config.tfds_data_dir)
        if "validation" in builder.info.splits:
            splits = ("train", "validation")
        else:
            # By example count: percent slices round to whole percents (and
            # a small fraction of a small set to nothing).
            try:
                total = builder.info.splits["train"].num_examples
            except KeyError:  # No split sizes recorded (e.g. mock data).
                total = len(examples_lib.TfdsExamples(
                    config.tfds_name, "train", config.tfds_data_dir, size,
                    config.resize, download=False))
            held_out = max(1, round(total * config.validation_split))
            if total - held_out < 1:
                raise ValueError(
                    f"'{config.tfds_name}' has {total} training example(s): "
                    "too few to hold out a validation part. Received: "
                    f"validation_split={config.validation_split}")
            cut = total - held_out
            splits = (f"train[:{cut}]", f"train[{cut}:]")
        train, validation = (
            examples_lib.TfdsExamples(config.tfds_name, split,
                                      config.tfds_data_dir, size, config.resize,
                                      download=False)
            for split in splits)
    return TrainingData(train.class_names, train, validation, tfds_splits=splits)
