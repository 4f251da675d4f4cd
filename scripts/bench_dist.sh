#!/usr/bin/env bash
# Data-parallel scaling of `cnas train` on one machine's CPU (BENCHMARKS.md, issue 6): one
# process with 2 threads, one with 1 thread, two processes with 1 thread each (`cnas launch`),
# alternating, ROUNDS rounds, 32 images per process and step (--batch-size is the global batch:
# 64 for the two processes). Prints images/s per epoch as metrics.jsonl reports them.
# Usage: scripts/bench_dist.sh [ROUNDS] (after `cargo build --release`).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
cnas=target/release/cnas
data=${DATA:-../shared/data/cifar10}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
args=(--quiet --device cpu train --arch CNAS --data "$data" --init-channels 16 --layers 8
  --max-images 1024 --epochs 2 --max-eval-images 64 --workers 1)
ips() {
  python3 -c 'import json, sys; print(" ".join("%.1f" % json.loads(l)["images_per_sec"] for l in open(sys.argv[1])))' "$1/metrics.jsonl"
}
for round in $(seq "$rounds"); do
  rm -rf "$out"/*
  echo "round $round ($(uptime | sed 's/.*load/load/'))"
  OMP_NUM_THREADS=2 "$cnas" "${args[@]}" --batch-size 32 -o "$out/a" >/dev/null 2>&1
  echo "  1 process x 2 threads:  $(ips "$out/a")"
  OMP_NUM_THREADS=1 "$cnas" "${args[@]}" --batch-size 32 -o "$out/b" >/dev/null 2>&1
  echo "  1 process x 1 thread:   $(ips "$out/b")"
  "$cnas" launch --nproc-per-node 2 --master-port $((29700 + round)) -- "${args[@]}" --batch-size 64 -o "$out/c" >/dev/null 2>&1
  echo "  2 processes x 1 thread: $(ips "$out/c")"
done
