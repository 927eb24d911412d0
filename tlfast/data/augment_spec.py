"""Augmentation specs as text: presets, ops and strengths, without Keras.

A spec is a preset name or a list of ops, each "op" or "op:strength"
("standard", "flip,rotation:0.1,zoom:0.2"). Parsing lives apart from the
Keras layers (`tlfast.data.augment`) so that `tlfast.config` can check a
spec without importing TensorFlow (`tlfast-train --help` pays ~3 s for it).
"""

from tlfast.errors import suggest

# Strength meanings follow the Keras layers: rotation is a fraction of a full
# turn, zoom / translation fractions of the side, contrast / brightness
# fractions of the value range. None: the op takes no strength.
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


def _strength(name, value, item):
    strength = DEFAULT_STRENGTH[name]
    if not value:
        return strength
    if strength is None:
        raise ValueError(f"Augmentation op '{name}' takes no strength. "
                         f"Received: augment={item!r}")
    try:
        strength = float(value)
    except ValueError:
        strength = -1.0
    if not 0.0 < strength <= 1.0:
        raise ValueError("Augmentation strength must be a number in (0, 1]. "
                         f"Received: augment={item!r}")
    return strength


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
        if name not in DEFAULT_STRENGTH:
            raise ValueError(
                f"Unknown augmentation op '{name}'."
                f"{suggest(name, DEFAULT_STRENGTH)} Expected a preset "
                f"({', '.join(PRESETS)}) or ops from "
                f"{', '.join(DEFAULT_STRENGTH)}, each optionally "
                f"'op:strength'. Received: augment={item!r}")
        out.append((name, _strength(name, value, item)))
    return tuple(out)


def canonical_spec(spec):
    """The normalised string form of a spec, e.g. "flip,zoom:0.1"."""
    return ",".join(f"{op}:{s}" if s else op for op, s in parse_augmentation(spec))
