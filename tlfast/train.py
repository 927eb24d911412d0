r"""tlfast-train: train an image classifier from a folder of class sub-folders.

    tlfast-train --data_dir=photos/ --output_dir=runs/photos \
        --backbone=mobilenet_v2 --weights=imagenet
    tlfast-train --list_backbones

The flags are `tlfast.config.TrainConfig`'s fields (names follow TF-Hub's old
`make_image_classifier` where they overlap). Frozen-backbone features are
cached under --cache_dir, so re-runs and head experiments skip the backbone
entirely. This script alone sets global state: the Keras precision policy
(from --precision), the global seed and the logging (a line per phase on
the console; every line, other libraries' too, in <output_dir>/train.log;
--verbosity=1 shows them all).
"""

import json
import os

from absl import flags

from tlfast import cli
from tlfast import config
from tlfast import run_folder

cli.define_flags(config.TrainConfig)
flags.DEFINE_bool("list_backbones", False, "Print the registered backbones "
                  "(name, input size, feature size, parameters) and exit.")


def list_backbones():
    from tlfast import backbones

    print(f"{'backbone':<20} {'input':>5} {'features':>8} {'parameters':>11}")
    for row in backbones.describe_backbones():
        print(f"{row['name']:<20} {row['input_size']:>5} "
              f"{row['feature_dim']:>8} {row['parameters']:>11,}")
    return 0


def _log_file(output_dir):
    """<output_dir>/train.log, or train.worker<i>.log for multi_worker's
    other workers (they run the same command on shared storage)."""
    task = json.loads(os.environ.get("TF_CONFIG") or "{}").get("task", {})
    name = run_folder.LOG
    if task.get("type", "worker") == "worker" and task.get("index", 0) > 0:
        name = f"train.worker{task['index']}.log"
    return os.path.join(output_dir, name)


def train(train_config):
    """Sets the policy, seed and logs, runs `tlfast.run_training`; the exit status."""
    os.makedirs(train_config.output_dir, exist_ok=True)
    cli.log_to_file(_log_file(train_config.output_dir))
    import keras
    import tensorflow_datasets as tfds

    from tlfast import export
    from tlfast import precision
    from tlfast import training

    if flags.FLAGS.verbosity < 1:
        tfds.disable_progress_bar()  # Its bars for preparing a folder.
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
    cli.run_script("tlfast-train", config.TrainConfig, train,
                   actions={"list_backbones": list_backbones})


if __name__ == "__main__":
    run()
