import errno
import fcntl
import os

import pytest

from tlfast import locks


def _held_elsewhere(path, mode=fcntl.LOCK_EX):
    """A flock as another process would hold it (a separate open file)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, mode)
    return fd


def test_exclusive_lock_excludes_and_shared_locks_share(tmp_path):
    path = str(tmp_path / ".lock")
    fd = _held_elsewhere(path, fcntl.LOCK_SH)
    try:
        with locks.lock(path, shared=True, blocking=False) as held:
            assert held
        with locks.lock(path, blocking=False) as held:
            assert not held
    finally:
        os.close(fd)
    with locks.lock(path, blocking=False) as held:
        assert held
    assert os.path.exists(path)  # Never deleted: others may wait on it.


def test_waiting_is_said_and_a_timeout_is_a_clear_error(tmp_path, caplog):
    path = str(tmp_path / ".lock")
    fd = _held_elsewhere(path)
    try:
        with caplog.at_level("INFO", logger="tlfast"):
            with pytest.raises(TimeoutError, match="Waited 0.3 s for the lock"):
                with locks.lock(path, waiting_message="Waiting for X",
                                timeout=0.3):
                    pass
        assert "Waiting for X" in caplog.text
    finally:
        os.close(fd)


def test_a_file_system_without_flock_says_how_to_go_on(tmp_path, monkeypatch,
                                                      caplog):
    def no_locks(fd, mode):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(locks.fcntl, "flock", no_locks)
    monkeypatch.setattr(locks, "_warned", [])
    monkeypatch.delenv(locks.UNLOCKED_ENV, raising=False)
    with pytest.raises(OSError, match="TLFAST_UNLOCKED=1"):
        with locks.lock(str(tmp_path / ".lock")):
            pass
    monkeypatch.setenv(locks.UNLOCKED_ENV, "1")
    with caplog.at_level("WARNING", logger="tlfast"):
        with locks.lock(str(tmp_path / ".lock")) as held:
            assert held
    assert "not supported" in caplog.text


def test_read_only_storage_reads_unlocked(tmp_path, read_only_storage):
    with locks.lock(str(tmp_path / ".lock")) as held:
        assert held
    assert not locks.hold(str(tmp_path / ".lock2"))


def test_hold_keeps_the_lock_until_released(tmp_path):
    path = str(tmp_path / ".use")
    assert locks.hold(path, shared=True) and locks.hold(path, shared=True)
    with locks.lock(path, blocking=False) as held:
        # flock locks belong to open files: this process's second open file
        # conflicts with its own held one, as another process's would.
        assert not held
    locks.release(path)
    with locks.lock(path, blocking=False) as held:
        assert held
