#!/usr/bin/env bash
# Installs cnas's engine on a fresh machine: PyPI's torch==2.11.0 wheel (which carries libtorch
# 2.11.0, the version tch 0.24 links against) into .venv, plus the Python packages that tests use
# for reference computations. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.11.0
PY=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi

have=$(.venv/bin/python -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
if [ "$have" != "$TORCH_VERSION" ]; then
  echo "setup: installing torch==$TORCH_VERSION into .venv (about 3 GB)"
  .venv/bin/pip install --quiet --disable-pip-version-check "torch==$TORCH_VERSION"
fi
# Reference and format-check packages used by the tests (onnx, onnxruntime: export checks).
.venv/bin/pip install --quiet --disable-pip-version-check numpy safetensors onnx onnxruntime

# A stable path to libtorch whatever the venv's Python version (.cargo/config.toml points here).
site=$(.venv/bin/python -c 'import torch, pathlib; print(pathlib.Path(torch.__file__).parent)')
ln -sfn "$site" .venv/libtorch
echo "setup: libtorch at $site"
