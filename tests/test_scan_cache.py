"""tlfast.data.scan_cache: append-only verdicts that survive a torn line."""

from tlfast.data import scan_cache


def _record(reason=None, size=10):
    return {"stat": [size, 123], "reason": reason, "options": [100, True]}


def test_appends_and_reads_back_the_last_line_of_each_path(tmp_path):
    path = scan_cache.cache_file(str(tmp_path), "/photos")
    cache = scan_cache.ScanCache(path, 2)
    assert cache.load() == {}
    cache.append({"/photos/a.jpg": _record(), "/photos/b.jpg": _record("bad")})
    cache.append({"/photos/a.jpg": _record("changed", 11)})
    again = scan_cache.ScanCache(path, 2)
    assert again.load() == {"/photos/a.jpg": _record("changed", 11),
                            "/photos/b.jpg": _record("bad")}
    assert again.lines == 3
    # Appending wrote only the new lines: header + 3 records.
    assert len(open(path).read().splitlines()) == 4


def test_a_torn_last_line_is_skipped(tmp_path):
    path = scan_cache.cache_file(str(tmp_path), "/photos")
    scan_cache.ScanCache(path, 2).append({"/photos/a.jpg": _record()})
    with open(path, "a") as f:
        f.write('{"p": "/photos/b.jpg", "s": [1')  # Killed mid-write.
    assert scan_cache.ScanCache(path, 2).load() == {"/photos/a.jpg": _record()}


def test_another_version_is_read_as_empty_and_replaced(tmp_path):
    path = scan_cache.cache_file(str(tmp_path), "/photos")
    scan_cache.ScanCache(path, 1).append({"/photos/a.jpg": _record()})
    newer = scan_cache.ScanCache(path, 2)
    assert newer.load() == {}
    newer.append({"/photos/b.jpg": _record()})
    assert scan_cache.ScanCache(path, 2).load() == {"/photos/b.jpg": _record()}


def test_compacts_when_superseded_lines_dominate(tmp_path):
    path = scan_cache.cache_file(str(tmp_path), "/photos")
    cache = scan_cache.ScanCache(path, 2)
    for i in range(2100):
        cache.append({"/photos/a.jpg": _record(size=i)})
    records = scan_cache.ScanCache(path, 2).load()
    cache.compact(records)
    assert len(open(path).read().splitlines()) == 2
    assert scan_cache.ScanCache(path, 2).load() == records
