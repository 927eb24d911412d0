r"""tlfast-train: train an image classifier from a folder of class sub-folders.

    tlfast-train --data_dir=photos/ --output_dir=runs/photos \
        --backbone=mobilenet_v2 --weights=imagenet

The flags are `tlfast.config.TrainConfig`'s fields (names follow TF-Hub's old
`make_image_classifier` where they overlap). Frozen-backbone features are
cached under --cache_dir, so re-runs and head experiments skip the backbone
entirely. This script alone sets global state: the Keras precision policy
(from --precision) and the global seed.
"""

import os

from tlfast import cli
from tlfast import config

cli.define_flags(config.TrainConfig)


def train(train_config):
    """Sets the policy and seed, runs `tlfast.run_training`; the exit status."""
    import keras

    from tlfast import export
    from tlfast import precision
    from tlfast import training

    keras.mixed_precision.set_global_policy(
        precision.resolve_precision(train_config.precision))
    keras.utils.set_random_seed(train_config.seed)
    metrics = training.run_training(train_config)
    print(f"val_accuracy={metrics['val_accuracy']:.4f} "
          f"output_dir={os.path.abspath(train_config.output_dir)}")
    return cli.exit_status("tlfast-train",
                           export.problems(metrics.get("exports") or {}))


def run():
    """Console-script entry point."""
    cli.run_script("tlfast-train", config.TrainConfig, train)


if __name__ == "__main__":
    run()
