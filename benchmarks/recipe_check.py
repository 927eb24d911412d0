r"""The training recipe's accuracy on the shared real photos, one JSON row per run.

    python benchmarks/recipe_check.py --assets=../shared/assets \
        --out=benchmarks/results/recipe_check.jsonl [--runs=defaults,epochs3,...]

Runs (MobileNet-0.25 with the shared ImageNet weights, default flags unless
named; features cached under --work_dir, so later runs reuse them):

  defaults      hymenoptera and flowers224 with default flags
  epochs3       hymenoptera with --epochs=3
  fine_tune     both folders with --fine_tune_epochs (and tlfast's default
                blocks, rate and decay unless the flags name others)
  imbalanced    flowers224 with one class cut to 10% of its training images
                (links), without and with --class_weight=balanced: that
                class's recall and the overall accuracy
  labels_csv    flowers224 labelled by a CSV (path,label,split) of its
                folders: the same val_accuracy as "defaults" on flowers224
  multi_label   pairs of flowers224 photos side by side (of two classes;
                --resize=pad), labelled with both: per-label F1

Each row has val_accuracy, the stages (head / fine_tune accuracy and best
epoch), per-class recall, augment_views and timings_s.
"""

import os
import sys
import time

from absl import app
from absl import flags

import rows as result_rows

ROOT = result_rows.ROOT
sys.path.insert(0, ROOT)

FLAGS = flags.FLAGS
result_rows.define_asset_flags("recipe_check.jsonl", "/tmp/tlfast-recipe")
flags.DEFINE_list("runs", ["defaults", "epochs3", "fine_tune", "imbalanced"],
                  "Which runs.")
flags.DEFINE_integer("fine_tune_epochs", 10, "Fine-tuning epochs.")
# None: tlfast's default.
flags.DEFINE_integer("fine_tune_blocks", None, "Fine-tuning blocks.")
flags.DEFINE_float("fine_tune_learning_rate", None, "Fine-tuning rate.")
flags.DEFINE_float("fine_tune_lr_decay", None, "Rate factor a block down.")
flags.DEFINE_string("cut_class", "roses", "The class cut to 10% (imbalanced).")


def _imbalanced_copy(source, target, cut_class, keep=0.1):
    """Links `source` into `target`, `cut_class`'s training photos cut."""
    if os.path.isdir(target):
        return target
    for split in ("train", "val"):
        for name in sorted(os.listdir(os.path.join(source, split))):
            folder = os.path.join(source, split, name)
            photos = sorted(os.listdir(folder))
            if split == "train" and name == cut_class:
                photos = photos[:max(1, int(len(photos) * keep))]
            os.makedirs(os.path.join(target, split, name))
            for photo in photos:
                # Hard links: inside the folder, unlike symbolic links out.
                os.link(os.path.join(folder, photo),
                        os.path.join(target, split, name, photo))
    return target


def _labels_csv(source, path):
    """A path,label,split CSV of a train/ + val/ folder of class folders."""
    with open(path, "w", encoding="utf-8") as f:
        f.write("path,label,split\n")
        for split in ("train", "val"):
            for name in sorted(os.listdir(os.path.join(source, split))):
                for photo in sorted(os.listdir(os.path.join(source, split, name))):
                    f.write(f"{split}/{name}/{photo},{name},{split}\n")
    return path


def _pairs(source, target, seed=0):
    """Photos of two classes side by side (224 x 448), labelled with both.

    Every photo of `source`'s train/ and val/ is used once, paired with one
    of another class from the same split. Returns (folder, labels CSV).
    """
    import random

    from PIL import Image

    csv_path = os.path.join(target, "labels.csv")
    if os.path.exists(csv_path):
        return target, csv_path
    rng, rows = random.Random(seed), []
    for split in ("train", "val"):
        photos = [(name, os.path.join(source, split, name, p))
                  for name in sorted(os.listdir(os.path.join(source, split)))
                  for p in sorted(os.listdir(os.path.join(source, split, name)))]
        rng.shuffle(photos)
        left, right = [], []
        for photo in photos:  # Greedy: the right one of another class.
            (right if left and len(right) < len(left)
             and left[len(right)][0] != photo[0] else left).append(photo)
        os.makedirs(os.path.join(target, split), exist_ok=True)
        for i, (a, b) in enumerate(zip(left, right)):
            pair = Image.new("RGB", (448, 224))
            for x, (_, path) in ((0, a), (224, b)):
                with Image.open(path) as image:
                    pair.paste(image.convert("RGB").resize((224, 224)), (x, 0))
            relpath = f"{split}/{i:05d}.jpg"
            pair.save(os.path.join(target, relpath), quality=90)
            rows.append(f"{relpath},{' '.join(sorted({a[0], b[0]}))},{split}")
    with open(csv_path, "w", encoding="utf-8") as f:
        f.write("path,label,split\n" + "\n".join(rows) + "\n")
    return target, csv_path


