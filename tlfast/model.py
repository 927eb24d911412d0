"""End-to-end models: uint8 images -> [augmentation] -> backbone -> head.

The same graph pieces serve feature extraction (no head) and the exported
classifier, so features cached from one are exactly what the other computes.

Importing this module registers every tlfast object a saved model.keras may
hold (`BackbonePreprocessing`, `Augmentation`, the smoothed loss, the
multi-label loss and metric, the layer-wise Adam), so that `keras.models.load_model` finds them.
"""

import keras

from tlfast import backbones
from tlfast import head  # noqa: F401  (registers SmoothedSparseCrossentropy)
from tlfast import layer_rates  # noqa: F401  (registers LayerwiseAdam)
from tlfast import multilabel  # noqa: F401  (registers SetCrossentropy, SetAccuracy)
from tlfast.data import augment  # noqa: F401  (registers Augmentation)


def _features(image, backbone_model, augmentation, always_augment=False):
    """Wires image (uint8 KerasTensor) to pooled features."""
    preprocessing, inner = (backbone_model.get_layer("preprocessing"),
                            backbones.get_inner_model(backbone_model))
    x = image
    if augmentation is not None:
        # Augmentation works on float [0, 255]; the "none" mode is a cast.
        x = backbones.BackbonePreprocessing("none", name="to_float")(x)
        if always_augment and not augmentation.always:
            # Augmented views for the feature cache are made by `predict`;
            # a call-site training=True would be overridden by its False.
            augmentation = type(augmentation).from_config(
                {**augmentation.get_config(), "always": True})
        x = augmentation(x)
    x = preprocessing(x)
    # training=False holds for calls without `training`; `fit` passes its
    # True down to nested layers. BatchNormalization stays in inference
    # mode anyway: its layers are never trainable (`unfreeze_top_blocks`).
    return inner(x, training=False)


def build_feature_model(backbone_model, augmentation=None, always_augment=False,
                        name="features"):
    """uint8 images -> pooled features, with optional augmentation in front.

    Args:
      backbone_model: From `backbones.create_backbone`.
      augmentation: Optional augmentation block (`make_augmentation`).
      always_augment: Augment even at inference (`predict`): for computing
        augmented views of the training images.
      name: Model name.

    Returns:
      A `keras.Model` uint8 [B, S, S, 3] -> float [B, feature_dim].
    """
    image = keras.Input(backbone_model.input_shape[1:], dtype="uint8",
                        name="image")
    features = _features(image, backbone_model, augmentation, always_augment)
    return keras.Model(image, features, name=name)


def build_classifier(backbone_model, head, augmentation=None, name="classifier"):
    """The exported model: uint8 images -> class probabilities (float32).

    Args:
      backbone_model: From `backbones.create_backbone` (weights shared).
      head: From `head.build_head` (weights shared).
      augmentation: Optional augmentation block; active only in training.
      name: Model name.

    Returns:
      A `keras.Model` uint8 [B, S, S, 3] -> float32 [B, num_classes].
    """
    image = keras.Input(backbone_model.input_shape[1:], dtype="uint8",
                        name="image")
    features = _features(image, backbone_model, augmentation)
    return keras.Model(image, head(features), name=name)
