#!/usr/bin/env bash
# The GPU checks of the search (issue 4) in one call, for a lent GPU machine that has PyTorch
# but no Rust: prepare here with `scripts/device/prepare.sh`, then on the machine run
#   scripts/device/gpu_search.sh            (writes under $OUT, default /tmp/gpu-out)
# It needs, in the carried, git-ignored folder gpu/: release builds of `cnas` and of the
# `bench_search` and `bench_step` examples, and one CIFAR-10 batch file (data_batch_1.bin).
#
# 1. the search-step benchmark (scripts/bench_search.sh) on CUDA: cnas against PyTorch from
#    Python, the paper's supernet (C=16, 8 cells, batch 96), alternating engines, 3 rounds,
#    with the weight step's parts timed too (forward, backward, update);
# 2. a real `cnas search` on CUDA with the paper's supernet and the default (released)
#    schedule: one stage of one warm-up and one search epoch, with its pass of 312 controller
#    steps over the held-out part and 3 x 10 candidates scored on 10,000 held-out images, on
#    CIFAR-10 images (the one batch file stands in for all six: same images, same rates);
# 3. the projection of the full default search from that run (scripts/project_search.py:
#    8 stages x (20 + 40) epochs, 312 controller steps per search epoch, 30 candidates x
#    10,000 images per stage);
# 4. the training-step benchmark (scripts/bench_step.sh) on CUDA, the paper's CNAS network
#    (36 channels, 20 cells, batch 96), fp32 and bf16 autocast (the GPU rows of issues 2, 5).
# Each part has a time limit, so one that hangs leaves the others their time.
# A rehearsal on a machine without a GPU: DEVICE=cpu PY=.venv/bin/python ROUNDS=1 STEPS=3
# MAX_IMAGES=960 STEP_NET="--channels 8 --layers 5 --batch 8" scripts/device/gpu_search.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
PY=${PY:-/opt/torch/.venv/bin/python}
SITE=$("$PY" -c 'import site; print(site.getsitepackages()[0])')
LD_LIBRARY_PATH=$SITE/torch/lib:$(ls -d "$SITE"/nvidia/*/lib "$SITE"/nvidia/cu13/lib 2>/dev/null | tr '\n' ':')
export LD_LIBRARY_PATH
DEVICE=${DEVICE:-cuda} ROUNDS=${ROUNDS:-3} STEPS=${STEPS:-60}
limit=()
[ -z "${MAX_IMAGES:-}" ] || limit=(--max-images "$MAX_IMAGES")

log() { echo "== $(date +%T) $*" | tee -a "$OUT/summary.txt"; }

log "machine"
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/summary.txt"
fi
nproc | tee -a "$OUT/summary.txt"
for bin in gpu/cnas gpu/bench_search gpu/bench_step; do
  missing=$(ldd "$bin" | grep 'not found')
  [ -z "$missing" ] || { echo "$bin: $missing" | tee -a "$OUT/summary.txt"; exit 1; }
done

log "1. search-step benchmark on $DEVICE ($ROUNDS rounds)"
BIN=gpu/bench_search PY=$PY timeout 300 scripts/bench_search.sh --device "$DEVICE" --rounds "$ROUNDS" \
  --steps "$STEPS" --warmup $((STEPS / 6 + 1)) --controller-steps $((STEPS * 2 / 3)) --threads 4 --breakdown 2>&1 |
  tee "$OUT/bench_search.txt" |
  grep -v '^{' | tee -a "$OUT/summary.txt"

log "2. cnas search on $DEVICE: one stage, 1 warm-up + 1 search epoch"
data=/tmp/cifar10/cifar-10-batches-bin
mkdir -p "$data"
for f in data_batch_1 data_batch_2 data_batch_3 data_batch_4 data_batch_5 test_batch; do
  ln -sf "$PWD/gpu/data_batch_1.bin" "$data/$f.bin"
done
start=$(date +%s%N)
timeout 300 gpu/cnas search --device "$DEVICE" --quiet "${limit[@]}" --data /tmp/cifar10 -o "$OUT/run" --force \
  --mode fixed --warmup-epochs 1 --epochs 1 --workers 8 >"$OUT/search.log" 2>&1
rc=$?
wall=$(awk "BEGIN { printf \"%.1f\", ($(date +%s%N) - $start) / 1e9 }")
echo "exit $rc, wall ${wall}s" | tee -a "$OUT/summary.txt"
tail -5 "$OUT/search.log" | tee -a "$OUT/summary.txt"

log "3. projection of the full default search"
"$PY" scripts/project_search.py "$OUT/run" --wall "$wall" | tee -a "$OUT/summary.txt"
# The weights are not needed back (tens of MB); metrics, config and candidates are.
rm -f "$OUT"/run/*.safetensors "$OUT"/run/stage-*/*.safetensors
log "4. training-step benchmark on $DEVICE: fp32, then bf16 autocast"
for amp in "" --amp; do
  BIN=gpu/bench_step CNAS=gpu/cnas PY=$PY timeout 200 scripts/bench_step.sh --device "$DEVICE" \
    --rounds "$ROUNDS" --steps "$STEPS" --warmup $((STEPS / 6 + 1)) --threads 4 $amp ${STEP_NET:-} 2>&1 |
    tee -a "$OUT/bench_step.txt" | grep -v '^{' | tee -a "$OUT/summary.txt"
done
log "done"
