import pytest

from conftest import make_folder
from tlfast.data import sources
from tlfast.data import split


def _entries(n_per_class, classes=2):
    return [sources.FileEntry(f"/x/c{c}/{i}.jpg", f"c{c}/{i}.jpg", c)
            for c in range(classes) for i in range(n_per_class)]


def test_fraction_is_respected_per_class():
    splits = split.split_entries(_entries(1000), validation_split=0.2, seed=0)
    counts = split.split_counts(splits, 2)
    for per_class in counts["validation"]:
        assert 160 <= per_class <= 240
    assert sum(counts["train"]) + sum(counts["validation"]) == 2000


def test_adding_files_never_moves_existing_ones():
    before = split.split_entries(_entries(200), 0.25, seed=3)
    after = split.split_entries(_entries(260), 0.25, seed=3)
    for side in ("train", "validation"):
        old = {e.relpath for e in before[side]}
        new = {e.relpath for e in after[side]}
        assert old <= new


def test_adding_a_class_never_moves_existing_files():
    # A new class that sorts first shifts every label index; the side of a
    # file must not depend on it.
    before = split.split_entries(_entries(100), 0.25, seed=0)
    shifted = [sources.FileEntry(e.path, e.relpath, e.label + 1)
               for e in _entries(100)]
    added = [sources.FileEntry(f"/x/aaa/{i}.jpg", f"aaa/{i}.jpg", 0)
             for i in range(30)]
    after = split.split_entries(added + shifted, 0.25, seed=0)
    for side in ("train", "validation"):
        assert {e.relpath for e in before[side]} <= {e.relpath for e in after[side]}


@pytest.mark.parametrize("size", [1, 2, 3])
def test_a_tiny_class_keeps_a_training_and_a_validation_image(size):
    for seed in range(200):
        entries = _entries(50) + [
            sources.FileEntry(f"/x/tiny/{i}.jpg", f"tiny/{i}.jpg", 2)
            for i in range(size)]
        counts = split.split_counts(split.split_entries(entries, 0.2, seed), 3)
        assert counts["train"][2] >= 1, seed
        assert counts["validation"][2] >= (1 if size >= 2 else 0), seed
        assert counts["train"][2] + counts["validation"][2] == size


def test_same_seed_same_split_other_seed_other_split():
    a = split.split_entries(_entries(100), 0.2, seed=1)
    b = split.split_entries(_entries(100), 0.2, seed=1)
    c = split.split_entries(_entries(100), 0.2, seed=2)
    assert a == b
    assert a["validation"] != c["validation"]


@pytest.mark.parametrize("bad", [0, 1, -0.1, 1.5])
def test_bad_fraction(bad):
    with pytest.raises(ValueError, match="validation_split"):
        split.split_entries(_entries(3), bad)


def test_write_and_read_split(tmp_path):
    make_folder(tmp_path / "data", {"a b": 5, "c": 5})
    folder = sources.list_image_folder(tmp_path / "data")
    splits = split.split_entries(folder.splits["all"], 0.4, seed=0)
    path = tmp_path / "out" / "split.csv"
    split.write_split(path, splits, folder.class_names)
    back = split.read_split(path)
    for side, entries in splits.items():
        assert back.get(side, []) == [(e.relpath, e.label) for e in entries]


def test_read_split_saved_again_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "split.csv"
    path.write_bytes("\ufeffsplit,label,class,relpath\r\ntrain,0,a,a/\u00e9.jpg\r\n"
                     .encode("utf-8"))
    assert split.read_split(path) == {"train": [("a/\u00e9.jpg", 0)]}


def test_composed_and_decomposed_names_split_alike():
    import unicodedata

    names = [f"caf\u00e9/{i}_\u00e9t\u00e9.jpg" for i in range(200)]
    composed = [split.hash_fraction(n) for n in names]
    decomposed = [split.hash_fraction(unicodedata.normalize("NFD", n))
                  for n in names]
    assert composed == decomposed
