import csv
import json
import os
import re
import stat

import pytest

from tlfast import atomic
from tlfast.data import split


def test_temporary_files_get_the_permissions_of_a_plain_open(tmp_path):
    fd, path = atomic.mkstemp(str(tmp_path), suffix=".json")
    os.close(fd)
    with open(tmp_path / "plain", "w"):
        pass
    plain = stat.S_IMODE(os.stat(tmp_path / "plain").st_mode)
    assert stat.S_IMODE(os.stat(path).st_mode) == plain
    assert plain & stat.S_IROTH  # 0644 under the usual umask, not 0600.


def test_atomic_writers_leave_files_others_can_read(tmp_path):
    atomic.write_json(str(tmp_path / "a.json"), {"x": 1})
    split.write_split(str(tmp_path / "split.csv"), {"train": []}, ["a", "b"])
    for name in ("a.json", "split.csv"):
        assert os.stat(tmp_path / name).st_mode & stat.S_IROTH, name


def test_replacing_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "model.keras"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.replacing(str(target)) as tmp:
            assert tmp.endswith(".keras")  # Writers choose formats by it.
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["model.keras"]  # No temporary file left.


def test_a_folder_replaces_a_folder(tmp_path):
    (tmp_path / "saved_model").mkdir()
    (tmp_path / "saved_model" / "old.pb").write_text("old")
    with atomic.replacing(str(tmp_path / "saved_model"), folder=True) as tmp:
        with open(os.path.join(tmp, "new.pb"), "w") as f:
            f.write("new")
    assert os.listdir(tmp_path / "saved_model") == ["new.pb"]
    assert os.listdir(tmp_path) == ["saved_model"]


def test_json_text_csv_and_bytes(tmp_path):
    atomic.write_json(str(tmp_path / "sub" / "a.json"), {"b": 1, "a": [1, 2]})
    assert json.loads((tmp_path / "sub" / "a.json").read_text()) == {
        "a": [1, 2], "b": 1}
    atomic.write_csv(str(tmp_path / "a.csv"), ["x", "y"], [[1, "é,"]])
    assert list(csv.reader(open(tmp_path / "a.csv", encoding="utf-8"))) == [
        ["x", "y"], ["1", "é,"]]
    atomic.write_bytes(str(tmp_path / "a.bin"), b"\0\1")
    assert (tmp_path / "a.bin").read_bytes() == b"\0\1"
    with pytest.raises(ValueError, match="mode must be"):
        with atomic.open_atomic(str(tmp_path / "x"), "a"):
            pass


def test_no_module_but_atomic_opens_an_output_for_writing():
    # Every write goes through tlfast.atomic (temporary file, fsync,
    # rename): an `open(..., "w")` elsewhere would be an output a kill can
    # tear. Lock files (os.open in tlfast.locks) are not outputs.
    root = os.path.join(os.path.dirname(__file__), os.pardir, "tlfast")
    pattern = re.compile(r"""\bopen\([^)]*["'][wax]b?\+?["']""")
    offenders = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            if not name.endswith(".py") or name == "atomic.py":
                continue
            text = open(path, encoding="utf-8").read()
            offenders += [f"{path}: {m.group(0)}" for m in pattern.finditer(text)]
    assert not offenders


@pytest.mark.parametrize("name", ["=HYPERLINK(\"http://x\")", "+1", "-rm", "@SUM(A1)"])
def test_csv_cells_that_spreadsheets_run_are_neutralised(tmp_path, name):
    atomic.write_csv(str(tmp_path / "a.csv"), ["path", "p"], [[name, -0.5]])
    rows = list(csv.reader(open(tmp_path / "a.csv", encoding="utf-8")))
    assert rows[1] == ["'" + name, "-0.5"]  # Numbers stay numbers.
    assert atomic.csv_value(rows[1][0]) == name


def test_split_files_round_trip_names_that_look_like_formulas(tmp_path):
    from tlfast.data.sources import FileEntry

    entries = [FileEntry("/d/=a/-1.jpg", "=a/-1.jpg", 0)]
    split.write_split(str(tmp_path / "split.csv"), {"train": entries}, ["=a"])
    assert split.read_split(str(tmp_path / "split.csv")) == {
        "train": [("=a/-1.jpg", 0)]}
