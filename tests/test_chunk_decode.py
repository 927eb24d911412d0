"""tlfast.data.chunk_decode: a chunk decoded at once, pixels as the pipeline's."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import encode
from conftest import jpeg_with_orientation
from conftest import noise_image
from tlfast.data import chunk_decode
from tlfast.data import pipeline


@pytest.fixture
def encoded():
    shapes = [(24, 32), (40, 20), (17, 17), (64, 48), (9, 30)]
    fmts = ["JPEG", "PNG", "JPEG", "BMP", "PNG"]
    # Phone photos too: JPEGs with an EXIF turn take the full decode.
    return [encode(noise_image(s, seed=i), f)
            for i, (s, f) in enumerate(zip(shapes * 3, fmts * 3))] + [
        jpeg_with_orientation(noise_image((20, 36), seed=v), v) for v in (1, 6, 8)]


@pytest.mark.parametrize("resize", pipeline.RESIZE_MODES)
def test_same_pixels_as_the_pipeline(encoded, resize):
    decoder = chunk_decode.ChunkDecoder(16, resize, threads=2)
    got = decoder(encoded)
    assert got.shape == (len(encoded), 16, 16, 3) and got.dtype == np.uint8
    eager = np.stack([pipeline.decode_image(tf.constant(e), 16, resize).numpy()
                      for e in encoded])
    np.testing.assert_array_equal(got, eager)
    in_data = np.stack(list(tf.data.Dataset.from_tensor_slices(
        tf.constant(encoded)).map(
            lambda e: pipeline.decode_image(e, 16, resize)).as_numpy_iterator()))
    np.testing.assert_array_equal(got, in_data)
    # Called again (and with fewer images than threads): the same function.
    np.testing.assert_array_equal(decoder(encoded[:1]), eager[:1])


def test_empty_and_damaged(encoded):
    decoder = chunk_decode.ChunkDecoder(16, "crop")
    assert decoder([]).shape == (0, 16, 16, 3)
    with pytest.raises(tf.errors.InvalidArgumentError):
        decoder([encoded[0], b"\xff\xd8 not a jpeg"])
