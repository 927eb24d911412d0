"""Augmentation as Keras layers, placed inside the model.

Inside the model, augmentation runs on the accelerator, after the pixel cache
(so each epoch sees fresh variations of cached uint8 pixels), and Keras turns
it off at inference: `model(x)` / `predict` call the layers with
`training=False`, where every random layer is the identity.

Specs are a preset name or a list of ops, each "op" or "op:strength":

    make_augmentation("standard")
    make_augmentation(["flip", "rotation:0.1", "zoom:0.2"])
    make_augmentation("flip,contrast:0.3")
"""

import hashlib

import keras

from tlfast.data.augment_spec import PRESETS  # noqa: F401  (public here too)
from tlfast.data.augment_spec import canonical_spec  # noqa: F401
from tlfast.data.augment_spec import parse_augmentation

# Part of the feature-cache key of augmented views: bump it whenever the
# pixels a view gets for the same spec and seed change. 2: views really are
# augmented (in version 1 `predict` switched them off: copies of the clean
# features) and their seeds no longer overlap.
VIEW_VERSION = 2

# Layer builders, one per op of `augment_spec.DEFAULT_STRENGTH` (a test
# checks that the two name the same ops).
OPS = {
    "flip": lambda s, seed, name: keras.layers.RandomFlip(
        "horizontal", seed=seed, name=name),
    "flip_vertical": lambda s, seed, name: keras.layers.RandomFlip(
        "vertical", seed=seed, name=name),
    "rotation": lambda s, seed, name: keras.layers.RandomRotation(
        s, fill_mode="reflect", seed=seed, name=name),
    "zoom": lambda s, seed, name: keras.layers.RandomZoom(
        s, fill_mode="reflect", seed=seed, name=name),
    "translation": lambda s, seed, name: keras.layers.RandomTranslation(
        s, s, fill_mode="reflect", seed=seed, name=name),
    "contrast": lambda s, seed, name: keras.layers.RandomContrast(
        s, seed=seed, name=name),
    "brightness": lambda s, seed, name: keras.layers.RandomBrightness(
        s, value_range=(0, 255), seed=seed, name=name),
}


@keras.saving.register_keras_serializable(package="tlfast")
class Augmentation(keras.layers.Layer):
    """Random augmentation that is off unless called with `training=True`.

    Keras 3's random image layers default to `training=True` in their call
    signature, so a bare `model(images)` would augment. Wrapping them makes
    "off" the default: only `fit` (or an explicit `training=True`) augments;
    `predict`, `evaluate` and `model(images)` do not.

    Input and output: float [B, H, W, 3] in [0, 255].
    """

    def __init__(self, spec, seed=None, always=False, **kwargs):
        kwargs.setdefault("name", "augmentation")
        super().__init__(**kwargs)
        self.spec = spec
        self.seed = seed
        self.always = bool(always)
        ops = parse_augmentation(spec)
        self.ops = [OPS[op](strength, None if seed is None else seed + i,
                            f"aug{i}_{op}")
                    for i, (op, strength) in enumerate(ops)]

    def build(self, input_shape):
        for layer in self.ops:
            layer.build(input_shape)

    def call(self, inputs, training=None):
        # `always` lives in the layer because a call-site training=True does
        # not survive: a Functional model hands its own `training` (False in
        # `predict`) to every nested layer that takes one.
        if not (training or self.always):
            return inputs
        x = inputs
        for layer in self.ops:
            x = layer(x, training=True)
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "spec": self.spec, "seed": self.seed,
                "always": self.always}


def make_augmentation(spec, seed=None, always=False):
    """Builds the augmentation block.

    Args:
      spec: See `parse_augmentation`.
      seed: Seed for the random layers (each gets its own derived seed).
      always: Augment at inference too (`predict`, `training=False`): for
        computing augmented views of the training images.

    Returns:
      An `Augmentation` layer mapping float32 [B, H, W, 3] in [0, 255] to the
      same shape and range (identity unless `training=True` or `always`), or
      None for no augmentation.
    """
    if not parse_augmentation(spec):
        return None
    return Augmentation(canonical_spec(spec), seed, always=always)


def view_seed(seed, view):
    """The seed of augmented view `view` (>= 1) of a run seeded `seed`.

    Hashed so that no two (seed, view) pairs share the consecutive seeds
    their ops derive from it; in [0, 2**31) for every backend's generator.
    """
    digest = hashlib.sha256(f"tlfast-view|{seed}|{view}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % (2**31 - 1000)
