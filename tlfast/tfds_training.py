"""Training from a named TFDS dataset (`--tfds_name`)."""

from tlfast.data import sources


def run_tfds_training(config):
    """Loads the TFDS dataset, failing at once with the offline options.

    Training on a TFDS split itself is not wired up yet (see the issue
    tracker: the TFDS builder work routes named datasets through the same
    downstream pipeline); until then a clear error says so.
    """
    source = sources.load_tfds(config.tfds_name, split="train",
                               data_dir=config.tfds_data_dir)
    raise RuntimeError(
        f"TFDS dataset '{config.tfds_name}' loaded ({source.num_examples} "
        "training examples), but training from TFDS is not supported in this "
        "version. Export it to a folder of class sub-folders and pass "
        "--data_dir instead.")
