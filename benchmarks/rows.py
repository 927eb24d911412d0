"""The result rows of the benchmark scripts: one JSON object a line.

Also what the scripts that write them share: the repository root, the
commit a row was measured at, and the flags naming the shared assets, the
results file and the scratch folder.
"""

import json
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def append(path, row):
    """Prints `row` and appends it to the JSON-lines file `path`."""
    print(json.dumps(row), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def git_commit():
    """The short hash of the checkout's HEAD, or "" outside git."""
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def define_asset_flags(results_name, work_dir):
    """--assets (../shared/assets), --out (results/<results_name>) and
    --work_dir (`work_dir`), for a script measuring on the shared assets."""
    from absl import flags

    flags.DEFINE_string("assets", os.path.join(os.path.dirname(ROOT), "shared",
                                               "assets"), "The shared assets.")
    flags.DEFINE_string("out", os.path.join(ROOT, "benchmarks", "results",
                                            results_name), "JSON lines.")
    flags.DEFINE_string("work_dir", work_dir, "Caches and outputs.")
