#!/usr/bin/env bash
# Gets a lent GPU machine's call ready (see scripts/device/gpu_search.sh): release builds of
# `cnas` and of the `bench_search` and `bench_step` examples and one CIFAR-10 batch file in gpu/, a folder git
# ignores (through .git/info/exclude) that the device tool carries:
#   scripts/device/prepare.sh [CIFAR10_DIR]      (default ../shared/data/cifar10)
# then call the device with command `scripts/device/gpu_search.sh` and carry ["gpu"].
set -euo pipefail
cd "$(dirname "$0")/../.."
data=${1:-../shared/data/cifar10}
batch=$(find -L "$data" -name data_batch_1.bin | head -1)
[ -n "$batch" ] || { echo "no data_batch_1.bin under $data" >&2; exit 2; }
export LIBTORCH=${LIBTORCH:-$PWD/.venv/libtorch}
cargo build --release --bin cnas --example bench_search --example bench_step
mkdir -p gpu
cp target/release/cnas target/release/examples/bench_search target/release/examples/bench_step gpu/
cp "$batch" gpu/data_batch_1.bin
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qx '/gpu/' "$exclude" 2>/dev/null || echo '/gpu/' >>"$exclude"
du -sh gpu
