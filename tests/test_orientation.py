"""tlfast.data.orientation: EXIF Orientation read and applied in the graph."""

import io

import numpy as np
import pytest
import tensorflow as tf

from conftest import jpeg_with_orientation
from conftest import noise_image
from tlfast.data import orientation
from tlfast.data import pipeline

# PIL's own table (ImageOps.exif_transpose).
_PIL_METHODS = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM",
                5: "TRANSPOSE", 6: "ROTATE_270", 7: "TRANSVERSE", 8: "ROTATE_90"}


@pytest.mark.parametrize("value", range(1, 9))
def test_every_orientation_matches_pil(value):
    from PIL import Image

    image = noise_image((24, 40), seed=value)
    data = jpeg_with_orientation(image, value)
    assert int(orientation.exif_orientation(tf.constant(data))) == value
    raw = tf.io.decode_jpeg(data, channels=3).numpy()
    expected = raw if value == 1 else np.asarray(Image.fromarray(raw).transpose(
        getattr(Image.Transpose, _PIL_METHODS[value])))
    for decoded in (pipeline.decode_rgb(tf.constant(data)),
                    tf.function(pipeline.decode_rgb)(tf.constant(data)),
                    next(iter(tf.data.Dataset.from_tensors(data).map(
                        pipeline.decode_rgb)))):
        np.testing.assert_array_equal(decoded.numpy(), expected)


def test_may_turn_agrees_with_the_graph():
    from conftest import encode

    for data in [jpeg_with_orientation(noise_image(seed=v), v) for v in (1, 6)] + [
            encode(noise_image()), encode(noise_image(), "PNG"), b"",
            b"\xff\xd8\xff\xe1\x00\x10Exif\0\0II*\0\xff\xff\xff\x7f",
            b"\xff\xd8\xff\xe0" + b"\0" * 20 + b"Exif\0\0"]:
        if int(orientation.exif_orientation(tf.constant(data))) != 1:
            assert orientation.may_turn(data)
    assert orientation.may_turn(jpeg_with_orientation(noise_image(), 6))
    assert not orientation.may_turn(encode(noise_image()))


def test_no_exif_and_other_formats_mean_as_stored():
    from conftest import encode

    for data in (encode(noise_image()), encode(noise_image(), "PNG"),
                 b"\xff\xd8\xff\xe1\x00\x10Exif\0\0II*\0\xff\xff\xff\x7f",
                 b"", b"\xff\xd8"):
        assert int(orientation.exif_orientation(tf.constant(data))) == 1


def test_every_route_decodes_a_phone_photo_upright(tmp_path):
    from conftest import make_folder
    from tlfast import predict
    from tlfast.data import folder_builder
    from tlfast.data import records as records_lib
    from tlfast.data import scan
    from tlfast.data import sources

    root = make_folder(tmp_path / "data", {"a": 3, "b": 3}, size=(24, 40))
    stored = noise_image((24, 40), seed=7)  # Landscape as the sensor saw it,
    data = jpeg_with_orientation(stored, 6)  # shown rotated 90 clockwise.
    (root / "a" / "phone.jpg").write_bytes(data)
    raw = tf.io.decode_jpeg(data, channels=3)
    expected = pipeline.resize_image(tf.image.rot90(raw, 3), 16, "crop").numpy()
    assert tf.image.rot90(raw, 3).shape[:2] == (40, 24)  # Portrait.
    entries = scan.scan_files(sources.list_image_folder(root).splits["all"]).usable
    phone = [e for e in entries if e.relpath == "a/phone.jpg"]
    loose = next(iter(pipeline.files_dataset(phone, 16, "crop")))["image"]
    np.testing.assert_array_equal(loose.numpy(), expected)
    batch, _ = next(predict.iter_batches(phone, 16, "crop", 1))
    np.testing.assert_array_equal(batch[0], expected)
    prepared = folder_builder.prepare_image_folder(
        root, data_root=tmp_path / "tfds", validation_split=0.01)
    records = records_lib.prepared_examples(prepared, "train", 16)
    index = [i for i, e in enumerate(records.entries) if e.relpath == "a/phone.jpg"]
    got = [b for b in records.batched(index, 1)][0]["image"][0]
    np.testing.assert_array_equal(np.asarray(got), expected)
