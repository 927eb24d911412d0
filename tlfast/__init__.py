"""tlfast: fast, dependable transfer learning for image classification."""

__version__ = "0.1.0"

from tlfast.data import AUGMENT_PRESETS
from tlfast.data import BadImagesError
from tlfast.data import FileEntry
from tlfast.data import PipelineConfig
from tlfast.data import Skipped
from tlfast.data import image_folder_dataset
from tlfast.data import list_image_folder
from tlfast.data import load_tfds
from tlfast.data import make_augmentation
from tlfast.data import scan_files
from tlfast.data import split_entries
from tlfast.data import to_supervised
from tlfast.data import write_split
