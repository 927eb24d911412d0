"""tlfast.extraction: cache keys of a run's features and the per-worker predictor."""

import keras
import numpy as np
import pytest

from test_backbones import register_tiny_backbone
from tlfast import backbones
from tlfast import extraction


def _tiny(seed):
    register_tiny_backbone()
    keras.utils.set_random_seed(seed)
    return backbones.create_backbone("tiny_test", None, 32)


def test_weights_fingerprint_of_random_weights_follows_the_weights():
    a, again, other = _tiny(0), _tiny(0), _tiny(1)
    key = extraction.weights_fingerprint(None, a)
    assert key.startswith("random:")
    assert key == extraction.weights_fingerprint("none", again)
    assert key != extraction.weights_fingerprint(None, other)


def test_weights_fingerprint_of_named_and_file_weights(tmp_path):
    model = _tiny(0)
    assert extraction.weights_fingerprint("imagenet", model) == "imagenet"
    path = tmp_path / "w.weights.h5"
    path.write_bytes(b"some weights")
    key = extraction.weights_fingerprint(str(path), model)
    assert key.startswith("sha256:")
    path.write_bytes(b"other weights")
    assert extraction.weights_fingerprint(str(path), model) != key


def test_local_predictor_matches_predict_on_batch():
    model = _tiny(0)
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), np.uint8)
    got = extraction._LocalPredictor(model).predict_on_batch(images)
    np.testing.assert_allclose(got, model.predict_on_batch(images), atol=1e-5)


@pytest.mark.parametrize("image_size", [32, 96, 112, 160, 224, 331])
def test_extraction_sizes_hold_a_bounded_number_of_pixels(image_size):
    batch, chunk = extraction.extraction_sizes(32, image_size, 512)
    assert 32 <= batch <= chunk and 512 <= chunk <= 4 * 512
    # A chunk holds no more pixels than a shard of 224-px images (or one
    # shard), a call about as many as 32 of them.
    assert chunk * image_size ** 2 <= max(512 * 224 ** 2, 512 * image_size ** 2)
    assert batch * image_size ** 2 <= max(32 * 224 ** 2, 32 * image_size ** 2)
    if image_size == 32:
        assert (batch, chunk) == (1568, 2048)

