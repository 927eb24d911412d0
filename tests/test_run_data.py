import os

import numpy as np

from conftest import make_folder
from conftest import tiny_train_config
from conftest import write_image
from test_backbones import register_tiny_backbone
from tlfast import resolve
from tlfast import run_data
from tlfast.run_folder import RunFolder


def _load(config):
    register_tiny_backbone()
    return run_data.load_data(resolve.resolve(config),
                              RunFolder(config.output_dir), {})


def test_file_names_with_a_bar_keep_their_path(tmp_path):
    # Ids are "relpath|size|mtime"; the relpath may hold "|" itself.
    root = make_folder(tmp_path / "data", {"cats": 6, "dogs": 6})
    write_image(root / "cats" / "c|4.jpg")
    config = tiny_train_config(tmp_path, root)
    data = _load(config)
    entries = data.train.entries + data.validation.entries
    assert len(entries) == 13
    assert "cats/c|4.jpg" in {e.relpath for e in entries}
    assert all(os.path.isfile(e.path) for e in entries)


def test_placeholder_like_images_are_kept_on_request(tmp_path):
    # Line art: two colours, mostly background, as an "image not found"
    # graphic; skipped by default, kept with skip_placeholders=False, on
    # both the loose-file and the prepared path.
    root = make_folder(tmp_path / "data", {"cats": 6, "dogs": 6})
    drawing = np.full((40, 40, 3), 255, np.uint8)
    drawing[10:30, 19:21] = 0
    write_image(root / "cats" / "sketch.png", drawing, fmt="PNG")
    for prepare_tfds in (False, True):
        counts = {}
        for keep in (False, True):
            config = tiny_train_config(
                tmp_path, root, output_dir=str(tmp_path / f"out{prepare_tfds}{keep}"),
                prepare_tfds=prepare_tfds, skip_placeholders=not keep)
            data = _load(config)
            counts[keep] = len(data.train) + len(data.validation)
            sketch = [s for s in data.skipped if s.path.endswith("sketch.png")]
            assert bool(sketch) != keep
            if sketch:
                assert "--noskip_placeholders" in sketch[0].reason
        assert counts == {False: 12, True: 13}, prepare_tfds
