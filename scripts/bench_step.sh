#!/usr/bin/env bash
# Training-step benchmark: cnas (examples/bench_step.rs) against PyTorch from Python
# (scripts/ref/bench_step.py), same network, same shapes, same step, in the same run,
# alternating the two engines ROUNDS times so machine noise hits both alike.
#   scripts/bench_step.sh [--device cpu|cuda] [--channels 36] [--layers 20] [--batch 96]
#                         [--steps 5] [--warmup 2] [--rounds 3] [--threads N] [--amp]
set -euo pipefail
cd "$(dirname "$0")/.."
device=cpu channels=36 layers=20 batch=96 steps=5 warmup=2 rounds=3 threads=$(nproc) amp=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --channels) channels=$2; shift 2 ;;
    --layers) layers=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --amp) amp=(--amp); shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
PY=${PY:-.venv/bin/python}
BIN=${BIN:-target/release/examples/bench_step}
CNAS=${CNAS:-target/release/cnas}
[ -x "$BIN" ] || cargo build --release --example bench_step
[ -x "$CNAS" ] || cargo build --release --bin cnas
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
"$BIN" --help >/dev/null
# The genotype the PyTorch side builds: cnas writes it, so both sides use the same one.
"$CNAS" info --arch CNAS --json --init-channels 2 --layers 1 2>/dev/null \
  | "$PY" -c 'import json,sys; d=json.load(sys.stdin); json.dump(d["genotype"], sys.stdout)' > "$tmp/g.json"
common=(--channels "$channels" --layers "$layers" --batch "$batch" --steps "$steps" --warmup "$warmup" --device "$device" --threads "$threads" "${amp[@]}")
for r in $(seq "$rounds"); do
  "$PY" scripts/ref/bench_step.py --genotype "$tmp/g.json" "${common[@]}" | tee -a "$tmp/py.jsonl"
  "$BIN" --arch CNAS "${common[@]}" | tee -a "$tmp/rs.jsonl"
done
"$PY" - "$tmp/py.jsonl" "$tmp/rs.jsonl" <<'PYEOF'
import json, statistics, sys
py = [json.loads(l)["images_per_s"] for l in open(sys.argv[1])]
rs = [json.loads(l)["images_per_s"] for l in open(sys.argv[2])]
mp, mr = statistics.median(py), statistics.median(rs)
print(f"median images/s: pytorch {mp:.1f}, cnas {mr:.1f}; ratio cnas/pytorch = {mr/mp:.3f}")
PYEOF
