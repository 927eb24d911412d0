"""tlfast: fast, dependable transfer learning for image classification."""

__version__ = "0.1.0"

from tlfast.backbones import BackbonePreprocessing
from tlfast.backbones import BackboneSpec
from tlfast.backbones import create_backbone
from tlfast.backbones import get_backbone_spec
from tlfast.backbones import list_backbones
from tlfast.backbones import register_backbone
from tlfast.backbones import unfreeze_top_blocks
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
from tlfast.data.augment import Augmentation
from tlfast.features import FeatureCache
from tlfast.features import FeatureKey
from tlfast.features import extract_features
from tlfast.head import HeadConfig
from tlfast.head import build_head
from tlfast.head import train_head
from tlfast.model import build_classifier
from tlfast.model import build_feature_model
from tlfast.prepare import prepare_folder
from tlfast.training import TrainConfig
from tlfast.training import run_training
