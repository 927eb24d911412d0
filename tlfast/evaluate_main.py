r"""tlfast-evaluate: evaluate a trained model on a labelled image folder.

    tlfast-evaluate --model=runs/photos/model.keras --data_dir=photos/ \
        --output_dir=runs/photos/eval

Writes metrics.json (accuracy, top-k accuracy, per-class precision / recall /
F1, confusion matrix, most confidently misclassified files, skipped files),
confusion_matrix.png and predictions.csv into --output_dir. When
--output_dir is a training run's folder (it has run.json), they go into its
eval_<split>/ sub-folder, so the run's own reports are kept.

On the folder the model was trained on (run.json's data_dir), --split=auto
means the run's validation images: "all" would mix in the training images.
"""

import os
import sys

from absl import app
from absl import flags

from tlfast import progress

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "model.keras written by tlfast-train (or "
                    "its run folder); labels.txt and run.json are read from "
                    "beside it.")
flags.DEFINE_string("data_dir", None, "Folder of class sub-folders, or with "
                    "train/ and val/ (validation/, test/) sub-folders of them.")
flags.DEFINE_string("output_dir", None, "Where the report and plots go.")
flags.DEFINE_enum("split", "auto", ["auto", "validation", "train", "test", "all"],
                  "Which images: auto = the run's validation images on the "
                  "folder it trained on, the validation folder of another "
                  "pre-split folder, else all images. Without a validation "
                  "folder, train/validation re-create the run's own split.")
flags.DEFINE_integer("batch_size", 32, "Images per forward pass.")
flags.DEFINE_integer("top_k", 5, "k of the top-k accuracy (capped at the "
                     "number of classes).")
flags.DEFINE_integer("worst", 20, "How many confidently misclassified files "
                     "to list.")
flags.DEFINE_string("cache_dir", os.path.join("~", ".cache", "tlfast"),
                    "Scan cache (shared with tlfast-train).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    progress.configure_script_logging()
    from tlfast import evaluate
    from tlfast import predict
    from tlfast.data.scan import DEFAULT_MAX_PIXELS

    try:
        if FLAGS.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1. Received: "
                             f"batch_size={FLAGS.batch_size}")
        run = predict.load_model_run(FLAGS.model)
        config = run.run.get("config", {})
        split = FLAGS.split
        trained_on = config.get("data_dir")
        if (split == "auto" and trained_on and os.path.isdir(FLAGS.data_dir)
                and os.path.samefile(FLAGS.data_dir, trained_on)):
            split = "validation"
        entries, skipped, split = evaluate.load_eval_entries(
            FLAGS.data_dir, run.class_names, split=split,
            validation_split=config.get("validation_split", 0.2),
            seed=config.get("seed", 0),
            cache_dir=os.path.expanduser(FLAGS.cache_dir),
            # Judge the same images the run trained and validated on.
            skip_placeholders=config.get("skip_placeholders", True),
            max_pixels=config.get("max_pixels", DEFAULT_MAX_PIXELS))
        report = evaluate.evaluate_model(
            run.model, entries, run.class_names,
            evaluate.report_dir_for(FLAGS.output_dir, split),
            batch_size=FLAGS.batch_size, top_k=FLAGS.top_k, worst=FLAGS.worst,
            resize=run.resize, skipped=skipped, metrics_file="metrics.json",
            extra={"split": split, "data_dir": os.path.abspath(FLAGS.data_dir),
                   "model": os.path.abspath(FLAGS.model)})
    except (ValueError, OSError, RuntimeError) as e:
        print(f"tlfast-evaluate: error: {e}", file=sys.stderr)
        return 2
    for item in report["skipped"]:
        print(f"skipped: {item['path']}: {item['reason']}", file=sys.stderr)
    print(f"accuracy={report['accuracy']:.4f} "
          f"top_{report['top_k']}_accuracy={report['top_k_accuracy']:.4f} "
          f"images={report['num_examples']} skipped={len(report['skipped'])} "
          f"report={report['files']['metrics']}")
    return 0


def run():
    """Console-script entry point."""
    for name in ("model", "data_dir", "output_dir"):
        flags.mark_flag_as_required(name)
    app.run(main)


if __name__ == "__main__":
    run()
