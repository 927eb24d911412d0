"""tlfast.data.labels_csv: labels from a CSV, judged like a walked folder."""

import os

import numpy as np
import pytest

from conftest import make_folder
from conftest import write_image
from tlfast.data import labels_csv
from tlfast.data import prepare
from tlfast.data import sources


def _write_csv(path, rows, header="path,label"):
    path.write_text("\n".join([header, *(",".join(r) for r in rows)]) + "\n")
    return path


def _listed(root, csv_path):
    """The folder as a labels CSV lists it (single-label)."""
    return sources.list_image_folder(
        root, labels=labels_csv.LabelsCsv(str(csv_path)))


def _csv_of_folder(root, path):
    """A CSV naming every image of a class folder with its folder's label."""
    folder = sources.list_image_folder(root)
    rows = [(e.relpath, folder.class_names[e.label])
            for e in folder.splits["all"]]
    return _write_csv(path, rows)


def test_a_csv_of_a_folder_lists_what_the_folder_lists(flat_folder, tmp_path):
    csv_path = _csv_of_folder(flat_folder, tmp_path / "labels.csv")
    by_folder = sources.list_image_folder(flat_folder)
    by_csv = _listed(flat_folder, csv_path)
    assert by_csv.class_names == by_folder.class_names
    assert sorted(by_csv.splits["all"], key=lambda e: e.relpath) == \
        sorted(by_folder.splits["all"], key=lambda e: e.relpath)
    assert by_csv.skipped == ()


def test_same_split_as_the_folder(flat_folder, tmp_path):
    csv_path = _csv_of_folder(flat_folder, tmp_path / "labels.csv")
    by_folder = prepare.prepare_folder(flat_folder, seed=3)
    by_csv = prepare.prepare_folder(
        flat_folder, seed=3, labels=labels_csv.LabelsCsv(str(csv_path)))
    for split in ("train", "validation"):
        assert ({(e.relpath, e.label) for e in getattr(by_csv, split)} ==
                {(e.relpath, e.label) for e in getattr(by_folder, split)})


def test_labels_need_not_match_folders(tmp_path):
    root = tmp_path / "photos"
    for i in range(6):
        write_image(root / "all" / f"{i}.jpg")
    csv_path = _write_csv(tmp_path / "l.csv", [
        (f"all/{i}.jpg", "odd" if i % 2 else "even") for i in range(6)])
    folder = _listed(root, csv_path)
    assert folder.class_names == ("even", "odd")
    labels = {e.relpath: folder.class_names[e.label]
              for e in folder.splits["all"]}
    assert labels["all/3.jpg"] == "odd" and labels["all/4.jpg"] == "even"


def test_hostile_rows_are_skipped_with_line_and_reason(tmp_path):
    root = make_folder(tmp_path / "data", {"a": 2, "b": 2})
    secret = write_image(tmp_path / "secret.jpg")
    os.mkfifo(root / "a" / "fifo.jpg")
    os.symlink(secret, root / "a" / "out.jpg")
    os.symlink(tmp_path, root / "up")
    (root / "a" / "notes.txt").write_text("x")
    csv_path = _write_csv(tmp_path / "l.csv", [
        ("a/img_000.jpg", "a"), ("b/img_000.jpg", "b"),
        ("../secret.jpg", "a"),          # line 4
        (str(secret), "a"),              # 5: absolute
        ("a/fifo.jpg", "a"),             # 6
        ("a/out.jpg", "a"),              # 7: a link out
        ("up/secret.jpg", "b"),          # 8: a folder link out
        ("a/missing.jpg", "a"),          # 9
        ("a/notes.txt", "a"),            # 10
        ("b/img_001.jpg", ""),           # 11: no label
        ("a/img_000.jpg", "b"),          # 12: twice
    ])
    folder = _listed(root, csv_path)
    assert [e.relpath for e in folder.splits["all"]] == [
        "a/img_000.jpg", "b/img_000.jpg"]
    reasons = [s.reason for s in folder.skipped]
    assert [r.split(":")[0] for r in reasons] == [
        f"l.csv line {n}" for n in range(4, 13)]
    for line, words in [(4, "not a relative path"), (5, "not a relative path"),
                        (6, "FIFO"), (7, "outside the data folder"),
                        (8, "outside the data folder"), (9, "not found"),
                        (10, "unsupported file extension"), (11, "no label"),
                        (12, "first on line 2")]:
        assert words in reasons[line - 4], (line, reasons[line - 4])


def test_header_is_required(flat_folder, tmp_path):
    csv_path = tmp_path / "l.csv"
    csv_path.write_text("cats/img_000.jpg,cats\n")
    with pytest.raises(ValueError, match="header row naming the columns"):
        _listed(flat_folder, csv_path)


