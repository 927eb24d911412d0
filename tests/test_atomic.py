import os
import stat

from tlfast import atomic
from tlfast.data import scan
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
    scan.write_json_atomic(str(tmp_path / "a.json"), {"x": 1})
    split.write_split(str(tmp_path / "split.csv"), {"train": []}, ["a", "b"])
    for name in ("a.json", "split.csv"):
        assert os.stat(tmp_path / name).st_mode & stat.S_IROTH, name
