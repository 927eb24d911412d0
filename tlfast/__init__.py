"""tlfast: fast, dependable transfer learning for image classification.

The public API below is imported on first use (PEP 562), so that
`import tlfast.config` and the command-line `--help` of every script cost no
TensorFlow import (about 3 s). `tlfast.load_model` loads a saved model.keras
with tlfast's custom layers registered; `keras.models.load_model` needs
`import tlfast.model` first.
"""

import importlib

__version__ = "0.1.0"

# Public name -> the module that defines it.
_API = {
    "BackbonePreprocessing": "tlfast.backbones",
    "BackboneSpec": "tlfast.backbones",
    "create_backbone": "tlfast.backbones",
    "get_backbone_spec": "tlfast.backbones",
    "list_backbones": "tlfast.backbones",
    "register_backbone": "tlfast.backbones",
    "unfreeze_top_blocks": "tlfast.backbones",
    "EvaluateConfig": "tlfast.config",
    "ExportConfig": "tlfast.config",
    "HeadConfig": "tlfast.config",
    "PredictConfig": "tlfast.config",
    "TrainConfig": "tlfast.config",
    "AUGMENT_PRESETS": "tlfast.data",
    "BadImagesError": "tlfast.data",
    "FileEntry": "tlfast.data",
    "PipelineConfig": "tlfast.data",
    "Skipped": "tlfast.data",
    "image_folder_dataset": "tlfast.data",
    "list_image_folder": "tlfast.data",
    "load_tfds": "tlfast.data",
    "make_augmentation": "tlfast.data",
    "scan_files": "tlfast.data",
    "split_entries": "tlfast.data",
    "to_supervised": "tlfast.data",
    "write_split": "tlfast.data",
    "Augmentation": "tlfast.data.augment",
    "LabelsCsv": "tlfast.data.labels_csv",
    "prepare_folder": "tlfast.data.prepare",
    "run_evaluation": "tlfast.evaluate",
    "run_export": "tlfast.export",
    "FeatureCache": "tlfast.features",
    "FeatureKey": "tlfast.features",
    "extract_features": "tlfast.feature_pass",
    "build_head": "tlfast.head",
    "train_head": "tlfast.head",
    "build_classifier": "tlfast.model",
    "build_feature_model": "tlfast.model",
    "load_model": "tlfast.run_folder",
    "load_model_run": "tlfast.predict",
    "predict_images": "tlfast.predict",
    "run_prediction": "tlfast.predict",
    "resolve_precision": "tlfast.precision",
    "run_training": "tlfast.training",
}
__all__ = sorted(_API)


def __getattr__(name):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'tlfast' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # Looked up once.
    return value


def __dir__():
    return sorted(set(globals()) | set(_API))
