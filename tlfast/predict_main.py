r"""tlfast-predict: top-k predictions of a trained model for image files.

    tlfast-predict --model=runs/photos/model.keras --images=new_photos/ \
        --output=preds.csv --top_k=3

--images is a folder (searched recursively), a glob pattern (quote it;
`**` recurses) or one file. The CSV has one row per usable image: path,
label_1, prob_1, ..., label_k, prob_k. Files that are not usable images
(unreadable, not an image, corrupt, placeholder graphics) get no row: each
is reported on stderr as "skipped: <path>: <reason>", and listed with its
reason in <output>.skipped.csv when there are any.
"""

import csv
import os
import sys

from absl import app
from absl import flags

from tlfast import progress

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "model.keras written by tlfast-train (or "
                    "its run folder); labels.txt and run.json are read from "
                    "beside it.")
flags.DEFINE_string("images", None, "Folder, glob pattern or file.")
flags.DEFINE_string("output", None, "CSV file to write.")
flags.DEFINE_integer("top_k", 3, "Labels per image (capped at the number of "
                     "classes).")
flags.DEFINE_integer("batch_size", 32, "Images per forward pass.")
flags.DEFINE_enum("resize", None, ["resize", "crop", "pad"], "How images are "
                  "made square (default: the run's, from run.json).")
flags.DEFINE_bool("skip_placeholders", None, "Skip blank / 'image not "
                  "found' graphics (default: as the run did, from run.json).")


def _write_skipped(path, skipped):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "reason"])
        writer.writerows((s.path, s.reason) for s in skipped)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    progress.configure_script_logging()
    from tlfast import predict

    skipped_path = FLAGS.output + ".skipped.csv"
    try:
        paths = predict.list_image_files(FLAGS.images)
        run = predict.load_model_run(FLAGS.model)
        rows, skipped = predict.predict_images(
            run.model, paths, run.class_names, top_k=FLAGS.top_k,
            batch_size=FLAGS.batch_size, resize=FLAGS.resize or run.resize,
            skip_placeholders=(
                FLAGS.skip_placeholders if FLAGS.skip_placeholders is not None
                else run.run.get("config", {}).get("skip_placeholders", True)))
        for item in skipped:
            print(f"skipped: {item.path}: {item.reason}", file=sys.stderr)
        if not rows:
            raise ValueError(
                f"None of the {len(paths)} file(s) from '{FLAGS.images}' is a "
                "usable image (reasons above). Received: "
                f"images={FLAGS.images!r}")
        k = predict.check_top_k(FLAGS.top_k, len(run.class_names))
        predict.write_predictions_csv(FLAGS.output, rows, k)
        if skipped:
            _write_skipped(skipped_path, skipped)
        elif os.path.exists(skipped_path):
            os.remove(skipped_path)  # From an earlier run; now stale.
    except (ValueError, OSError, RuntimeError) as e:
        print(f"tlfast-predict: error: {e}", file=sys.stderr)
        return 2
    print(f"predicted={len(rows)} skipped={len(skipped)} output={FLAGS.output}"
          + (f" skipped_list={skipped_path}" if skipped else ""))
    return 0


def run():
    """Console-script entry point."""
    for name in ("model", "images", "output"):
        flags.mark_flag_as_required(name)
    app.run(main)


if __name__ == "__main__":
    run()
