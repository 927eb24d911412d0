"""The result rows of the benchmark scripts: one JSON object a line."""

import json
import os


def append(path, row):
    """Prints `row` and appends it to the JSON-lines file `path`."""
    print(json.dumps(row), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
