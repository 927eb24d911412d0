#!/usr/bin/env bash
# The README's second command: set up and run the default test suite (what CI runs).
#   scripts/test.sh [extra pytest arguments]
# Makes a fresh virtual environment (.venv-test, or $TLFAST_TEST_VENV), installs tlfast with
# its test extras, and runs the tests that are not marked slow. Tests that need
# ../shared/assets skip cleanly without it.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${TLFAST_TEST_VENV:-.venv-test}"
rm -rf "$venv"
python3 -m venv "$venv"
# shellcheck disable=SC1091
. "$venv/bin/activate"
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[test,jax]"
export TF_CPP_MIN_LOG_LEVEL=2
python -m pytest -q -m "not slow" "$@"
