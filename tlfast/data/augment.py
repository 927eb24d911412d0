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

from tlfast.errors import suggest

# Part of the feature-cache key of augmented views: bump it whenever the
# pixels a view gets for the same spec and seed change. 2: views really are
# augmented (in version 1 `predict` switched them off: copies of the clean
# features) and their seeds no longer overlap.
VIEW_VERSION = 2

# Strength meanings follow the Keras layers: rotation is a fraction of a full
# turn, zoom / translation fractions of the side, contrast / brightness
# fractions of the value range.
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
DEFAULT_STRENGTH = {"flip": None, "flip_vertical": None, "rotation": 0.05,
                    "zoom": 0.1, "translation": 0.1, "contrast": 0.2,
                    "brightness": 0.2}
PRESETS = {
    "none": (),
    "flip": ("flip",),
    "light": ("flip", "rotation:0.03", "zoom:0.05"),
    "standard": ("flip", "rotation:0.05", "zoom:0.1", "translation:0.1",
                 "contrast:0.1"),
    # The seed recipe's ImageDataGenerator: rotation 20 degrees, shifts and
    # zoom 0.2, horizontal flip (shear has no Keras layer; zoom stands in).
    "seed_recipe": ("flip", f"rotation:{20 / 360:.4f}", "zoom:0.2",
                    "translation:0.2"),
    "strong": ("flip", "rotation:0.1", "zoom:0.2", "translation:0.15",
               "contrast:0.3", "brightness:0.2"),
}


def parse_augmentation(spec):
    """Normalises a spec to a tuple of (op, strength) pairs.

    Args:
      spec: None, a preset name, a comma-separated string of ops, or a list
        of ops ("op" or "op:strength").

    Raises:
      ValueError: Unknown op or preset, or a bad strength.
    """
    if spec is None:
        return ()
    if isinstance(spec, str):
        spec = spec.strip()
        if spec in PRESETS:
            return parse_augmentation(list(PRESETS[spec]))
        spec = [part for part in spec.split(",") if part.strip()]
    out = []
    for item in spec:
        name, _, value = str(item).strip().partition(":")
        name = name.strip()
        if name not in OPS:
            raise ValueError(
                f"Unknown augmentation op '{name}'.{suggest(name, OPS)} "
                f"Expected a preset ({', '.join(PRESETS)}) or ops from "
                f"{', '.join(OPS)}, each optionally 'op:strength'. "
                f"Received: augment={item!r}")
        strength = DEFAULT_STRENGTH[name]
        if value:
            if strength is None:
                raise ValueError(
                    f"Augmentation op '{name}' takes no strength. "
                    f"Received: augment={item!r}")
            try:
                strength = float(value)
            except ValueError:
                strength = -1.0
            if not 0.0 < strength <= 1.0:
                raise ValueError(
                    f"Augmentation strength must be a number in (0, 1]. "
                    f"Received: augment={item!r}")
        out.append((name, strength))
    return tuple(out)


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


def canonical_spec(spec):
    """The normalised string form of a spec, e.g. "flip,zoom:0.1"."""
    return ",".join(f"{op}:{s}" if s else op for op, s in parse_augmentation(spec))


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
