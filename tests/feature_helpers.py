"""Shared by tests/test_features.py and tests/test_feature_pass.py: a tiny
registered backbone, ids, images and an in-memory `make_dataset`."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from tlfast import backbones as bb
from tlfast import feature_pass as fp
from tlfast import features as ft

SIZE = 16
N = 20
BATCH = 3

TINY_SPEC = bb.BackboneSpec(
    name="tiny_features_test", constructor="TinyFeaturesTest", feature_dim=6,
    default_size=SIZE, preprocessing="tf", blocks=("conv",), min_size=SIZE)


def _build_tiny(input_shape, weights):
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(6, 3, strides=2, name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, x)


@pytest.fixture(scope="module")
def backbone():
    bb.register_backbone(TINY_SPEC, builder=_build_tiny, overwrite=True)
    yield bb.create_backbone(TINY_SPEC.name, None, SIZE)
    bb.unregister_backbone(TINY_SPEC.name)


class Counting:
    """Wraps a model, counting forwarded examples; can fail like a kill."""

    def __init__(self, model, fail_after_batches=None):
        self.model, self.fail_after = model, fail_after_batches
        self.batches = self.examples = 0

    def predict_on_batch(self, images):
        if self.fail_after is not None and self.batches >= self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.batches += 1
        self.examples += len(images)
        return self.model.predict_on_batch(images)


def feature_key(**changes):
    key = ft.FeatureKey(backbone=TINY_SPEC.name, weights="none", image_size=SIZE,
                        resize="resize", preprocessing="tf", precision="float32")
    return dataclasses.replace(key, **changes)


def random_images(n=N, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), np.uint8)


def array_dataset(images, batch=BATCH):
    def make_dataset(indices):
        return tf.data.Dataset.from_tensor_slices(
            {"image": images[np.asarray(indices, int)]}).batch(batch)
    return make_dataset


def example_ids(n=N):
    return [f"img_{i:03d}.jpg|100|{i}" for i in range(n)]


def extract(tmp_path, model, key=None, ids=None, images=None, **kwargs):
    cache = ft.FeatureCache(tmp_path / "cache", key or feature_key())
    images = random_images() if images is None else images
    return fp.extract_features(ids or example_ids(len(images)), array_dataset(images),
                               model, cache, **kwargs)


def direct(model, images, batch=BATCH):
    return np.concatenate([np.asarray(model.predict_on_batch(images[i:i + batch]))
                           for i in range(0, len(images), batch)])


def shard_paths(tmp_path, key=None):
    folder = tmp_path / "cache" / "features" / (key or feature_key()).digest()
    return sorted(folder.glob("shard-*.npz"))


class Mean:
    """A backbone whose feature of image i (all pixels i) is [i, i, i]."""

    def predict_on_batch(self, x):
        return np.asarray(x, np.float32).mean(axis=(1, 2))


def numbered(n, calls=None, offset=0):
    """make_dataset over n 4-px images, image i all pixels i; logs calls."""
    images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones(
        (1, 4, 4, 3), np.uint8)

    def make_dataset(indices):
        if calls is not None:
            calls.append(list(indices))
        return tf.data.Dataset.from_tensor_slices(
            {"image": images[[i + offset for i in indices]]}).batch(4)

    return make_dataset
