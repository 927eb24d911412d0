"""From settings to a run: what a `TrainConfig` resolves to, computed once.

`TrainConfig.__post_init__` has already checked every value on its own.
What needs more than the values is checked here, once per run, before any
heavy work: the backbone registry (name, minimum size, number of blocks),
the file system (data folder, weights file, writable output and cache
folders), the Keras backend (distribution strategies, int8 export) and the
global precision policy. The result travels through the run as one object
instead of long argument lists.
"""

import dataclasses
import logging
import os
import tempfile

import keras

from tlfast import backbones
from tlfast import distribute
from tlfast import precision as precision_lib
from tlfast.backbones import BackboneSpec
from tlfast.config import HeadConfig
from tlfast.config import TrainConfig
from tlfast.data import augment_spec

log = logging.getLogger("tlfast")


@dataclasses.dataclass(frozen=True)
class ResolvedRun:
    """A checked `TrainConfig` and what it resolved to.

    Attributes:
      config: The settings (batch sizes and learning rates already scaled by
        `replicas`, see `scaled`).
      spec: The backbone's `BackboneSpec`.
      image_size: Side of the square images (the backbone's default when
        `config.image_size` is None).
      augment: The canonical augmentation spec, e.g. "flip,zoom:0.1".
      head: The head's `HeadConfig`.
      policy: The Keras dtype policy in force, e.g. "float32".
      replicas: Model replicas of the distribution strategy.
      views: Augmented views cached per training image (`config.views_for`
        once the training set's size is known).
    """

    config: TrainConfig
    spec: BackboneSpec
    image_size: int
    augment: str
    head: HeadConfig
    policy: str
    replicas: int = 1
    views: int = 0

    @property
    def cache_dir(self):
        return os.path.expanduser(self.config.cache_dir)

    @property
    def source(self):
        """Where the examples come from, for cache keys: the data folder's
        real path, or "tfds:<name>"."""
        if self.config.tfds_name:
            return f"tfds:{self.config.tfds_name}"
        return os.path.realpath(os.path.expanduser(self.config.data_dir))

    def scaled(self, replicas):
        """This run with global batches and learning rates for `replicas`.

        Linear scaling: the per-replica batch stays as asked.
        """
        if replicas <= 1:
            return dataclasses.replace(self, replicas=max(replicas, 1))
        log.info("%d replicas: global batch and learning rates x%d",
                 replicas, replicas)
        c = self.config
        config = dataclasses.replace(
            c, batch_size=c.batch_size * replicas,
            head_batch_size=c.head_batch_size * replicas,
            learning_rate=c.learning_rate * replicas,
            fine_tune_learning_rate=c.fine_tune_learning_rate * replicas)
        return dataclasses.replace(self, config=config, head=config.head(),
                                   replicas=replicas)

    def with_output_dir(self, output_dir):
        return dataclasses.replace(self, config=dataclasses.replace(
            self.config, output_dir=output_dir))


def resolve(config):
    """Checks what `config`'s values alone cannot tell; a `ResolvedRun`.

    Raises:
      ValueError: Unknown backbone, an image size below its minimum, too
        many fine-tune blocks, a strategy or export the backend cannot run,
        or a precision other than the policy in force.
      FileNotFoundError: No data folder or weights file.
      OSError: An output or cache folder that cannot be written.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"Expected a tlfast.TrainConfig. Received: {config!r}")
    if config.data_dir and not os.path.isdir(os.path.expanduser(config.data_dir)):
        raise FileNotFoundError(
            f"Dataset folder not found: '{config.data_dir}'. Expected a folder "
            "of class sub-folders of images. Received: "
            f"data_dir={config.data_dir!r}")
    spec = backbones.get_backbone_spec(config.backbone)
    size = config.image_size or spec.default_size
    if size < spec.min_size:
        raise ValueError(
            f"image_size must be at least {spec.min_size} for backbone "
            f"'{spec.name}'. Received: image_size={size}")
    if config.fine_tune_epochs and config.fine_tune_blocks is not None and not (
            1 <= config.fine_tune_blocks <= len(spec.blocks)):
        raise ValueError(
            f"fine_tune_blocks must be in [1, {len(spec.blocks)}] for "
            f"'{spec.name}'. Received: fine_tune_blocks={config.fine_tune_blocks}")
    _check_weights(config.weights)
    distribute.check_distribution(config.distribution)
    if ("tflite_int8" in config.export_formats
            and keras.backend.backend() != "tensorflow"):
        # Refused by the export too, but only after all the training.
        raise ValueError(
            "export=tflite_int8 needs Keras' TensorFlow backend: train with "
            "KERAS_BACKEND=tensorflow, or export tflite (float) now and "
            "tflite_int8 later with `KERAS_BACKEND=tensorflow tlfast-export`. "
            f"Received: backend={keras.backend.backend()!r}")
    policy = precision_lib.check_policy(config.precision)
    check_writable(config.output_dir)
    # Caches hold copies of the user's photos: a new cache folder is the
    # user's alone (an existing one keeps its mode: it may be shared on
    # purpose).
    check_writable(os.path.expanduser(config.cache_dir), mode=0o700)
    return ResolvedRun(config=config, spec=spec, image_size=size,
                       augment=augment_spec.canonical_spec(config.augment),
                       head=config.head(), policy=policy)


def _check_weights(weights):
    if not (weights is None or weights == "imagenet" or weights.lower() == "none"
            or os.path.isfile(os.path.expanduser(weights))):
        raise FileNotFoundError(
            f"Weights file not found: '{weights}'. Pass imagenet, none, or a "
            f"path to a .weights.h5 / .h5 file. Received: weights={weights!r}")


def check_writable(path, mode=0o777):
    """Creates `path` (with `mode`, less the umask) and proves it writable.

    A real write, not `os.access`: root passes permission checks, and a
    read-only mount or a full disk only shows on an actual write.
    """
    try:
        os.makedirs(path, mode=mode, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".tlfast-probe-"):
            pass
    except OSError as e:
        raise OSError(
            f"Folder '{path}' is not writable: {e.strerror or e}. Pass a "
            "writable path (--output_dir / --cache_dir).") from e
