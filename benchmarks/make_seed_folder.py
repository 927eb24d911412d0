r"""Builds the seed-comparison folder: 1,000 training + 200 validation photos.

    python benchmarks/make_seed_folder.py --output_dir=/tmp/seed1200

Links (symlinks, nothing is copied) real photos from
`../shared/assets/datasets/flowers224` into

    <output_dir>/train/<class>/  --per_class_train photos per class
    <output_dir>/val/<class>/    --per_class_val photos per class

Defaults: dandelion and tulips, 500 + 100 each. They are the two classes of
the shared assets with at least 500 training and 100 validation photos of
their own (daisy has 418 + 110; ants and bees together about 400), so no
photo is used twice and no validation photo comes from a training folder.
Photos are taken in sorted file-name order, so the folder is the same on
every machine. An existing --output_dir is replaced.
"""

import os
import shutil
import sys

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SOURCE = os.path.join(os.path.dirname(ROOT), "shared", "assets",
                              "datasets", "flowers224")
EXTENSIONS = (".jpg", ".jpeg", ".png")

FLAGS = flags.FLAGS
flags.DEFINE_string("source", DEFAULT_SOURCE, "Dataset with train/<class>/ "
                    "and val/<class>/ folders.")
flags.DEFINE_string("output_dir", "/tmp/seed1200", "Folder to create.")
flags.DEFINE_list("classes", ["dandelion", "tulips"], "Classes to link.")
flags.DEFINE_integer("per_class_train", 500, "Training photos per class.")
flags.DEFINE_integer("per_class_val", 100, "Validation photos per class.")


def photos(folder):
    """Image files of `folder`, sorted by name."""
    return sorted(name for name in os.listdir(folder)
                  if name.lower().endswith(EXTENSIONS))


def make_seed_folder(source, output_dir, classes, per_class_train, per_class_val):
    """Links the photos; returns {(split, class): count}.

    Raises:
      ValueError: A class has too few photos in a split.
    """
    counts = {}
    plan = []
    for split, wanted in (("train", per_class_train), ("val", per_class_val)):
        for name in classes:
            folder = os.path.join(source, split, name)
            found = photos(folder) if os.path.isdir(folder) else []
            if len(found) < wanted:
                raise ValueError(
                    f"'{folder}' has {len(found)} photos; {wanted} are needed. "
                    "Pick other --classes or lower --per_class_train / "
                    f"--per_class_val. Received: classes={classes}")
            plan.append((split, name, folder, found[:wanted]))
    if os.path.exists(output_dir):
        shutil.rmtree(output_dir)
    for split, name, folder, chosen in plan:
        target = os.path.join(output_dir, split, name)
        os.makedirs(target)
        for photo in chosen:
            os.symlink(os.path.abspath(os.path.join(folder, photo)),
                       os.path.join(target, photo))
        counts[(split, name)] = len(chosen)
    return counts


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        counts = make_seed_folder(FLAGS.source, FLAGS.output_dir, FLAGS.classes,
                                  FLAGS.per_class_train, FLAGS.per_class_val)
    except ValueError as e:
        print(f"make_seed_folder: error: {e}", file=sys.stderr)
        return 2
    for (split, name), n in counts.items():
        print(f"{split}/{name}: {n}")
    print(f"{sum(counts.values())} photos linked under {FLAGS.output_dir}")
    return 0


if __name__ == "__main__":
    app.run(main)
