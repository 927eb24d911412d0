"""Tests for tlfast/data/records.py: a prepared folder's records read back."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from conftest import prepare_records
from conftest import record_files
from conftest import write_image
from tlfast.data import pipeline
from tlfast.data import records as records_lib


def test_images_equal_decode_of_the_original_bytes(junk_folder, tmp_path):
    write_image(junk_folder / "dogs" / "wide.png", np.full((12, 40, 3), 7, np.uint8)
                + np.arange(40, dtype=np.uint8)[None, :, None], fmt="PNG")
    prepared = prepare_records(junk_folder, tmp_path, validation_split=0.5)
    seen_png = False
    for split in prepared.splits:
        examples = records_lib.prepared_examples(prepared, split, 20, "crop")
        wanted = list(range(len(examples)))[::-1]  # In any order.
        if split == "train":  # And any subset (with the PNG, wherever it is).
            wanted = wanted[::2] + [i for i in wanted[1::2]
                                    if examples.ids[i].startswith("dogs/wide.png")]
        seen = []
        for batch in examples.batched(wanted, batch_size=3):
            assert batch["image"].dtype == tf.uint8
            for image, label, index in zip(batch["image"], batch["label"],
                                           batch["index"].numpy()):
                relpath = examples.ids[index].split("|")[0]
                data = tf.io.read_file(str(junk_folder / relpath))
                expected = pipeline.decode_image(data, 20, "crop")
                np.testing.assert_array_equal(image.numpy(), expected.numpy())
                assert int(label) == examples.labels[index]
                seen.append(int(index))
                seen_png |= relpath.endswith(".png")
        assert sorted(seen) == sorted(wanted)
    assert seen_png
    config = pipeline.PipelineConfig(image_size=20, batch_size=4, resize="crop",
                                     cache="none")
    batches = list(examples.pixels(config, training=False))
    labels = np.concatenate([b["label"].numpy() for b in batches])
    np.testing.assert_array_equal(labels, examples.labels)


def test_records_equal_what_tfds_reads(junk_folder, tmp_path, monkeypatch):
    # records() parses the TFRecords itself, in batches; it must give what
    # TFDS's own reader gives, in the same order, across batch boundaries.
    monkeypatch.setattr(records_lib, "_PARSE_BATCH", 2)
    for i in range(3):
        write_image(junk_folder / "cats" / f"extra_{i}.jpg")
    prepared = prepare_records(junk_folder, tmp_path, validation_split=0.25)
    for split in prepared.splits:
        examples = records_lib.prepared_examples(prepared, split)
        ours = list(examples.records().as_numpy_iterator())
        theirs = list(prepared.builder.as_dataset(
            split=split, shuffle_files=False,
            read_config=records_lib.READ_CONFIG,
            decoders={"image": tfds.decode.SkipDecoding()}).as_numpy_iterator())
        assert len(ours) == len(theirs) == len(examples) > 0
        for a, b in zip(ours, theirs):
            assert a.keys() == b.keys()
            for key in a:
                assert a[key] == b[key], key
        assert [r["id"].decode() for r in ours] == examples.ids


def test_damaged_records_raise_instead_of_dropping_or_hanging(junk_folder,
                                                              tmp_path):
    prepared = prepare_records(junk_folder, tmp_path)
    examples = records_lib.prepared_examples(prepared, "train", 32)
    shard = os.path.join(prepared.data_dir, record_files(prepared)[0])
    data = open(shard, "rb").read()
    with open(shard, "wb") as f:
        f.write(data[:len(data) // 2])
    # A read error, or (cut just after a record) too few records.
    with pytest.raises((tf.errors.DataLossError,
                        tf.errors.FailedPreconditionError)):
        for _ in records_lib.decode_records(examples.records(), 32):
            pass
    os.remove(shard)
    with pytest.raises(FileNotFoundError, match="incomplete.*run again"):
        examples.records()


def test_chunk_after_chunk_reads_the_records_once(junk_folder, tmp_path,
                                                  monkeypatch):
    # Extraction asks for its examples chunk by chunk: one pass over the
    # records in all, not one per chunk (that was quadratic).
    prepared = prepare_records(junk_folder, tmp_path)
    examples = records_lib.prepared_examples(prepared, "train", 8)
    passes = []
    real = records_lib.PreparedExamples.records
    monkeypatch.setattr(records_lib.PreparedExamples, "records",
                        lambda self, *a, **k: passes.append(1) or real(self, *a, **k))
    n = len(examples)
    chunks = [list(range(i, min(i + 3, n))) for i in range(0, n, 3)]
    got = [int(i) for chunk in chunks for b in examples.batched(chunk, 2)
           for i in b["index"]]
    assert got == list(range(n)) and len(passes) == 1
    whole = np.concatenate([b["image"] for b in examples.batched(range(n), 4)])
    again = np.concatenate([b["image"] for chunk in chunks
                            for b in examples.batched(chunk, 2)])
    np.testing.assert_array_equal(whole, again)
    assert len(passes) == 3  # Back to the start: a new pass, then another.