def _train(name, data_dir, **overrides):
    import keras

    from tlfast import training
    from tlfast.config import TrainConfig

    weights = os.path.join(FLAGS.assets, "weights",
                           "mobilenet_v1_0.25_224_no_top.weights.h5")
    config = TrainConfig(
        data_dir=data_dir, output_dir=os.path.join(FLAGS.work_dir, "out", name),
        cache_dir=os.path.join(FLAGS.work_dir, "cache"),
        backbone="mobilenet_025", weights=weights, reuse_outputs=False,
        **overrides)
    keras.utils.set_random_seed(config.seed)
    start = time.perf_counter()
    metrics = training.run_training(config)
    evaluation = metrics["evaluation"]
    return {"run": name, "data": os.path.basename(data_dir.rstrip("/")),
            **overrides, "val_accuracy": round(metrics["val_accuracy"], 4),
            "stages": metrics["stages"], "augment_views": metrics["augment_views"],
            **({"multi_label": {k: evaluation[k] for k in (
                "threshold", "micro_f1", "macro_f1", "exact_match",
                "per_label_f1")}} if metrics.get("multi_label") else
               {"per_class_recall": evaluation["per_class_recall"]}),
            "seconds": round(time.perf_counter() - start, 1),
            "timings_s": metrics["timings_s"]}


def _plan():
    datasets = os.path.join(FLAGS.assets, "datasets")
    hym, flowers = (os.path.join(datasets, n) for n in ("hymenoptera", "flowers224"))
    tune = {name: getattr(FLAGS, name) for name in (
        "fine_tune_epochs", "fine_tune_blocks", "fine_tune_learning_rate",
        "fine_tune_lr_decay") if getattr(FLAGS, name) is not None}
    plan = {
        "defaults": [("hymenoptera_defaults", hym, {}),
                     ("flowers224_defaults", flowers, {})],
        "epochs3": [("hymenoptera_epochs3", hym, {"epochs": 3})],
        "fine_tune": [("hymenoptera_fine_tune", hym, tune),
                      ("flowers224_fine_tune", flowers, tune)],
    }
    if "imbalanced" in FLAGS.runs:
        cut = _imbalanced_copy(flowers, os.path.join(FLAGS.work_dir,
                                                     "flowers224_imbalanced"),
                               FLAGS.cut_class)
        plan["imbalanced"] = [("imbalanced_none", cut, {}),
                              ("imbalanced_balanced", cut,
                               {"class_weight": "balanced"})]
    if "labels_csv" in FLAGS.runs:
        csv_path = _labels_csv(flowers, os.path.join(FLAGS.work_dir,
                                                     "flowers224_labels.csv"))
        plan["labels_csv"] = [("flowers224_labels_csv", flowers,
                               {"labels_csv": csv_path})]
    if "multi_label" in FLAGS.runs:
        pairs, csv_path = _pairs(flowers, os.path.join(FLAGS.work_dir,
                                                       "flowers224_pairs"))
        plan["multi_label"] = [("flowers224_pairs_multi_label", pairs, {
            "labels_csv": csv_path, "multi_label": True, "resize": "pad"})]
    return [job for run in FLAGS.runs for job in plan[run]]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    os.makedirs(FLAGS.work_dir, exist_ok=True)
    for name, data_dir, overrides in _plan():
        result_rows.append(FLAGS.out, _train(name, data_dir, **overrides))
    return 0


if __name__ == "__main__":
    app.run(main)
