import numpy as np
import pytest

import keras
from test_backbones import register_tiny_backbone
from tlfast import backbones
from tlfast import head as head_lib
from tlfast import model as model_lib
from tlfast.data import augment


@pytest.fixture(scope="module")
def backbone_model():
    spec = register_tiny_backbone()
    keras.utils.set_random_seed(0)
    yield backbones.create_backbone(spec.name, None, 32)
    backbones.unregister_backbone(spec.name)


def _images(n=4):
    return np.random.default_rng(0).integers(0, 256, (n, 32, 32, 3), np.uint8)


def test_augmented_views_are_augmented_through_predict(backbone_model):
    # Views for the feature cache are made by predict / predict_on_batch,
    # which pass training=False to every nested layer: a view that came out
    # equal to the clean features would train the head on copies.
    images = _images()
    clean = model_lib.build_feature_model(backbone_model)
    for augmentation, always_augment in (
            (augment.make_augmentation("strong", seed=1, always=True), False),
            (augment.make_augmentation("strong", seed=1), True)):
        views = model_lib.build_feature_model(backbone_model, augmentation,
                                              always_augment=always_augment)
        plain = np.asarray(clean.predict_on_batch(images))
        for got in (views.predict_on_batch(images),
                    views.predict(images, verbose=0), views(images)):
            assert np.abs(np.asarray(got) - plain).max() > 1e-3 * np.abs(plain).max()


def test_classifier_augments_only_in_training(backbone_model):
    images = _images()
    head = head_lib.build_head(8, 3, head_lib.HeadConfig())
    classifier = model_lib.build_classifier(
        backbone_model, head, augment.make_augmentation("strong", seed=1))
    plain = model_lib.build_classifier(backbone_model, head)
    expected = np.asarray(plain.predict_on_batch(images))
    for got in (classifier.predict_on_batch(images),
                classifier.predict(images, verbose=0), classifier(images)):
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-6)
    trained = np.asarray(classifier(images, training=True))
    assert np.abs(trained - expected).max() > 1e-6


def test_view_seeds_differ_per_view_and_run():
    seeds = {augment.view_seed(s, v) for s in range(20) for v in range(1, 6)}
    # Each op takes seed + i: keep the views' ranges apart.
    ordered = sorted(seeds)
    assert len(ordered) == 100 and min(np.diff(ordered)) > 10
    assert all(0 <= s < 2**31 - 1000 for s in ordered)
