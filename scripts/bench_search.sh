#!/usr/bin/env bash
# Search-step benchmark: cnas (examples/bench_search.rs) against PyTorch from Python
# (scripts/ref/bench_search.py): the weight phase on the same sampled architectures and the
# controller phase, same shapes, alternating the engines ROUNDS times in the same run.
#   scripts/bench_search.sh [--device cpu|cuda] [--channels 16] [--layers 8] [--batch 96]
#                           [--image-size 32] [--steps 4] [--warmup 1] [--controller-steps 4]
#                           [--rounds 2] [--breakdown] [--sparse-update]
set -euo pipefail
cd "$(dirname "$0")/.."
device=cpu channels=16 layers=8 batch=96 size=32 steps=4 warmup=1 csteps=4 rounds=2 threads=$(nproc)
breakdown=() sparse=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --channels) channels=$2; shift 2 ;;
    --layers) layers=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --image-size) size=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --controller-steps) csteps=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --breakdown) breakdown=(--breakdown); shift ;;
    --sparse-update) sparse=(--sparse-update); shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
PY=${PY:-.venv/bin/python}
BIN=${BIN:-target/release/examples/bench_search}
[ -x "$BIN" ] || cargo build --release --example bench_search
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
common=(--channels "$channels" --layers "$layers" --batch "$batch" --image-size "$size" --steps "$steps" --warmup "$warmup"
        --controller-steps "$csteps" --device "$device" --threads "$threads" "${breakdown[@]}" "${sparse[@]}")
for r in $(seq "$rounds"); do
  "$BIN" "${common[@]}" --seed "$r" --archs-out "$tmp/archs.json" | tee -a "$tmp/rs.jsonl"
  "$PY" scripts/ref/bench_search.py "${common[@]}" --seed "$r" --archs "$tmp/archs.json" | tee -a "$tmp/py.jsonl"
done
"$PY" - "$tmp/py.jsonl" "$tmp/rs.jsonl" <<'PYEOF'
import json, statistics, sys
py = [json.loads(l) for l in open(sys.argv[1])]
rs = [json.loads(l) for l in open(sys.argv[2])]
for key in ("weights_images_per_s", "controller_images_per_s"):
    mp = statistics.median(d[key] for d in py)
    mr = statistics.median(d[key] for d in rs)
    print(f"{key}: pytorch {mp:.1f}, cnas {mr:.1f}; ratio cnas/pytorch = {mr/mp:.3f}")
if py[0].get("breakdown_ms_per_step"):
    for part in ("forward", "backward", "update"):
        mp = statistics.median(d["breakdown_ms_per_step"][part] for d in py)
        mr = statistics.median(d["breakdown_ms_per_step"][part] for d in rs)
        print(f"weight step {part} ms: pytorch {mp:.2f}, cnas {mr:.2f}; ratio pytorch/cnas = {mp/mr:.3f}")
PYEOF
