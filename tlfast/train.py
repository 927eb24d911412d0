r"""tlfast-train: train an image classifier from a folder of class sub-folders.

    tlfast-train --data_dir=photos/ --output_dir=runs/photos \
        --backbone=mobilenet_v2 --weights=imagenet

Flag names follow TF-Hub's old `make_image_classifier` where they overlap.
Frozen-backbone features are cached under --cache_dir, so re-runs and head
experiments skip the backbone entirely.
"""

import os
import sys

from absl import app
from absl import flags

from tlfast import progress
from tlfast.training import TrainConfig

_D = TrainConfig()
FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", _D.data_dir, "Folder of class sub-folders of "
                    "images, or with train/ and validation/ (or val/) "
                    "sub-folders of them.")
flags.DEFINE_string("tfds_name", _D.tfds_name, "TFDS dataset name, e.g. "
                    "tf_flowers (used when --data_dir is not given; default "
                    "tf_flowers).")
flags.DEFINE_string("tfds_data_dir", _D.tfds_data_dir, "TFDS data folder.")
flags.DEFINE_float("validation_split", _D.validation_split, "Validation "
                   "fraction, when the data has no validation split.")
flags.DEFINE_string("backbone", _D.backbone, "Backbone registry name; see "
                    "tlfast.list_backbones().")
flags.DEFINE_string("weights", _D.weights, "imagenet | none | path to a "
                    ".weights.h5 (no top) or full-model .h5 file.")
flags.DEFINE_integer("image_size", _D.image_size, "Square input size "
                     "(default: the backbone's).")
flags.DEFINE_enum("resize", _D.resize, ["resize", "crop", "pad"],
                  "How images become square.")
flags.DEFINE_integer("batch_size", _D.batch_size, "Batch size.")
flags.DEFINE_integer("head_batch_size", _D.head_batch_size, "Batch size for "
                     "head training on cached features.")
flags.DEFINE_integer("epochs", _D.epochs, "Maximum head-training epochs "
                     "(early stopping on validation loss).")
flags.DEFINE_float("learning_rate", _D.learning_rate, "Head learning rate.")
flags.DEFINE_integer("hidden_units", _D.hidden_units, "Hidden layer width "
                     "in the head (0: linear head).")
flags.DEFINE_float("dropout", _D.dropout, "Head dropout rate.")
flags.DEFINE_integer("patience", _D.patience, "Early-stopping patience "
                     "(0: off).")
flags.DEFINE_float("label_smoothing", _D.label_smoothing, "Label smoothing.")
flags.DEFINE_integer("fine_tune_epochs", _D.fine_tune_epochs, "Epochs of "
                     "end-to-end fine-tuning after the head (0: none).")
flags.DEFINE_integer("fine_tune_blocks", _D.fine_tune_blocks, "Top backbone "
                     "blocks unfrozen for fine-tuning.")
flags.DEFINE_float("fine_tune_learning_rate", _D.fine_tune_learning_rate,
                   "Fine-tuning learning rate.")
flags.DEFINE_string("augment", _D.augment, "Augmentation preset (none, flip, "
                    "light, standard, seed_recipe, strong) or ops list, e.g. "
                    "'flip,rotation:0.1,zoom:0.2'.")
flags.DEFINE_integer("augment_views", _D.augment_views, "Augmented views per "
                     "training image to cache as extra features.")
flags.DEFINE_enum("precision", "auto", ["auto", "float32", "mixed_float16",
                                        "mixed_bfloat16"],
                  "Compute precision (auto: mixed on capable GPUs, float32 "
                  "on CPU).")
flags.DEFINE_string("cache_dir", _D.cache_dir, "Scan, pixel and feature "
                    "caches.")
flags.DEFINE_integer("ram_budget_mb", _D.ram_budget_mb, "RAM for the decoded "
                     "pixel cache; beyond it the cache goes to disk.")
flags.DEFINE_string("output_dir", None, "Where model.keras, labels.txt, "
                    "metrics.json, ... are written.")
flags.DEFINE_integer("max_pixels", _D.max_pixels, "Images with more pixels "
                     "are skipped (decompression-bomb guard).")
flags.DEFINE_bool("skip_placeholders", _D.skip_placeholders, "Skip images "
                  "that look like 'image not found' graphics (a few colours, "
                  "one covering most of the image); --noskip_placeholders "
                  "keeps them, e.g. for line drawings or icons.")
flags.DEFINE_integer("feature_shard_size", _D.feature_shard_size, "Examples "
                     "per feature-cache shard (the unit of resumption).")
flags.DEFINE_string("export", _D.export, "Comma list of export formats: "
                    "keras, saved_model, tflite, tflite_int8 (each checked for "
                    "parity with model.keras on the validation images).")
flags.DEFINE_string("data_service_address", _D.data_service_address,
                    "grpc://host:port of a tf.data service dispatcher (see "
                    "tlfast-data-service): decoding runs on its workers.")
flags.DEFINE_bool("prepare_tfds", _D.prepare_tfds, "Read --data_dir through "
                  "tlfast's TFDS image-folder builder: validated and prepared "
                  "once (under --tfds_data_dir or <cache_dir>/tfds), reused "
                  "while the folder is unchanged. --noprepare_tfds reads the "
                  "loose files.")
flags.DEFINE_enum("distribution", _D.distribution, ["none", "mirrored",
                                                     "multi_worker", "tpu"],
                  "tf.distribute strategy (TensorFlow backend): mirrored "
                  "replicates over local GPUs; multi_worker runs the same "
                  "command on every machine of TF_CONFIG and shards feature "
                  "extraction over them (shared --cache_dir); tpu uses the "
                  "TPU of TPU_NAME or this TPU VM.")
flags.DEFINE_integer("seed", _D.seed, "Seed for split, initialisation, "
                     "shuffling and augmentation.")
flags.DEFINE_bool("reuse_outputs", _D.reuse_outputs, "When --output_dir "
                  "already holds the outputs of an identical run (same data, "
                  "settings, weights and versions; files unchanged; features "
                  "still cached), keep them instead of training again; "
                  "--noreuse_outputs always trains.")
flags.DEFINE_bool("strict", _D.strict, "Fail on any bad image instead of "
                  "skipping it.")


def config_from_flags():
    names = [f.name for f in TrainConfig.__dataclass_fields__.values()]
    return TrainConfig(**{n: getattr(FLAGS, n) for n in names if n in FLAGS})


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    progress.configure_script_logging()
    import keras

    from tlfast import precision
    from tlfast import training

    config = config_from_flags()
    if not config.data_dir and not config.tfds_name:
        config = training.dataclasses.replace(config, tfds_name="tf_flowers")
    try:
        training.check_config(config)
        policy = precision.resolve_precision(FLAGS.precision)
        keras.mixed_precision.set_global_policy(policy)
        keras.utils.set_random_seed(config.seed)
        metrics = training.run_training(config)
    except (ValueError, OSError, RuntimeError) as e:
        # One clear line (the message already says what and how to fix).
        print(f"tlfast-train: error: {e}", file=sys.stderr)
        return 2
    print(f"val_accuracy={metrics['val_accuracy']:.4f} "
          f"output_dir={os.path.abspath(config.output_dir)}")
    from tlfast import export

    lines = export.problems(metrics.get("exports") or {})
    for line in lines:
        print(f"tlfast-train: error: {line}", file=sys.stderr)
    return 1 if lines else 0


def run():
    """Console-script entry point."""
    flags.mark_flag_as_required("output_dir")
    app.run(main)


if __name__ == "__main__":
    run()
