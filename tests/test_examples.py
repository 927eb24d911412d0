import numpy as np
import tensorflow_datasets as tfds

from tlfast.data import examples
from tlfast.data import sources


def test_tfds_examples_batched_yields_exactly_the_wanted_indices(monkeypatch):
    # mock_data stands in for the download; the offline probe would refuse it.
    monkeypatch.setattr(sources, "_probe_network", lambda: None)
    with tfds.testing.mock_data(num_examples=12):
        split = examples.TfdsExamples("tf_flowers", "train", image_size=32)
        wanted = [1, 3, 4, 10]
        batches = list(split.batched(wanted, 3))
    assert [int(i) for b in batches for i in np.asarray(b["index"])] == wanted
    images = np.concatenate([b["image"] for b in batches])
    assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8


def _pixel_checksums(ds):
    """Sorted (label, pixel sum) of every image of a batched pixel dataset."""
    return sorted((int(label), int(image.sum())) for batch in ds
                  for image, label in zip(np.asarray(batch["image"]),
                                          np.asarray(batch["label"])))


def _check_shards(split):
    from tlfast.data import pipeline

    config = pipeline.PipelineConfig(image_size=16, batch_size=4, cache="memory")
    whole = _pixel_checksums(split.pixels(config, training=False))
    parts = [_pixel_checksums(split.pixels(config, training=True,
                                           shard=(i, 3))) for i in range(3)]
    # Every image in exactly one shard, shards as even as can be.
    assert sorted(sum(parts, [])) == whole
    assert [len(p) for p in parts] == [len(range(i, len(whole), 3))
                                       for i in range(3)]


def test_shards_of_files_and_prepared_records_partition_the_split(tmp_path):
    from conftest import make_folder
    from tlfast.data import folder_builder
    from tlfast.data import prepare
    from tlfast.data import records

    root = make_folder(tmp_path / "photos", {"a": 6, "b": 5})
    listed = prepare.prepare_folder(root)
    _check_shards(examples.FileExamples(listed.train, 16))
    prepared = folder_builder.prepare_image_folder(
        root, data_root=tmp_path / "tfds", validation_split=0.2)
    _check_shards(records.prepared_examples(prepared, "train", 16))


def test_tfds_shards_partition_the_split(monkeypatch):
    monkeypatch.setattr(sources, "_probe_network", lambda: None)
    with tfds.testing.mock_data(num_examples=10):
        _check_shards(examples.TfdsExamples("tf_flowers", "train",
                                            image_size=16))
