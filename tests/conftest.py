"""Shared fixtures: tiny synthetic image folders and the real shared assets."""

import io
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

SHARED_ASSETS = Path(__file__).resolve().parents[2] / "shared" / "assets"


def tiny_train_config(tmp_path, data_dir, **overrides):
    """A `TrainConfig` for the tiny test backbone on 32-px images.

    Outputs go to tmp_path/out, caches to tmp_path/cache, no augmented
    views; `overrides` replaces any field.
    """
    from tlfast import training

    fields = dict(data_dir=str(data_dir), output_dir=str(tmp_path / "out"),
                  cache_dir=str(tmp_path / "cache"), backbone="tiny_test",
                  weights=None, image_size=32, epochs=3, batch_size=8,
                  # No augmented views by default (the library's default
                  # caches 2 for small sets): tests count forwarded images.
                  augment_views=0)
    fields.update(overrides)
    return training.TrainConfig(**fields)


@pytest.fixture
def read_only_storage(monkeypatch):
    """Makes every `os.open` for writing fail as on a read-only mount
    (root ignores file permissions, so chmod cannot stand in for it)."""
    real_open = os.open

    def read_only(path, flags, *args):
        if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            raise OSError(30, "Read-only file system", path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)


def assets_path(*parts):
    """A path under ../shared/assets, or skip the test when it is absent."""
    path = SHARED_ASSETS.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared asset not available: {path}")
    return path


def noise_image(size=(24, 32), tint=0, seed=0):
    """uint8 [H, W, 3] noise with a class-dependent colour cast."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 200, size=(*size, 3)).astype(np.int32)
    image[..., tint % 3] += 55
    return image.astype(np.uint8)


def encode(image, fmt="JPEG", **kwargs):
    """Encodes a uint8 array with PIL (format names as PIL spells them)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def write_image(path, image=None, fmt="JPEG", **kwargs):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if image is None:
        image = noise_image(seed=hash(path.name) % 1000)
    path.write_bytes(encode(image, fmt, **kwargs))
    return path


def make_folder(root, counts, size=(24, 32), ext=".jpg"):
    """Writes root/<class>/<i><ext> noise images; counts: {class: n}."""
    root = Path(root)
    for label, (name, n) in enumerate(sorted(counts.items())):
        for i in range(n):
            write_image(root / name / f"img_{i:03d}{ext}",
                        noise_image(size, tint=label, seed=1000 * label + i))
    return root


@pytest.fixture
def flat_folder(tmp_path):
    """Two classes of 12 tiny JPEGs each, no split folders."""
    return make_folder(tmp_path / "flat", {"cats": 12, "dogs": 12})


@pytest.fixture
def junk_folder(tmp_path):
    """Two classes of 10 and 8 images, one junk '.jpg' that the scan skips."""
    root = make_folder(tmp_path / "photos", {"cats": 10, "dogs": 8})
    (root / "cats" / "junk.jpg").write_bytes(b"not an image")
    return root


def prepare_records(folder, tmp_path, **kwargs):
    """`prepare_image_folder` with its records and scan cache in `tmp_path`."""
    from tlfast.data import folder_builder

    return folder_builder.prepare_image_folder(
        folder, data_root=tmp_path / "tfds", cache_dir=tmp_path / "cache",
        **kwargs)


def record_files(prepared):
    """Names of a `PreparedImageFolder`'s TFRecord shards, sorted."""
    return sorted(name for name in os.listdir(prepared.data_dir)
                  if ".tfrecord-" in name)


@pytest.fixture
def split_folder(tmp_path):
    """train/ and val/ sub-folders, two classes."""
    root = tmp_path / "split"
    make_folder(root / "train", {"ants": 6, "bees": 5})
    make_folder(root / "val", {"ants": 3, "bees": 2})
    return root


def jpeg_with_orientation(image, value, big_endian=False):
    """JPEG bytes of `image` with EXIF Orientation `value`."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = value
    exif[0x010F] = "tlfast test camera"  # Another tag before it.
    data = exif.tobytes()
    if big_endian:  # PIL writes little-endian; rewrite the TIFF block.
        pytest.skip("PIL writes little-endian EXIF only")
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", exif=data, quality=95)
    return buffer.getvalue()
