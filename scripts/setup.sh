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
# The CUDA compiler and CCCL headers that torch's NCCL headers include (about 20 MB): with them
# build.rs compiles cnas's NCCL backend (csrc/dist_nccl.cpp), also on machines without a GPU.
.venv/bin/pip install --quiet --disable-pip-version-check "nvidia-cuda-crt==13.0.*" "nvidia-cuda-cccl==13.0.*"
# Reference and format-check packages used by the tests.
# tensorboard: its own reader checks the event files cnas writes; onnx, onnxruntime: export checks.
.venv/bin/pip install --quiet --disable-pip-version-check numpy safetensors tensorboard onnx onnxruntime

# Headless Chromium renders `cnas report` pages in the tests (which require it under CI);
# Graphviz lets them check `cnas draw`'s dot layout beside the built-in one. Installed only as
# root where apt-get exists; elsewhere those checks are skipped.
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v dot >/dev/null 2>&1 || missing+=(graphviz)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${missing[*]} (apt-get)"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >/dev/null 2>&1; then
      echo "setup: note: could not install ${missing[*]}; the tests will skip what needs them"
    fi
  else
    echo "setup: note: ${missing[*]} missing (not root or no apt-get); the tests will skip what needs them"
  fi
fi

# A stable path to libtorch whatever the venv's Python version (.cargo/config.toml points here).
site=$(.venv/bin/python -c 'import torch, pathlib; print(pathlib.Path(torch.__file__).parent)')
ln -sfn "$site" .venv/libtorch
echo "setup: libtorch at $site"
