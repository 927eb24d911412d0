"""tlfast.data.headers: the guard before any byte is decoded."""

import os
import threading

import numpy as np
import pytest

from conftest import encode
from conftest import noise_image
from conftest import write_image
from tlfast.data import headers
from tlfast.data import scan


def test_sniff_format():
    assert headers.sniff_format(b"\xff\xd8\xff\xe0" + b"\0" * 28) == "jpeg"
    assert headers.sniff_format(b"\x89PNG\r\n\x1a\n" + b"\0" * 24) == "png"
    assert headers.sniff_format(b"RIFF\0\0\0\0WEBPVP8 " + b"\0" * 16) == "webp"
    assert headers.sniff_format(b"hello") is None


def test_a_fifo_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    result = []
    reader = threading.Thread(
        target=lambda: result.append(scan.check_image(str(fifo))), daemon=True)
    reader.start()
    reader.join(10)
    assert result, "reading a FIFO hung"
    assert "not a regular file (a FIFO" in result[0][0]


def test_a_device_is_refused_unread():
    reason, _ = scan.check_image("/dev/zero")
    assert "not a regular file (a character device)" in reason


def make_gif(path, frames, size=(64, 48)):
    from PIL import Image

    images = [Image.fromarray(noise_image(size[::-1], seed=i)) for i in range(frames)]
    images[0].save(path, save_all=True, append_images=images[1:], duration=50)
    return path


def test_an_animated_gif_counts_every_frame(tmp_path, monkeypatch):
    path = make_gif(tmp_path / "anim.gif", frames=5)
    data = path.read_bytes()
    assert headers.check_gif_frames(data, 10**9) == (48, 64, 5)
    # 5 frames of 64x48 fit 4 frames' pixels only: refused before decoding
    # (TensorFlow's decoder would unpack every frame).
    monkeypatch.setattr(scan.pipeline, "decode_rgb", None)
    reason, _ = scan.check_image(str(path), max_pixels=4 * 64 * 48)
    assert "64x48 pixels x 5 frames exceeds the limit" in reason


def test_a_still_gif_is_one_frame(tmp_path):
    path = write_image(tmp_path / "still.gif", noise_image((30, 20)), fmt="GIF")
    assert headers.check_gif_frames(path.read_bytes(), 10**9) == (30, 20, 1)
    assert scan.check_image(str(path))[0] is None


def test_a_header_without_a_size_is_refused(tmp_path):
    # A JPEG start marker, then no frame header: nothing says how large it
    # would decode, so it is not decoded to find out.
    path = tmp_path / "forged.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 200)
    reason, _ = scan.check_image(str(path))
    assert "does not state the image size" in reason


def test_a_header_claiming_a_bomb_is_refused_unread(tmp_path, monkeypatch):
    data = bytearray(encode(noise_image((20, 20)), "PNG"))
    data[16:24] = (100_000).to_bytes(4, "big") * 2  # IHDR: 100000 x 100000.
    path = tmp_path / "bomb.png"
    path.write_bytes(bytes(data))
    monkeypatch.setattr(scan.pipeline, "decode_rgb", None)
    reason, _ = scan.check_image(str(path))
    assert "100000x100000 pixels exceeds the limit" in reason


def test_a_file_larger_than_its_pixels_explain_is_refused(tmp_path):
    path = tmp_path / "padded.png"
    path.write_bytes(encode(noise_image((10, 10)), "PNG")
                     + b"\0" * (headers.METADATA_BYTES + 1000))
    reason, _ = scan.check_image(str(path))
    assert "file too large for its pixels" in reason

@pytest.mark.parametrize("kind", ["lossy", "lossless", "extended"])
def test_webp_size_is_read_from_the_header(tmp_path, kind, monkeypatch):
    from PIL import Image

    image = noise_image((24, 40))
    if kind == "extended":  # Alpha makes PIL write a VP8X chunk.
        pil = Image.fromarray(np.dstack([image, np.full((24, 40), 200, np.uint8)]))
    else:
        pil = Image.fromarray(image)
    path = tmp_path / "x.webp"
    pil.save(path, "WEBP", lossless=kind == "lossless")
    data = path.read_bytes()
    assert data[12:16] == {"lossy": b"VP8 ", "lossless": b"VP8L",
                           "extended": b"VP8X"}[kind]
    assert headers._header_size("webp", data) == (24, 40)
    # The bomb guard refuses it before decoding anything.
    monkeypatch.setattr(scan.pipeline, "decode_rgb", None)
    reason, _ = scan.check_image(str(path), max_pixels=24 * 40 - 1)
    assert "too large" in reason


def test_jpeg_size_is_read_from_its_frame_header(tmp_path):
    from PIL import Image

    image = Image.fromarray(noise_image((37, 53)))
    plain = encode(noise_image((37, 53)))
    progressive = tmp_path / "p.jpg"
    image.save(progressive, "JPEG", progressive=True,
               exif=b"Exif\0\0" + b"\0" * 60000)  # A long APP1 block first.
    for data in (plain, progressive.read_bytes()):
        assert headers._header_size("jpeg", data) == (37, 53)
