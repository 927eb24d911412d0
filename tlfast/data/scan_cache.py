"""The scan's verdicts on disk: one append-only JSON-lines file per folder.

    <cache_dir>/scan/<sha256(folder path)[:16]>.jsonl
        {"format": "tlfast-scan-cache", "version": 2}          header
        {"p": path, "s": [size, mtime_ns], "r": reason|null, "o": options}
        ...                                                     a later line
                                                                for a path wins

A scan appends what it checked since its last checkpoint, so a checkpoint
costs what it adds: the single JSON file it replaces was rewritten whole
every 5 s, quadratic in the folder's size (a million files: ~100 MB a
rewrite). A line cut short by a kill is skipped when reading; the file is
rewritten without superseded lines once they make up most of it.
"""

import hashlib
import json
import os

from tlfast import atomic

FORMAT = "tlfast-scan-cache"


def cache_file(cache_dir, root):
    """The cache file of the folder `root` under `cache_dir`."""
    digest = hashlib.sha256(os.path.abspath(root).encode()).hexdigest()[:16]
    return os.path.join(cache_dir, "scan", f"{digest}.jsonl")


def _header(version):
    return json.dumps({"format": FORMAT, "version": version}) + "\n"


def _line(path, record):
    return json.dumps({"p": path, "s": record["stat"], "r": record["reason"],
                       "o": record["options"]}) + "\n"


class ScanCache:
    """Reads and appends one folder's verdicts.

    Args:
      path: From `cache_file`.
      version: The verdicts' version (`scan.SCAN_CACHE_VERSION`); a file of
        another version is read as empty and replaced.
    """

    def __init__(self, path, version):
        self.path, self.version = path, version
        self.lines = 0  # Records in the file, superseded ones included.

    def load(self):
        """{path: {"stat", "reason", "options"}}, the last line of each path."""
        records = {}
        try:
            with open(self.path, encoding="utf-8") as f:
                if f.readline() != _header(self.version):
                    return records
                for line in f:
                    try:
                        row = json.loads(line)
                        records[row["p"]] = {"stat": row["s"], "reason": row["r"],
                                             "options": row["o"]}
                    except (ValueError, KeyError, TypeError):
                        continue  # Cut short by a kill: checked again.
                    self.lines += 1
        except (OSError, UnicodeDecodeError):
            return {}
        return records

    def append(self, records):
        """Adds {path: record} lines (a new file, or one of another version,
        is started with the header)."""
        if not records:
            return
        text = "".join(_line(p, r) for p, r in records.items())
        try:
            if self.lines == 0 and not self._has_header():
                atomic.write_text(self.path, _header(self.version) + text)
            else:
                atomic.append_text(self.path, text)
        except OSError as e:
            raise OSError(
                f"Cannot write the scan cache '{self.path}': {e}. Pass a "
                "writable cache_dir (or --cache_dir).") from e
        self.lines += len(records)

    def compact(self, records):
        """Rewrites the file as `records` alone when superseded lines are
        most of it."""
        if self.lines > 2 * len(records) + 1024:
            atomic.write_text(self.path, _header(self.version) + "".join(
                _line(p, r) for p, r in records.items()))
            self.lines = len(records)

    def _has_header(self):
        try:
            with open(self.path, encoding="utf-8") as f:
                return f.readline() == _header(self.version)
        except (OSError, UnicodeDecodeError):
            return False
