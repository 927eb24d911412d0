"""The `tlfast_image_folder` TFDS dataset (see `tlfast.data.folder_builder`)."""

from tlfast.data.image_folder.image_folder_dataset_builder import ImageFolderConfig
from tlfast.data.image_folder.image_folder_dataset_builder import TlfastImageFolder
