import os
import time

import numpy as np
import pytest

from conftest import assets_path
from conftest import encode
from conftest import noise_image
from conftest import write_image
from tlfast.data import scan
from tlfast.data import sources


def _entry(path, label=0):
    return sources.FileEntry(str(path), os.path.basename(path), label)


def _scan_one(path, **kwargs):
    return scan.scan_files([_entry(path)], **kwargs)


def _pil_image(image, mode):
    from PIL import Image

    return Image.fromarray(image).convert(mode)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "GIF", "WEBP"])
def test_good_formats_are_usable_even_with_a_jpg_name(tmp_path, fmt):
    # Header sniffing, not the extension, decides: a PNG named .jpg is used.
    path = write_image(tmp_path / "x.jpg", noise_image(), fmt=fmt)
    result = _scan_one(path)
    assert len(result.usable) == 1 and not result.skipped


@pytest.mark.parametrize("mode,fmt", [("L", "PNG"), ("RGBA", "PNG"),
                                      ("CMYK", "JPEG"), ("P", "GIF"),
                                      ("I;16", "PNG")])
def test_colour_modes_are_usable(tmp_path, mode, fmt):
    image = noise_image()
    if mode == "I;16":
        from PIL import Image

        pil = Image.fromarray((image[..., 0].astype(np.uint16) * 257))
    else:
        pil = _pil_image(image, mode)
    path = tmp_path / f"x.{fmt.lower()}"
    pil.save(path, format=fmt)
    reason, info = scan.check_image(str(path))
    assert reason is None
    assert info["height"] == 24 and info["width"] == 32


@pytest.mark.parametrize("lossless", [True, False])
def test_webp_with_alpha_decodes_to_its_rgb(tmp_path, lossless):
    import tensorflow as tf
    from PIL import Image

    from tlfast.data import pipeline

    rgba = np.concatenate([noise_image(), np.full((24, 32, 1), 128, np.uint8)],
                          axis=-1)
    path = tmp_path / "alpha.webp"
    Image.fromarray(rgba, "RGBA").save(path, "WEBP", lossless=lossless)
    reason, info = scan.check_image(str(path))
    assert reason is None and (info["height"], info["width"]) == (24, 32)
    expected = np.asarray(Image.open(path).convert("RGBA"))[..., :3]
    data = path.read_bytes()
    eager = pipeline.decode_image(tf.constant(data), 24, "crop").numpy()
    np.testing.assert_array_equal(eager, expected[:, 4:28])
    in_data = next(iter(tf.data.Dataset.from_tensors(data).map(
        pipeline.decode_rgb))).numpy()
    np.testing.assert_array_equal(in_data, expected)


def test_animated_webp_is_skipped_with_its_reason(tmp_path):
    from PIL import Image

    frames = [Image.fromarray(noise_image(seed=i)) for i in range(2)]
    path = tmp_path / "anim.webp"
    frames[0].save(path, "WEBP", save_all=True, append_images=frames[1:])
    reason, _ = scan.check_image(str(path))
    assert reason.startswith("animated WebP")


@pytest.mark.parametrize("mode, usable", [("L", True), ("P", False),
                                          ("1", False)])
def test_bmp_palettes_tf_would_misread_are_skipped(tmp_path, mode, usable):
    import tensorflow as tf
    from PIL import Image

    from tlfast.data import pipeline

    pil = _pil_image(noise_image(), "RGB").convert(mode)
    path = tmp_path / "x.bmp"
    pil.save(path, "BMP")
    reason, _ = scan.check_image(str(path))
    if usable:  # Grey levels are what TF reads: right.
        assert reason is None
        decoded = pipeline.decode_rgb(tf.constant(path.read_bytes())).numpy()
        np.testing.assert_array_equal(decoded,
                                      np.asarray(pil.convert("RGB")))
    else:
        assert "BMP" in reason and "convert it to PNG" in reason


