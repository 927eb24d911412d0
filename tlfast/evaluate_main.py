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
The flags are `tlfast.config.EvaluateConfig`'s fields; the work is
`tlfast.run_evaluation`.
"""

import sys

from tlfast import cli
from tlfast import config

cli.define_flags(config.EvaluateConfig)


def evaluate(eval_config):
    from tlfast import evaluate as evaluate_lib

    report = evaluate_lib.run_evaluation(eval_config)
    for item in report["skipped"]:
        print(f"skipped: {item['path']}: {item['reason']}", file=sys.stderr)
    print(f"accuracy={report['accuracy']:.4f} "
          f"top_{report['top_k']}_accuracy={report['top_k_accuracy']:.4f} "
          f"images={report['num_examples']} skipped={len(report['skipped'])} "
          f"report={report['files']['metrics']}")
    return 0


def run():
    """Console-script entry point."""
    cli.run_script("tlfast-evaluate", config.EvaluateConfig, evaluate)


if __name__ == "__main__":
    run()
