"""What benchmarks/run.py's modes share: settings, the per-cell job, timing helpers."""

import dataclasses
import gc
import time

import keras
import numpy as np

from tlfast import backbones
from tlfast.config import TrainConfig

import inputs


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the modes need from the flags (the modes never read FLAGS)."""

    data_dir: str = None
    weights: str = "none"
    batch_size: int = 32
    image_size: int = None
    max_images: int = None
    epochs: int = 10
    head_examples: int = 20000
    head_epochs: int = 10
    head_batch_size: int = 256
    warmup_steps: int = 2
    repeats: int = 3
    model_repeats: int = 1
    jit_compile: str = "auto"
    cache_dir: str = None
    num_classes: int = 10  # Synthetic labels for head and finetune.
    resize: str = TrainConfig.resize


class Job:
    """One (backbone, precision) cell: lazily built models and data.

    Args:
      settings: `Settings`.
      workdir: Scratch folder for this run.
      backbone: Registry name, or None for the input modes.
      precision: Keras dtype policy name, or None for the input modes.
      rows: Rows made so far (the recipes look up the seed's time).
    """

    def __init__(self, settings, workdir, backbone=None, precision=None,
                 rows=()):
        self.settings = settings
        self.workdir = workdir
        self.backbone = backbone
        self.precision = precision
        self.rows = rows
        self.spec = backbones.get_backbone_spec(backbone) if backbone else None
        if settings.image_size:
            self.image_size = settings.image_size
        else:
            self.image_size = self.spec.default_size if self.spec else 224
        self._backbone_model = None
        self._entries = self._source = None

    def backbone_model(self):
        """The frozen `create_backbone` model, built once (under the policy)."""
        if self._backbone_model is None:
            self._backbone_model = backbones.create_backbone(
                self.backbone, self.settings.weights, self.image_size)
        return self._backbone_model

    def release(self):
        """Drops the models (memory for the next backbone)."""
        self._backbone_model = None
        keras.backend.clear_session()
        gc.collect()

    def entries(self):
        """The loose files (for the baselines), cycled to --max_images."""
        if self._entries is None:
            self._entries = inputs.load_entries(self.settings, self.workdir)
        return self._entries

    def prepared_source(self):
        """The folder through tlfast's TFDS builder, cycled to --max_images."""
        if self._source is None:
            self._source = inputs.PreparedSource(self.settings, self.workdir)
        return self._source

    def num_images(self):
        if self.settings.max_images:
            return self.settings.max_images
        return len(self.prepared_source()) if self.settings.data_dir else 256

    def set_jit_compile(self, model):
        """Applies --jit_compile; returns what the model will use."""
        if self.settings.jit_compile != "auto":
            model.jit_compile = self.settings.jit_compile == "true"
        return bool(model.jit_compile)


def step_stats(step_seconds, images, seconds=None):
    """Throughput fields from per-step wall times (seconds)."""
    seconds = sum(step_seconds) if seconds is None else seconds
    row = {"images": int(images), "seconds": seconds,
           "images_per_sec": images / seconds if seconds > 0 else 0.0}
    if step_seconds:
        ms = np.asarray(step_seconds) * 1000
        row.update(steps=len(ms), median_step_ms=float(np.median(ms)),
                   p90_step_ms=float(np.percentile(ms, 90)))
    return row


class EpochTimer(keras.callbacks.Callback):
    """Wall seconds of each epoch."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
