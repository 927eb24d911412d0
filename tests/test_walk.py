"""tlfast.data.walk (through list_image_folder): nothing hostile is read, nothing dropped silently."""

import os

import pytest

from conftest import make_folder
from conftest import write_image
from tlfast.data import sources


def _listed(root, **kwargs):
    folder = sources.list_image_folder(root, **kwargs)
    files = {os.path.relpath(e.path, root) for e in folder.splits["all"]}
    skipped = {os.path.relpath(s.path, root): s.reason for s in folder.skipped}
    return files, skipped


@pytest.fixture
def hostile(tmp_path):
    root = make_folder(tmp_path / "data", {"ants": 2, "bees": 2})
    outside = write_image(tmp_path / "private" / "secret.jpg")
    os.mkfifo(root / "ants" / "fifo.jpg")
    os.symlink("/dev/zero", root / "ants" / "zero.jpg")
    os.symlink(outside, root / "ants" / "outside.jpg")
    os.symlink(root / "bees" / "img_000.jpg", root / "ants" / "inside.jpg")
    os.symlink(root / "nope.jpg", root / "ants" / "broken.jpg")
    os.symlink(tmp_path / "private", root / "bees" / "linked_out")
    (root / "bees" / "more").mkdir()
    write_image(root / "bees" / "more" / "deep.jpg")
    os.symlink(root / "bees", root / "bees" / "more" / "loop")
    return root


def test_hostile_entries_are_skipped_with_their_reasons(hostile):
    files, skipped = _listed(hostile)
    assert files == {"ants/img_000.jpg", "ants/img_001.jpg", "ants/inside.jpg",
                     "bees/img_000.jpg", "bees/img_001.jpg",
                     "bees/more/deep.jpg"}
    assert "not a regular file (a FIFO" in skipped["ants/fifo.jpg"]
    assert "outside the data folder" in skipped["ants/zero.jpg"]
    assert "outside the data folder" in skipped["ants/outside.jpg"]
    assert "--follow_links" in skipped["ants/outside.jpg"]
    assert "broken symbolic link" in skipped["ants/broken.jpg"]
    assert "outside the data folder" in skipped["bees/linked_out"]
    assert "already listed" in skipped["bees/more/loop"]
    assert len(skipped) == 6  # Nothing else, and nothing dropped unsaid.


def test_follow_links_trusts_links_but_never_special_files(hostile):
    files, skipped = _listed(hostile, follow_links=True)
    assert {"ants/outside.jpg", "bees/linked_out/secret.jpg"} <= files
    assert "not a regular file (a character device)" in skipped["ants/zero.jpg"]
    assert "not a regular file (a FIFO" in skipped["ants/fifo.jpg"]


def test_a_linked_class_folder_inside_the_data_folder_is_used(tmp_path):
    root = make_folder(tmp_path / "data", {"ants": 2})
    make_folder(tmp_path / "data" / ".store", {"bees": 2})
    os.symlink(root / ".store" / "bees", root / "bees")
    files, skipped = _listed(root)
    assert files == {"ants/img_000.jpg", "ants/img_001.jpg",
                     "bees/img_000.jpg", "bees/img_001.jpg"} and not skipped


@pytest.mark.parametrize("name", ["bad\nname", "esc\x1b[31m"])
def test_class_names_with_control_characters_are_refused(tmp_path, name):
    make_folder(tmp_path, {"ants": 1, name: 1})
    with pytest.raises(ValueError, match="control characters"):
        sources.list_image_folder(tmp_path)