def test_animated_gif_is_usable(tmp_path):
    from PIL import Image

    frames = [Image.fromarray(noise_image(seed=i)) for i in range(3)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert scan.check_image(str(path))[0] is None


def _bad_files(tmp_path):
    jpeg = encode(noise_image())
    files = {
        "zero.jpg": (b"", "empty file"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "corrupt or truncated jpeg"),
        "random.jpg": (np.random.default_rng(0).bytes(700),
                       "not an image"),
        "text.jpg": (b"this is not an image at all\n" * 4, "not an image"),
        "tiff.jpg": (encode(noise_image(), "TIFF"),
                     "unsupported image format 'tiff'"),
        "tiny.png": (encode(noise_image((1, 1)), "PNG"), "too small"),
        "blank.png": (encode(np.full((40, 40, 3), 250, np.uint8), "PNG"),
                      "placeholder"),
    }
    for name, (data, _) in files.items():
        (tmp_path / name).write_bytes(data)
    return {str(tmp_path / name): reason for name, (_, reason) in files.items()}


def test_each_bad_kind_is_skipped_with_a_specific_reason(tmp_path):
    expected = _bad_files(tmp_path)
    good = write_image(tmp_path / "good.jpg")
    entries = [_entry(p) for p in list(expected) + [str(good)]]
    result = scan.scan_files(entries)
    assert [e.path for e in result.usable] == [str(good)]
    reasons = {s.path: s.reason for s in result.skipped}
    assert set(reasons) == set(expected)
    for path, fragment in expected.items():
        assert fragment in reasons[path], (path, reasons[path])


def test_decompression_bomb_guard(tmp_path):
    for fmt in ("JPEG", "PNG", "GIF", "BMP"):
        path = write_image(tmp_path / f"big.{fmt.lower()}", noise_image((40, 40)),
                           fmt=fmt)
        reason, _ = scan.check_image(str(path), max_pixels=1000)
        assert reason and "too large: 40x40" in reason, (fmt, reason)
        assert scan.check_image(str(path), max_pixels=1600)[0] is None


def test_unreadable_file_is_skipped(tmp_path):
    path = write_image(tmp_path / "locked.jpg")
    os.chmod(path, 0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as a user that ignores file permissions")
        assert "cannot read file" in _scan_one(path).skipped[0].reason
    finally:
        os.chmod(path, 0o644)


def test_strict_lists_every_bad_file(tmp_path):
    expected = _bad_files(tmp_path)
    with pytest.raises(scan.BadImagesError) as info:
        scan.scan_files([_entry(p) for p in expected], strict=True)
    assert len(info.value.skipped) == len(expected)
    for path in expected:
        assert path in str(info.value)


def test_scan_cache_reuses_verdicts_and_notices_changes(tmp_path):
    cache = tmp_path / "cache"
    good = write_image(tmp_path / "data" / "a.jpg")
    bad = tmp_path / "data" / "b.jpg"
    bad.write_bytes(b"")
    entries = [_entry(good), _entry(bad)]
    first = scan.scan_files(entries, root=tmp_path / "data", cache_dir=cache)
    assert first.cached == 0 and len(first.usable) == 1
    second = scan.scan_files(entries, root=tmp_path / "data", cache_dir=cache)
    assert second.cached == 2
    assert second.skipped == first.skipped
    # Fixing the bad file changes its size and mtime: it is checked again.
    write_image(bad)
    os.utime(bad, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    third = scan.scan_files(entries, root=tmp_path / "data", cache_dir=cache)
    assert third.cached == 1 and len(third.usable) == 2


def test_scan_cache_respects_options(tmp_path):
    cache = tmp_path / "cache"
    path = write_image(tmp_path / "blank.png", np.full((20, 20, 3), 7, np.uint8),
                       fmt="PNG")
    assert _scan_one(path, root=tmp_path, cache_dir=cache).skipped
    kept = _scan_one(path, root=tmp_path, cache_dir=cache,
                     skip_placeholders=False)
    assert kept.cached == 0 and len(kept.usable) == 1


@pytest.mark.assets
def test_hymenoptera_reports_exactly_the_junk_gif():
    root = assets_path("datasets", "hymenoptera")
    folder = sources.list_image_folder(root)
    entries = [e for split in folder.splits.values() for e in split]
    result = scan.scan_files(entries)
    assert [s.path for s in result.skipped] == [
        str(root / "train" / "ants" / "imageNotFound.gif")]
    assert "placeholder" in result.skipped[0].reason
    assert len(result.usable) == len(entries) - 1 == 397


def test_chunked_scan_judges_as_check_image_does(tmp_path):
    """scan_files decodes chunks in one traced call; its verdicts must be
    check_image's, file by file, whatever else is in the chunk."""
    rng = np.random.default_rng(0)
    flat = np.full((40, 40, 3), 250, np.uint8)
    flat[5:9, 5:30] = 0  # A placeholder-like graphic: 2 colours.
    files = [write_image(tmp_path / f"photo{i}.jpg", noise_image((30 + i, 20), seed=i))
             for i in range(70)]
    files.append(write_image(tmp_path / "flat.png", flat, "PNG"))
    files.append(write_image(tmp_path / "tiny.png", noise_image((4, 30)), "PNG"))
    files.append(write_image(tmp_path / "big.png", noise_image((50, 60)), "PNG"))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(encode(noise_image((40, 40)))[:300])
    files.insert(10, broken)
    files.insert(3, write_image(tmp_path / "cmyk_like.gif",
                                rng.integers(0, 255, (30, 30, 3)).astype(np.uint8),
                                "GIF"))
    entries = [sources.FileEntry(str(p), p.name, 0) for p in files]
    for skip in (True, False):
        result = scan.scan_files(entries, skip_placeholders=skip,
                                 max_pixels=2999)
        got = {s.path: s.reason for s in result.skipped}
        got.update((e.path, None) for e in result.usable)
        want = {str(p): scan.check_image(str(p), 2999, skip)[0] for p in files}
        assert got == want
        assert [e.path for e in result.usable] == [
            str(p) for p in files if want[str(p)] is None]
    assert "corrupt" in want[str(broken)] and "too large" in want[
        str(tmp_path / "big.png")]
