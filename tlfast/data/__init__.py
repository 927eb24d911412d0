"""Data layer: sources, validation scan, split, tf.data pipeline, augmentation."""

from tlfast.data.augment import PRESETS as AUGMENT_PRESETS
from tlfast.data.augment import make_augmentation
from tlfast.data.augment import parse_augmentation
from tlfast.data.pipeline import PipelineConfig
from tlfast.data.pipeline import decode_image
from tlfast.data.pipeline import files_dataset
from tlfast.data.pipeline import finish
from tlfast.data.pipeline import image_folder_dataset
from tlfast.data.pipeline import resize_image
from tlfast.data.pipeline import to_supervised
from tlfast.data.scan import BadImagesError
from tlfast.data.scan import ScanResult
from tlfast.data.scan import check_image
from tlfast.data.scan import scan_files
from tlfast.data.sources import FileEntry
from tlfast.data.sources import ImageFolder
from tlfast.data.sources import Skipped
from tlfast.data.sources import list_image_folder
from tlfast.data.sources import load_tfds
from tlfast.data.split import read_split
from tlfast.data.split import split_entries
from tlfast.data.split import write_split
