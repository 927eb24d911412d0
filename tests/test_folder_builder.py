import dataclasses
import json
import os

import numpy as np
import pytest

from conftest import make_folder
from conftest import prepare_records
from conftest import record_files
from conftest import write_image
from tlfast import locks
from tlfast.data import prepare
from tlfast.data import folder_builder
from tlfast.data import records as records_lib
from tlfast.data import scan
from tlfast.data import sources

try:
    import dill  # noqa: F401  (tfds.testing imports it)
except ImportError:
    def test_tfds_builder_checks():
        pytest.skip("tfds.testing needs dill: pip install dill")
else:
    # TFDS's own builder checks on dummy_data/, collected here by pytest.
    from tlfast.data.image_folder import image_folder_dataset_builder_test

    TlfastImageFolderTest = image_folder_dataset_builder_test.TlfastImageFolderTest


def _file_id(root, relpath):
    st = os.stat(os.path.join(root, relpath))
    return f"{relpath}|{st.st_size}|{st.st_mtime_ns}"


def test_flat_folder_is_scanned_split_and_stored(junk_folder, tmp_path):
    prepared = prepare_records(junk_folder, tmp_path, validation_split=0.25, seed=3)
    expected = prepare.prepare_folder(junk_folder, validation_split=0.25, seed=3)
    assert not prepared.reused
    assert prepared.class_names == ("cats", "dogs")
    assert prepared.splits == ("train", "validation")
    assert prepared.num_examples == {"train": len(expected.train),
                                     "validation": len(expected.validation)}
    assert [os.path.basename(s.path) for s in prepared.skipped] == ["junk.jpg"]
    assert "unrecognised file header" in prepared.skipped[0].reason
    assert prepared.data_dir.startswith(str(tmp_path / "tfds" /
                                            "tlfast_image_folder" / "photos_"))
    for split, entries in (("train", expected.train),
                           ("validation", expected.validation)):
        examples = records_lib.prepared_examples(prepared, split, 16)
        # Same split as prepare_folder's, ids as FileExamples spells them.
        assert sorted(examples.ids) == sorted(
            _file_id(junk_folder, e.relpath) for e in entries)
        labels = {e.relpath: e.label for e in entries}
        assert [labels[i.split("|")[0]] for i in examples.ids] == list(examples.labels)


def test_unchanged_folder_is_reused(junk_folder, tmp_path, caplog):
    first = prepare_records(junk_folder, tmp_path)
    shards = {n: os.stat(os.path.join(first.data_dir, n)).st_mtime_ns
              for n in record_files(first)}
    with caplog.at_level("INFO", logger="tlfast"):
        second = prepare_records(junk_folder, tmp_path)
    assert second.reused and not first.reused
    assert "Reusing prepared data" in caplog.text
    assert second.data_dir == first.data_dir
    assert {n: os.stat(os.path.join(second.data_dir, n)).st_mtime_ns
            for n in record_files(second)} == shards
    assert second.num_examples == first.num_examples
    assert second.skipped == first.skipped
    assert second.index["train"][0] == first.index["train"][0]


def test_a_replaced_preparation_in_use_is_removed_once_free(junk_folder, tmp_path):
    import fcntl

    first = prepare_records(junk_folder, tmp_path)
    # Another job reading the first preparation: its shared lock.
    reader = os.open(os.path.dirname(first.data_dir) + ".use", os.O_RDONLY)
    fcntl.flock(reader, fcntl.LOCK_SH)
    try:
        write_image(junk_folder / "cats" / "added.jpg")
        second = prepare_records(junk_folder, tmp_path)
        assert not second.reused and os.path.exists(first.data_dir)
    finally:
        os.close(reader)
    third = prepare_records(junk_folder, tmp_path)
    assert third.reused and not os.path.exists(first.data_dir)


def test_touched_and_added_files_are_prepared_again(junk_folder, tmp_path):
    first = prepare_records(junk_folder, tmp_path)
    touched = junk_folder / "dogs" / "img_000.jpg"
    st = os.stat(touched)
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = prepare_records(junk_folder, tmp_path)
    assert not second.reused
    assert second.fingerprint != first.fingerprint
    assert not os.path.exists(first.data_dir)  # The replaced copy is gone.
    ids = [i for split in second.splits for i in second.index[split][0]]
    assert _file_id(junk_folder, "dogs/img_000.jpg") in ids
    write_image(junk_folder / "cats" / "new.jpg")
    third = prepare_records(junk_folder, tmp_path)
    assert not third.reused
    assert sum(third.num_examples.values()) == sum(second.num_examples.values()) + 1
    assert prepare_records(junk_folder, tmp_path).reused
    # Other split settings are another preparation, kept beside this one.
    other = prepare_records(junk_folder, tmp_path, seed=1)
    assert not other.reused and other.data_dir != third.data_dir
    assert prepare_records(junk_folder, tmp_path).reused


