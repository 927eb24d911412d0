r"""tlfast-export: export a trained model to serving formats, parity-checked.

    tlfast-export --model=runs/photos/model.keras --output_dir=runs/photos/export \
        --formats=keras,saved_model,tflite,tflite_int8

Calibration images for tflite_int8 (--num_representative training images)
and the parity-check images (the validation split) are read from the run's
data folder (run.json) with its split.csv; pass --data_dir when the data has
moved. Without data, float formats are exported unchecked and tflite_int8
is refused. See `tlfast.export` for the formats and the checks.
"""

import json
import logging
import os
import sys

from absl import app
from absl import flags

from tlfast import progress

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "model.keras written by tlfast-train (or "
                    "its run folder).")
flags.DEFINE_string("formats", "keras,saved_model,tflite,tflite_int8",
                    "Comma-separated: keras, saved_model, tflite, tflite_int8.")
flags.DEFINE_string("output_dir", None, "Where the exports go.")
flags.DEFINE_string("data_dir", None, "The run's data folder (default: from "
                    "run.json).")
flags.DEFINE_integer("num_representative", 100, "Training images that "
                     "calibrate tflite_int8.")
flags.DEFINE_integer("parity_images", 1000, "At most this many validation "
                     "images for the parity checks (evenly spaced); 0 skips "
                     "the checks.")
flags.DEFINE_integer("batch_size", 32, "Images per forward pass.")


def run_entries(run, data_dir):
    """{split: [FileEntry]} of a run's split.csv, for files still present.

    Returns {} when the run has no split.csv or no data folder.
    """
    from tlfast.data.sources import FileEntry
    from tlfast.data.split import read_split

    split_path = os.path.join(run.run_dir, "split.csv")
    data_dir = data_dir or run.run.get("config", {}).get("data_dir")
    if not data_dir or not os.path.isfile(split_path):
        return {}
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(
            f"The run's data folder '{data_dir}' does not exist. Pass "
            "--data_dir=<where the training images are now>.")
    out = {}
    for split, items in read_split(split_path).items():
        entries = [FileEntry(os.path.join(data_dir, *rel.split("/")), rel, label)
                   for rel, label in items]
        out[split] = [e for e in entries if os.path.isfile(e.path)]
    return out


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    progress.configure_script_logging()
    from tlfast import export
    from tlfast import predict

    try:
        for name, low in (("num_representative", 1), ("parity_images", 0),
                          ("batch_size", 1)):
            if getattr(FLAGS, name) < low:
                raise ValueError(f"--{name} must be >= {low}. Received: "
                                 f"{name}={getattr(FLAGS, name)}")
        formats = export.parse_formats(FLAGS.formats)
        run = predict.load_model_run(FLAGS.model)
        entries = run_entries(run, FLAGS.data_dir)
        decode = lambda split, limit: export.decode_entries(
            entries[split], run.image_size, run.resize, limit=limit) if (
                entries.get(split)) else None
        representative = None
        if "tflite_int8" in formats:
            representative = decode("train", FLAGS.num_representative)
            if representative is None:
                raise ValueError(
                    "tflite_int8 needs training images to calibrate, and none "
                    f"were found for the run in '{run.run_dir}' (split.csv + "
                    "run.json's data_dir). Pass --data_dir=<the training "
                    "folder>, or leave tflite_int8 out of --formats.")
        validation = None
        if FLAGS.parity_images:
            validation = decode("validation", FLAGS.parity_images)
        if validation is None and FLAGS.parity_images:
            logging.warning("No validation images found: exports are not "
                            "parity-checked. Pass --data_dir to check them.")
        report = export.export_model(
            run.model, formats, FLAGS.output_dir, class_names=run.class_names,
            representative=None if representative is None else representative[0],
            validation=validation, batch_size=FLAGS.batch_size,
            max_representative=FLAGS.num_representative)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"tlfast-export: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=1, sort_keys=True))
    lines = export.problems(report)
    for line in lines:
        print(f"tlfast-export: error: {line}", file=sys.stderr)
    return 1 if lines else 0


def run():
    """Console-script entry point."""
    for name in ("model", "output_dir"):
        flags.mark_flag_as_required(name)
    app.run(main)


if __name__ == "__main__":
    run()