def test_columns_in_any_order_and_extra_columns(flat_folder, tmp_path):
    csv_path = tmp_path / "l.csv"
    csv_path.write_text("\ufeffLabel,notes,Path\ncats,x,cats/img_000.jpg\n"
                        "dogs,y,dogs/img_000.jpg\n")
    folder = _listed(flat_folder, csv_path)
    assert [e.relpath for e in folder.splits["all"]] == [
        "cats/img_000.jpg", "dogs/img_000.jpg"]


def test_one_label_is_not_enough(flat_folder, tmp_path):
    csv_path = _write_csv(tmp_path / "l.csv", [("cats/img_000.jpg", "cats")])
    with pytest.raises(ValueError, match="at least 2 labels"):
        _listed(flat_folder, csv_path)


def test_control_characters_in_labels_are_refused(flat_folder, tmp_path):
    csv_path = tmp_path / "l.csv"
    csv_path.write_text('path,label\ncats/img_000.jpg,"ca\x1bts"\n'
                        "dogs/img_000.jpg,dogs\n")
    with pytest.raises(ValueError, match="control characters"):
        _listed(flat_folder, csv_path)


def test_missing_csv_says_which(flat_folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="labels CSV"):
        sources.list_image_folder(
            flat_folder, labels=labels_csv.LabelsCsv(str(tmp_path / "no.csv")))


def test_multi_label_sets_become_classes(flat_folder, tmp_path):
    csv_path = _write_csv(tmp_path / "l.csv", [
        ("cats/img_000.jpg", "cat  indoor"), ("cats/img_001.jpg", "indoor cat"),
        ("dogs/img_000.jpg", "dog"), ("dogs/img_001.jpg", "dog outdoor cat")])
    labels = labels_csv.LabelsCsv(str(csv_path), " ")
    folder = sources.list_image_folder(flat_folder, labels=labels)
    assert folder.class_names == ("cat dog outdoor", "cat indoor", "dog")
    assert [e.label for e in folder.splits["all"]] == [1, 1, 2, 0]
    names, matrix = labels_csv.label_sets(folder.class_names, " ")
    assert names == ("cat", "dog", "indoor", "outdoor")
    np.testing.assert_array_equal(matrix, [[1, 1, 0, 1], [1, 0, 1, 0],
                                           [0, 1, 0, 0]])


def test_fingerprint_follows_the_csv_content(flat_folder, tmp_path):
    from tlfast.data import folder_builder

    csv_path = _csv_of_folder(flat_folder, tmp_path / "labels.csv")
    labels = labels_csv.LabelsCsv(str(csv_path))
    first = folder_builder.folder_config(flat_folder, labels=labels).name
    assert folder_builder.folder_config(flat_folder, labels=labels).name == first
    assert folder_builder.folder_config(flat_folder).name != first
    text = csv_path.read_text().replace("cats/img_000.jpg,cats",
                                        "cats/img_000.jpg,dogs")
    csv_path.write_text(text)
    assert folder_builder.folder_config(flat_folder, labels=labels).name != first


def test_settings_need_a_csv_for_multi_label(tmp_path):
    from tlfast.config import TrainConfig

    with pytest.raises(ValueError, match="multi_label needs labels_csv"):
        TrainConfig(data_dir=str(tmp_path), output_dir=str(tmp_path),
                    multi_label=True)
    assert labels_csv.of_settings(None) is None
    assert labels_csv.of_settings("x.csv", True, ";").delimiter == ";"
    assert labels_csv.of_settings("x.csv", False, ";").delimiter is None


def test_a_split_column_keeps_the_folders_split(split_folder, tmp_path):
    folder = sources.list_image_folder(split_folder)
    rows = [(e.relpath, folder.class_names[e.label], split)
            for split, files in folder.splits.items() for e in files]
    rows.append(("train/ants/img_000.jpg", "ants", "holdout"))  # Repeated.
    csv_path = _write_csv(tmp_path / "l.csv", rows, "path,label,split")
    labels = labels_csv.LabelsCsv(str(csv_path))
    by_csv = prepare.prepare_folder(split_folder, labels=labels)
    by_folder = prepare.prepare_folder(split_folder)
    assert by_csv.presplit
    for split in ("train", "validation"):
        assert ({(e.relpath, e.label) for e in getattr(by_csv, split)} ==
                {(e.relpath, e.label) for e in getattr(by_folder, split)})
    rows[-1] = ("train/ants/img_001.jpg", "ants", "")
    _write_csv(csv_path, rows[:3] + [("val/bees/img_000.jpg", "bees", "")],
               "path,label,split")
    with pytest.raises(ValueError, match="empty on some rows"):
        sources.list_image_folder(split_folder, labels=labels)


def test_an_unknown_split_value_is_a_skip(flat_folder, tmp_path):
    csv_path = _write_csv(tmp_path / "l.csv", [
        ("cats/img_000.jpg", "cats", "train"), ("dogs/img_000.jpg", "dogs", "train"),
        ("dogs/img_001.jpg", "dogs", "holdout")], "path,label,split")
    folder = _listed(flat_folder, csv_path)
    assert len(folder.splits["train"]) == 2
    assert "split is none of" in folder.skipped[0].reason
