"""TFDS's own builder checks, run on `dummy_data/`.

`dummy_data/` is a pre-split folder: train/ (3 cats, 3 dogs, PNGs among
them, plus a text file and a broken JPEG that must be skipped), val/ and
test/ (1 + 1 each). Run with pytest (tests/test_folder_builder.py imports it).
"""

import tensorflow_datasets as tfds

from tlfast.data import folder_builder
from tlfast.data.image_folder import image_folder_dataset_builder

DUMMY_DATA = (image_folder_dataset_builder.TlfastImageFolder.code_path.parent
              / "dummy_data")


class TlfastImageFolderTest(tfds.testing.DatasetBuilderTestCase):
    """Generates, reloads and reads the dummy folder through TFDS."""

    DATASET_CLASS = image_folder_dataset_builder.TlfastImageFolder
    BUILDER_CONFIG_NAMES_TO_TEST = [folder_builder.folder_config(DUMMY_DATA)]
    SPLITS = {"train": 6, "validation": 2, "test": 2}


if __name__ == "__main__":
    tfds.testing.test_main()