def test_presplit_folder_keeps_its_splits(tmp_path):
    root = tmp_path / "split"
    make_folder(root / "train", {"ants": 6, "bees": 5})
    make_folder(root / "val", {"ants": 3, "bees": 2})
    make_folder(root / "test", {"ants": 2, "bees": 2})
    (root / "test" / "bees" / "empty.jpg").write_bytes(b"")
    prepared = prepare_records(root, tmp_path)
    assert prepared.splits == ("train", "validation", "test")
    assert prepared.num_examples == {"train": 11, "validation": 5, "test": 4}
    assert [os.path.basename(s.path) for s in prepared.skipped] == ["empty.jpg"]
    test = records_lib.prepared_examples(prepared, "test", 8)
    assert all(i.startswith("test/") for i in test.ids)
    with pytest.raises(ValueError, match="no split 'holdout'"):
        records_lib.prepared_examples(prepared, "holdout", 8)


def test_strict_refuses_bad_files_even_when_reusing(junk_folder, tmp_path):
    with pytest.raises(scan.BadImagesError, match="junk.jpg"):
        prepare_records(junk_folder, tmp_path, strict=True)
    assert not prepare_records(junk_folder, tmp_path).reused
    with pytest.raises(scan.BadImagesError, match="junk.jpg"):
        prepare_records(junk_folder, tmp_path, strict=True)


def test_a_stale_index_is_rebuilt_or_caught(junk_folder, tmp_path):
    prepared = prepare_records(junk_folder, tmp_path)
    path = os.path.join(prepared.data_dir, folder_builder.INDEX_FILE)
    with open(path) as f:
        index = json.load(f)
    index["splits"]["train"]["ids"].pop()
    with open(path, "w") as f:
        json.dump(index, f)
    # Counts disagree with the records: the index is read again from them.
    ids, labels = prepare_records(junk_folder, tmp_path).index["train"]
    assert ids == prepared.index["train"][0]
    np.testing.assert_array_equal(labels, prepared.index["train"][1])
    ids = list(ids)
    ids[0], ids[1] = ids[1], ids[0]
    swapped = dataclasses.replace(prepared, index={"train": (tuple(ids), labels)})
    examples = records_lib.prepared_examples(swapped, "train", 8)
    with pytest.raises(ValueError, match="index disagree"):
        list(examples.batched(range(len(examples)), 4))


_HOLD_AND_WAIT = """
import sys, time
sys.path[:0] = [{repo!r}]
from tlfast.data import folder_builder
folder_builder.prepare_image_folder({folder!r}, data_root={root!r},
                                    cache_dir={cache!r})
print("ready", flush=True)
time.sleep(60)
"""


