import os

import pytest

from conftest import make_folder
from conftest import write_image
from tlfast.data import sources


def test_flat_folder_lists_classes_and_files(flat_folder):
    folder = sources.list_image_folder(flat_folder)
    assert folder.class_names == ("cats", "dogs")
    assert not folder.presplit
    files = folder.splits["all"]
    assert len(files) == 24
    assert {f.label for f in files} == {0, 1}
    assert all(os.path.isabs(f.path) for f in files)
    assert files[0].relpath == "cats/img_000.jpg"


def test_split_layout_with_val_folder(split_folder):
    folder = sources.list_image_folder(split_folder)
    assert folder.presplit
    assert set(folder.splits) == {"train", "validation"}
    assert len(folder.splits["train"]) == 11
    assert len(folder.splits["validation"]) == 5
    assert folder.splits["validation"][0].relpath == "val/ants/img_000.jpg"


def test_validation_and_test_folder_names(tmp_path):
    make_folder(tmp_path / "Train", {"a": 2, "b": 2})
    make_folder(tmp_path / "validation", {"a": 1, "b": 1})
    make_folder(tmp_path / "test", {"a": 1})
    folder = sources.list_image_folder(tmp_path)
    assert set(folder.splits) == {"train", "validation", "test"}
    assert len(folder.splits["test"]) == 1


def test_extensions_case_insensitive_spaces_hidden_and_nested(tmp_path):
    write_image(tmp_path / "a" / "UPPER.JPG")
    write_image(tmp_path / "a" / "with space.jpeg")
    write_image(tmp_path / "a" / "nested" / "deep.png", fmt="PNG")
    write_image(tmp_path / "a" / ".hidden.jpg")
    write_image(tmp_path / "a" / ".hidden_dir" / "x.jpg")
    (tmp_path / "a" / "Thumbs.db").write_bytes(b"junk")
    (tmp_path / "a" / ".DS_Store").write_bytes(b"junk")
    write_image(tmp_path / "b" / "one.gif", fmt="GIF")
    write_image(tmp_path / "b" / "two.bmp", fmt="BMP")
    (tmp_path / "b" / "notes.txt").write_text("hello")
    folder = sources.list_image_folder(tmp_path)
    rel = sorted(f.relpath for f in folder.splits["all"])
    assert rel == ["a/UPPER.JPG", "a/nested/deep.png", "a/with space.jpeg",
                   "b/one.gif", "b/two.bmp"]
    reasons = {os.path.basename(s.path): s.reason for s in folder.skipped}
    assert set(reasons) == {"notes.txt", "Thumbs.db", ".DS_Store"}
    assert "unsupported file extension '.txt'" in reasons["notes.txt"]
    assert "operating-system metadata" in reasons["Thumbs.db"]
    assert "operating-system metadata" in reasons[".DS_Store"]


def test_symlink_loop_does_not_hang(tmp_path):
    make_folder(tmp_path, {"a": 2, "b": 2})
    os.symlink(tmp_path / "a", tmp_path / "a" / "loop")
    folder = sources.list_image_folder(tmp_path)
    assert len(folder.splits["all"]) == 4


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="Dataset folder not found"):
        sources.list_image_folder(tmp_path / "nope")


def test_single_class_is_a_clear_error(tmp_path):
    make_folder(tmp_path, {"only": 3})
    with pytest.raises(ValueError, match="at least 2 class sub-folders"):
        sources.list_image_folder(tmp_path)


def test_validation_class_missing_from_train_is_an_error(tmp_path):
    make_folder(tmp_path / "train", {"a": 2, "b": 2})
    make_folder(tmp_path / "val", {"a": 1, "c": 1})
    with pytest.raises(ValueError, match=r"\['c'\]"):
        sources.list_image_folder(tmp_path)


def test_load_tfds_offline_error_names_the_offline_options(tmp_path):
    # No network here (and in most CI): the real download path must fail
    # with a message that says what to do instead.
    with pytest.raises(RuntimeError, match="--data_dir"):
        sources.load_tfds("tf_flowers", data_dir=str(tmp_path), download=False)


def test_file_names_that_are_not_utf8_are_skipped_with_a_reason(tmp_path):
    write_image(tmp_path / "a" / "fine.jpg")
    write_image(tmp_path / "b" / "fine.jpg")
    # "café.jpg" in Latin-1, as zips made on Windows often hold.
    latin1 = os.path.join(os.fsencode(tmp_path / "a"), b"caf\xe9.jpg")
    with open(latin1, "wb") as f:
        f.write(open(tmp_path / "a" / "fine.jpg", "rb").read())
    folder = sources.list_image_folder(tmp_path)
    assert sorted(f.relpath for f in folder.splits["all"]) == [
        "a/fine.jpg", "b/fine.jpg"]
    [skipped] = folder.skipped
    assert skipped.path.endswith("caf\udce9.jpg")
    assert "not valid UTF-8" in skipped.reason


def test_a_class_folder_name_that_is_not_utf8_is_a_clear_error(tmp_path):
    write_image(tmp_path / "a" / "fine.jpg")
    write_image(tmp_path / "b" / "fine.jpg")
    os.rename(tmp_path / "b", os.path.join(os.fsencode(tmp_path), b"v\x94gel"))
    with pytest.raises(ValueError, match=r"UTF-8.*rename.*v\\x94gel"):
        sources.list_image_folder(tmp_path)


def test_images_outside_class_folders_are_reported(tmp_path):
    write_image(tmp_path / "a" / "x.jpg")
    write_image(tmp_path / "b" / "y.jpg")
    write_image(tmp_path / "stray.jpg")
    (tmp_path / "README.txt").write_text("about this data")
    folder = sources.list_image_folder(tmp_path)
    assert len(folder.splits["all"]) == 2
    [skipped] = folder.skipped
    assert skipped.path.endswith("stray.jpg") and "class folder" in skipped.reason
    split = tmp_path / "split"
    write_image(split / "train" / "a" / "x.jpg")
    write_image(split / "train" / "b" / "y.jpg")
    write_image(split / "train" / "lost.png", fmt="PNG")
    assert [os.path.basename(s.path)
            for s in sources.list_image_folder(split).skipped] == ["lost.png"]


def test_a_class_named_train_in_a_flat_folder_says_how_to_fix(tmp_path):
    make_folder(tmp_path, {"train": 2, "boat": 2, "car": 2})
    with pytest.raises(ValueError, match=r"read as split folders because it "
                       r"has a 'train' folder.*rename that folder"):
        sources.list_image_folder(tmp_path)
