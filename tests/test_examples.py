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