def test_a_preparation_another_process_reads_is_not_removed(junk_folder, tmp_path):
    import subprocess
    import sys

    first = prepare_records(junk_folder, tmp_path)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    reader = subprocess.Popen(
        [sys.executable, "-c", _HOLD_AND_WAIT.format(
            repo=repo, folder=str(junk_folder), root=str(tmp_path / "tfds"),
            cache=str(tmp_path / "cache"))],
        stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "ready"
        touched = junk_folder / "dogs" / "img_000.jpg"
        st = os.stat(touched)
        os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        second = prepare_records(junk_folder, tmp_path)
        assert not second.reused
        # Still being read by the other process: kept.
        assert record_files(first)
    finally:
        reader.kill()
        reader.wait()
    write_image(junk_folder / "cats" / "new.jpg")
    prepare_records(junk_folder, tmp_path)  # Nobody reads it now: removed.
    assert not os.path.exists(first.data_dir)


def test_prepared_data_is_reused_from_read_only_storage(junk_folder, tmp_path,
                                                        request, monkeypatch):
    prepare_records(junk_folder, tmp_path)
    monkeypatch.setattr(locks, "_HELD", {})
    request.getfixturevalue("read_only_storage")
    again = prepare_records(junk_folder, tmp_path)
    assert again.reused and sum(again.num_examples.values()) == 18


def test_a_file_gone_since_the_scan_is_left_out_of_the_records(tmp_path):
    from tlfast.data.image_folder import image_folder_dataset_builder as b

    root = make_folder(tmp_path / "d", {"a": 2, "b": 1})
    entries = sources.list_image_folder(root).splits["all"]
    os.remove(entries[1].path)
    written = list(b.TlfastImageFolder._generate_examples(None, entries, 10**6,
                                                          {}))
    assert [key for key, _ in written] == [entries[0].relpath, entries[2].relpath]


def test_records_hold_the_bytes_the_scan_checked(tmp_path):
    from tlfast.data.image_folder import image_folder_dataset_builder as b

    root = make_folder(tmp_path / "d", {"a": 3, "b": 2})
    listed = sources.list_image_folder(root).splits["all"]
    result = scan.scan_files(listed, keep_bytes=10**6)
    assert set(result.images) == {e.path for e in listed}
    checked = {p: f.data for p, f in result.images.items()}
    ids = {e.path: sources.example_id(e) for e in listed}
    for entry in listed:  # Replaced after the scan: the records keep what it saw.
        write_image(entry.path, fmt="PNG")
    written = dict(b.TlfastImageFolder._generate_examples(
        None, result.usable, 10**6, dict(result.images)))
    for entry in result.usable:
        assert written[entry.relpath]["image"] == checked[entry.path]
        assert written[entry.relpath]["id"] == ids[entry.path]
    budget = len(checked[listed[0].path]) + 1  # Room for one file.
    assert len(scan.scan_files(listed, keep_bytes=budget).images) <= 1


def test_a_reader_marks_the_preparation_in_use_before_letting_go_of_it(
        junk_folder, tmp_path, monkeypatch):
    # Between releasing ".lock" and holding ".use" another process could
    # find the preparation free and delete it: the reader's ".use" hold must
    # be taken while it still holds ".lock".
    from tlfast import locks

    seen = []
    real_hold = locks.hold

    def hold(path, shared=False):
        if path.endswith(".use"):
            with locks.lock(path[:-len(".use")] + ".lock",
                            blocking=False) as free:
                seen.append(free)
        return real_hold(path, shared)

    monkeypatch.setattr(folder_builder.locks, "hold", hold)
    prepare_records(junk_folder, tmp_path)
    prepare_records(junk_folder, tmp_path)  # A reuse too.
    assert seen == [False, False]


def test_lock_files_of_a_removed_preparation_stay(junk_folder, tmp_path):
    first = prepare_records(junk_folder, tmp_path)
    write_image(junk_folder / "cats" / "added.jpg")
    prepare_records(junk_folder, tmp_path)
    assert not os.path.exists(first.data_dir)
    base = os.path.dirname(first.data_dir)
    assert os.path.exists(base + ".lock") and os.path.exists(base + ".use")


def test_a_preparation_lists_the_folder_once(junk_folder, tmp_path,
                                             monkeypatch):
    calls = []
    real = sources.list_image_folder
    monkeypatch.setattr(sources, "list_image_folder",
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    first = prepare_records(junk_folder, tmp_path)
    assert len(calls) == 1 and not first.reused
    listing = real(junk_folder)
    calls.clear()
    again = prepare_records(junk_folder, tmp_path / "other", listing=listing)
    assert calls == [] and again.fingerprint == first.fingerprint
    assert again.num_examples == first.num_examples


def test_a_file_changed_while_preparing_is_said(junk_folder, tmp_path, caplog):
    changed = junk_folder / "dogs" / "img_000.jpg"

    def progress(done, total):
        if done == total:  # The scan's last report: edit a scanned file.
            st = os.stat(changed)
            os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))

    with caplog.at_level("WARNING", logger="tlfast"):
        prepared = prepare_records(junk_folder, tmp_path, progress=progress)
    assert "changed while it was being prepared" in caplog.text
    assert not prepare_records(junk_folder, tmp_path).reused  # Prepared anew.
    assert not prepared.reused


def test_the_record_writer_spills_to_disk_past_its_memory_cap(junk_folder, tmp_path,
                                                              monkeypatch):
    # TFDS's writer held up to 1 GB of records in RAM (1M 48-px JPEGs: a
    # 2,583 MiB peak, 2,182 capped). Spilled records come out the same.
    from tensorflow_datasets.core import shuffle

    whole = prepare_records(junk_folder, tmp_path / "a")
    spilled, default = [], shuffle.MAX_MEM_BUFFER_SIZE
    real = shuffle.Shuffler._add_to_bucket

    def add_to_bucket(self, *args):
        spilled.append(shuffle.MAX_MEM_BUFFER_SIZE)
        return real(self, *args)
    monkeypatch.setattr(shuffle.Shuffler, "_add_to_bucket", add_to_bucket)
    monkeypatch.setattr(folder_builder, "_WRITER_BUFFER_BYTES", 1)
    capped = prepare_records(junk_folder, tmp_path / "b")
    assert spilled and set(spilled) == {1}
    assert shuffle.MAX_MEM_BUFFER_SIZE == default  # Restored.
    for split in whole.splits:
        ours = list(records_lib.prepared_examples(capped, split).records()
                    .as_numpy_iterator())
        theirs = list(records_lib.prepared_examples(whole, split).records()
                      .as_numpy_iterator())
        assert [r["id"] for r in ours] == [r["id"] for r in theirs]
        assert [r["image"] for r in ours] == [r["image"] for r in theirs]
