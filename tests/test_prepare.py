import logging

import pytest

from conftest import make_folder
from tlfast.data import prepare
from tlfast.data import scan


def test_flat_folder_is_split(flat_folder, tmp_path):
    data = prepare.prepare_folder(flat_folder, validation_split=0.25,
                                  cache_dir=tmp_path / "c")
    assert not data.presplit
    assert len(data.train) + len(data.validation) == 24
    assert data.validation and data.train


def test_presplit_folder_keeps_its_split(split_folder):
    data = prepare.prepare_folder(split_folder)
    assert data.presplit
    assert len(data.train) == 11 and len(data.validation) == 5


def test_bad_files_are_skipped_and_reported(flat_folder):
    (flat_folder / "cats" / "broken.jpg").write_bytes(b"")
    (flat_folder / "dogs" / "notes.txt").write_text("x")
    data = prepare.prepare_folder(flat_folder)
    reasons = {s.path.rsplit("/", 1)[-1]: s.reason for s in data.skipped}
    assert set(reasons) == {"broken.jpg", "notes.txt"}
    with pytest.raises(scan.BadImagesError, match="broken.jpg"):
        prepare.prepare_folder(flat_folder, strict=True)


def test_class_with_only_bad_files_warns(tmp_path, caplog):
    make_folder(tmp_path, {"a": 8, "b": 8})
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "bad.jpg").write_bytes(b"junk")
    with caplog.at_level(logging.WARNING, logger="tlfast"):
        prepare.prepare_folder(tmp_path)
    assert "Class 'c' has no usable training images" in caplog.text


def test_single_usable_class_is_an_error(tmp_path):
    make_folder(tmp_path, {"a": 8})
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "bad.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="1 class\\(es\\) with usable"):
        prepare.prepare_folder(tmp_path)


def test_no_validation_images_is_an_error(tmp_path):
    make_folder(tmp_path, {"a": 1, "b": 1})
    with pytest.raises(ValueError, match="no usable validation images|1 class"):
        prepare.prepare_folder(tmp_path, validation_split=0.01)


def test_a_validation_folder_of_only_bad_files_is_an_error(split_folder):
    for path in (split_folder / "val").rglob("*.jpg"):
        path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"None of the 5 image\(s\) in the "
                       r"validation folder '.*val' is usable\. e\.g\. "
                       r"'.*\.jpg': empty file"):
        prepare.prepare_folder(split_folder)
