import os

from conftest import make_folder
from conftest import tiny_train_config
from conftest import write_image
from tlfast import run_data


def test_file_names_with_a_bar_keep_their_path(tmp_path):
    # Ids are "relpath|size|mtime"; the relpath may hold "|" itself.
    root = make_folder(tmp_path / "data", {"cats": 6, "dogs": 6})
    write_image(root / "cats" / "c|4.jpg")
    config = tiny_train_config(tmp_path, root)
    os.makedirs(config.output_dir)
    data = run_data.load_data(config, 32, {})
    entries = data.train.entries + data.validation.entries
    assert len(entries) == 13
    assert "cats/c|4.jpg" in {e.relpath for e in entries}
    assert all(os.path.isfile(e.path) for e in entries)
