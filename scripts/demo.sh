#!/usr/bin/env bash
# The README's first command: set up and train on the embedded default (demo/), offline.
#   scripts/demo.sh [extra tlfast-train flags]
# Makes .venv-demo (once), installs tlfast into it, trains MobileNet-0.25 (ImageNet weights
# shipped in demo/weights) on demo/flowers_mini and says where the outputs are.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${TLFAST_DEMO_VENV:-.venv-demo}"
if [ ! -x "$venv/bin/tlfast-train" ]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -e .
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
out="${TLFAST_DEMO_OUTPUT:-runs/demo}"
"$venv/bin/tlfast-train" --data_dir=demo/flowers_mini --backbone=mobilenet_025 \
  --weights=demo/weights/mobilenet_v1_0.25_224_no_top.weights.h5 \
  --output_dir="$out" --cache_dir="${TLFAST_DEMO_CACHE:-$out/.cache}" "$@"
echo "Report: $out/report.html (model.keras, metrics.json and the rest beside it)."
