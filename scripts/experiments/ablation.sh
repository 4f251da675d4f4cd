#!/usr/bin/env bash
# The curriculum ablation (issue 16): search with every mode (op, node, fixed, random) for
# seeds 1..N at a reduced scale, retrain every final genotype with one short recipe, measure
# Kendall's tau between one-shot supernet scores and retrained accuracy on a handful of op
# mode's last-stage candidates, and compare the runs.
#
#   scripts/experiments/ablation.sh --scale cpu|gpu|smoke --seeds N [--out DIR] [--cnas PATH]
#                                   [--data DIR]
#
#   --scale cpu    about 62 min wall on a quiet 2-core CPU with --seeds 2 (measured; see the comment
#                  on the cpu scale below for how that was measured)
#   --scale gpu    sized for at most ~9 min on one H100-class GPU with --seeds 1;
#                  NOT RUN YET (no GPU was lent), sized by estimate
#   --scale smoke  a few minutes: proves the pipeline end to end, its numbers mean nothing
#   --seeds N      seeds 1..N for every mode (default 2)
#   --out DIR      where every run goes (default: runs/ablation-SCALE under the repository)
#   --cnas PATH    the cnas binary (default: target/release/cnas, built with
#                  `cargo build --release --locked` when missing)
#   --data DIR     CIFAR-10 (default: data under the repository, cnas's own default:
#                  downloaded there when missing)
#
# Resumable: run it again with the same arguments after an interruption. A search with a
# genotype.json and a training with an eval.json are done and skipped; an unfinished one with a
# checkpoint is continued with --resume; one without a checkpoint starts over (--force).
# Everything cnas prints goes to OUT/logs/; the final summary is also written to OUT/summary.md.
# Environment: ABLATION_JOBS=N runs N runs at a time instead of the scale's (cpu 2, gpu 3);
# on the CPU each run has one thread unless OMP_NUM_THREADS says otherwise; PYTHON (default
# python3) runs the small JSON steps and kendall.py (standard library only).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SCRIPT_DIR/../.." && pwd)
COMMAND_LINE="$0 $*"

usage() {   # the comment above, on stdout (--help) or stderr (a wrong argument)
    local text
    text=$(sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//')
    if [[ "${1:-0}" -eq 0 ]]; then echo "$text"; else echo "$text" >&2; fi
    exit "${1:-0}"
}

scale=""
seeds=2
out=""
cnas=""
data=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --scale) scale=${2:?--scale needs a value}; shift 2 ;;
        --seeds) seeds=${2:?--seeds needs a value}; shift 2 ;;
        --out) out=${2:?--out needs a value}; shift 2 ;;
        --cnas) cnas=${2:?--cnas needs a value}; shift 2 ;;
        --data) data=${2:?--data needs a value}; shift 2 ;;
        -h | --help) usage 0 ;;
        *) echo "ablation.sh: unknown argument '$1'" >&2; usage 2 ;;
    esac
done
case "$scale" in
    cpu | gpu | smoke) ;;
    *) echo "ablation.sh: --scale cpu|gpu|smoke is required" >&2; usage 2 ;;
esac
if ! [[ "$seeds" =~ ^[1-9][0-9]*$ ]]; then
    echo "ablation.sh: --seeds must be a positive integer, not '$seeds'" >&2
    exit 2
fi
out=${out:-$REPO/runs/ablation-$scale}
mkdir -p "$out/logs"
out=$(cd "$out" && pwd)

MODES=(op node fixed random)
DATA=${data:-$REPO/data}

# --- The scales -------------------------------------------------------------------------
# Sizes follow --preset quick (8 channels, 5 cells, batch 32, 1 + 1 epochs per stage) with
# more images, fewer candidates and no uniform diagnostic samples (--derive-uniform 0).
# Every mode gets op's budget, so that the comparison is the paper's (a curriculum against
# the full space at the same cost): op has 8 stages, node 4 (one per intermediate node),
# fixed 1, so node's per-stage warm-up epochs, search epochs and derive rounds are doubled
# and fixed's multiplied by 8 (SPAN below); random spends op's budget by itself (op's weight
# steps with uniform samples, op's held-out images on scoring uniform candidates). Then every
# mode takes the same weight steps, REINFORCE steps and scored candidates; config.json's
# `budget` records each, and `cnas compare` shows them.
#
# The retraining recipe is the same for every genotype, including the training seed
# (--seed 1 whatever the search seed): only the genotype differs between retrainings.
case "$scale" in
    cpu)
        # Sized by measurement on the 2-core development machine (Intel Xeon), one thread per
        # run, while other builds and tests shared it: the CPU seconds of each run (what it
        # takes on a quiet core; its wall time then was 1.7-2x longer):
        #   search op      455 s  (weights 60-115 images/s depending on the stage's ops,
        #                          controller ~350, candidates ~450 images/s)
        #   search random  332 s   node 150 s   fixed 45 s
        #   retraining    ~206 s  (~220 training images/s; 5 epochs measured 172 s)
        # --seeds 2: 2 x 982 s of searches + 14 x ~206 s of retraining = ~4850 CPU-s; two runs
        # at a time: ~41 min with start-ups and scoring on a quiet machine, ~45 min if two
        # runs side by side slow each other by 10%; more on a machine busy with other work.
        # The supernet learns above chance at this size (seed 1; chance: 10%): op's best
        # candidate scored 21-27% on 512 held-out images in every stage (controller mean
        # 18-22%), node's 22-26%, fixed's 20%, random's 29% (best of 72, optimistic); the
        # retraining reached 46% top-1 (5 epochs) on an op genotype.
        # Measured 2026-12-02 on a quiet 2-core machine (EXPERIMENTS.md): --seeds 2 took
        # 3726 s (62 min): searches 256-362 s each (all modes at op's budget), retrainings
        # 115-467 s each, two at a time (each run's loader thread shares the cores). To
        # shorten it, lower the retraining's --epochs or TAU_N.
        DEVICE=cpu
        JOBS=2
        SEARCH_OPTS=(--init-channels 8 --layers 5 --batch-size 32 --max-images 2048
            --controller-steps 16
            --derive-samples 4 --derive-images 512 --derive-uniform 0
            --controller-lr 3.5e-3)
        TRAIN_OPTS=(--init-channels 8 --layers 5 --batch-size 64 --epochs 5
            --max-images 8000 --max-eval-images 1000 --auxiliary-weight 0 --cutout 0
            --drop-path-prob 0 --seed 1)
        ;;
    gpu)
        # NOT RUN: no GPU was available when this was written; sized by estimate only.
        # Assumed on one H100-class GPU (BENCHMARKS.md has no GPU row yet): ~1500 weight-step
        # images/s for this supernet (16 channels, 8 cells, batch 96, the paper's), ~5000
        # images/s for scoring candidates, ~2500 training images/s for the retrained network,
        # ~10 s of start-up (CUDA, data) per process. Runs share the GPU (JOBS below).
        #   search op: 8 x 2 epochs x 5000 images (~55 s) + 128 controller steps (~6 s)
        #     + 8 x 16 candidates x 1000 images (~26 s) + start-up: ~1.7 min; every mode
        #     spends op's budget: ~7 GPU-min per seed;
        #   retraining: 8 epochs x 10000 images + 8 x 2000 test images: ~45 s each.
        # --seeds 1 (4 searches, 4 + 6 retrainings): ~14 GPU-min in series; three runs at a
        # time on the one GPU (these small networks leave it mostly waiting on kernel
        # launches): ~5-7 min wall, the recommended setting for a 9-minute budget.
        DEVICE=cuda
        JOBS=3
        SEARCH_OPTS=(--init-channels 16 --layers 8 --batch-size 96 --max-images 5000
            --controller-steps 16
            --derive-samples 8 --derive-images 1000 --derive-uniform 0
            --controller-lr 3.5e-3)
        TRAIN_OPTS=(--init-channels 16 --layers 8 --batch-size 96 --epochs 8
            --max-images 10000 --max-eval-images 2000 --auxiliary-weight 0 --cutout 0
            --drop-path-prob 0 --seed 1)
        ;;
    smoke)
        # Minutes on a CPU; proves that every step runs and the summary is assembled.
        DEVICE=cpu
        JOBS=2
        SEARCH_OPTS=(--init-channels 4 --layers 3 --batch-size 16 --max-images 64
            --controller-steps 2
            --derive-samples 4 --derive-images 32 --derive-uniform 0
            --controller-lr 3.5e-3)
        TRAIN_OPTS=(--init-channels 4 --layers 3 --batch-size 16 --epochs 1
            --max-images 128 --max-eval-images 128 --auxiliary-weight 0 --seed 1)
        ;;
esac
# Per curriculum stage of op mode: warm-up epochs, search epochs, derive rounds; the other
# modes' stages get SPAN times as many (their stages span SPAN of op's).
WARMUP=1
EPOCHS=1
ROUNDS=2
declare -A SPAN=([op]=1 [random]=1 [node]=2 [fixed]=8)
JOBS=${ABLATION_JOBS:-$JOBS}   # runs at a time (ABLATION_JOBS overrides the scale's)
TAU_N=6   # distinct last-stage candidates of op seed 1 retrained for Kendall's tau

# --- The binary ------------------------------------------------------------------------
PYTHON=${PYTHON:-python3}
command -v "$PYTHON" >/dev/null || PYTHON=$REPO/.venv/bin/python
if [[ -z "$cnas" ]]; then
    cnas=$REPO/target/release/cnas
    if [[ ! -x "$cnas" ]]; then
        echo "ablation.sh: $cnas is missing; building it (cargo build --release --locked)"
        # .cargo/config.toml points LIBTORCH at the venv's torch (scripts/setup.sh links it);
        # exported here too so a build from this script finds it whatever the caller's env.
        export LIBTORCH=${LIBTORCH:-$REPO/.venv/libtorch}
        (cd "$REPO" && cargo build --release --locked)
    fi
fi
if [[ ! -x "$cnas" ]]; then
    echo "ablation.sh: no cnas binary at $cnas" >&2
    exit 1
fi
# build.rs gives the binary an rpath to the venv's torch; a copied binary may need the loader
# pointed at it.
if ! "$cnas" --version >/dev/null 2>&1; then
    export LD_LIBRARY_PATH=$REPO/.venv/libtorch/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    "$cnas" --version >/dev/null
fi

# --- Helpers ---------------------------------------------------------------------------
T0=$(date +%s)
STEPS_FILE=$out/logs/steps.txt   # "name|seconds|what happened", this invocation's steps
: >"$STEPS_FILE"
THREAD_OPTS=()
if [[ "$DEVICE" == cpu ]]; then
    # One thread per run (unless OMP_NUM_THREADS is set), JOBS runs side by side. Measured on
    # the 2-core machine while other work ran (not on a quiet one): a two-thread search fell
    # to 7-50 weight images/s (OpenMP threads spinning while the other core was taken) where
    # a one-thread one kept 60-115; a two-thread retraining ran at 119 images/s, a
    # one-thread one at 238 alone and 117 each with two side by side.
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
    THREAD_OPTS=(--workers 1)
fi

# Runs one cnas command with its output in OUT/logs/NAME.log; on failure shows the log's end.
run_logged() {
    local name=$1
    shift
    local log=$out/logs/$name.log
    echo "# $(date -u +%FT%TZ) $cnas $*" >>"$log"
    if ! "$cnas" "$@" >>"$log" 2>&1; then
        echo "ablation.sh: '$name' failed; the end of $log:" >&2
        tail -n 25 "$log" >&2
        exit 1
    fi
}

step_done() {   # NAME START WHAT
    local secs=$(($(date +%s) - $2))
    echo "$1|$secs|$3" >>"$STEPS_FILE"
    printf '  %-18s %5d s  %s\n' "$1" "$secs" "$3"
}

# Search MODE SEED into OUT/search-MODE-sSEED unless it has finished.
search() {
    local mode=$1 seed=$2
    local name=search-$mode-s$seed
    local dir=$out/$name start
    start=$(date +%s)
    if [[ -f "$dir/genotype.json" ]]; then
        step_done "$name" "$start" "done before, skipped"
    elif [[ -f "$dir/checkpoint.safetensors" ]]; then
        run_logged "$name" search --quiet --device "$DEVICE" "${THREAD_OPTS[@]}" --resume "$dir"
        step_done "$name" "$start" "resumed"
    else
        run_logged "$name" search --quiet --device "$DEVICE" "${THREAD_OPTS[@]}" --data "$DATA" \
            --mode "$mode" --seed "$seed" "${SEARCH_OPTS[@]}" --warmup-epochs $((WARMUP * SPAN[$mode])) \
            --epochs $((EPOCHS * SPAN[$mode])) --derive-rounds $((ROUNDS * SPAN[$mode])) --force -o "$dir"
        step_done "$name" "$start" "searched"
    fi
}

# Train genotype file ARCH into OUT/NAME with the one recipe unless it has finished.
train() {
    local arch=$1 name=$2
    local dir=$out/$name start
    start=$(date +%s)
    if [[ -f "$dir/eval.json" ]]; then
        step_done "$name" "$start" "done before, skipped"
    elif [[ -f "$dir/last.safetensors" ]]; then
        run_logged "$name" train --quiet --device "$DEVICE" "${THREAD_OPTS[@]}" --resume "$dir"
        step_done "$name" "$start" "resumed"
    else
        run_logged "$name" train --quiet --device "$DEVICE" "${THREAD_OPTS[@]}" --data "$DATA" \
            --arch "$arch" "${TRAIN_OPTS[@]}" --force -o "$dir"
        step_done "$name" "$start" "trained"
    fi
}

# A pool of JOBS runs at a time: `spawn FUNCTION ARGS...` starts one in the background once a
# slot is free; `drain` waits for all of them and stops the script if any failed.
POOL=()
FAILED=0
spawn() {
    while [[ ${#POOL[@]} -ge $JOBS ]]; do
        reap
    done
    "$@" &
    POOL+=("$!")
}
reap() {   # waits until at least one run of the pool has ended, and collects its status
    local pid alive
    while :; do
        alive=()
        for pid in "${POOL[@]}"; do
            if kill -0 "$pid" 2>/dev/null; then
                alive+=("$pid")
            else
                wait "$pid" || FAILED=1
            fi
        done
        [[ ${#alive[@]} -lt ${#POOL[@]} ]] && break
        sleep 1
    done
    POOL=("${alive[@]}")
}
drain() {
    while [[ ${#POOL[@]} -gt 0 ]]; do
        reap
    done
    if [[ $FAILED -ne 0 ]]; then
        echo "ablation.sh: a run failed (above); run the same command again to continue" >&2
        exit 1
    fi
}
stop_pool() {   # on an interruption: ends this script's own runs (their cnas, then them)
    local pid
    for pid in "${POOL[@]}"; do
        pkill -TERM -P "$pid" 2>/dev/null || true
        kill "$pid" 2>/dev/null || true
    done
}
trap stop_pool EXIT
trap 'exit 130' INT TERM

# The final network's test top-1 of a training run (its eval.json), as a fraction: not the
# best epoch's, which would select on the test split (as cnas compare).
final_top1() {
    "$PYTHON" -c 'import json, sys; print("%.4f" % json.load(open(sys.argv[1]))["top1"])' "$1/eval.json"
}

echo "ablation: scale $scale, seeds 1..$seeds, device $DEVICE, $JOBS run(s) at a time, out $out"
echo "ablation: cnas $cnas ($("$cnas" --version 2>&1))"

# --- 1. Searches (the longest first, so the pool ends evenly) -----------------------------
echo "== searches"
for mode in op random node fixed; do
    for seed in $(seq 1 "$seeds"); do
        spawn search "$mode" "$seed"
    done
done
drain

# --- Kendall's tau candidates: op seed 1's last stage ----------------------------------------
echo "== Kendall tau: op seed 1, last stage"
op1=$out/search-op-s1
tau_dir=$op1/tau   # inside the search: cnas compare lists the tau runs under it
mkdir -p "$tau_dir"
start=$(date +%s)
# Distinct genotypes of the last stage's candidates, sorted by score, TAU_N of them picked
# evenly over the sorted list (lowest and highest included); written as tau/arch-I.json.
last_stage=$("$PYTHON" - "$op1" "$tau_dir" "$TAU_N" <<'EOF'
import glob, json, os, sys
run, dest, k = sys.argv[1], sys.argv[2], int(sys.argv[3])
stages = sorted(glob.glob(os.path.join(run, "stage-*", "candidates.json")),
                key=lambda p: int(p.split(os.sep)[-2].split("-")[1]))
cands = json.load(open(stages[-1]))
seen = {}
for c in cands:
    key = json.dumps(c["genotype"], sort_keys=True)
    if key not in seen or c["score"] > seen[key]["score"]:
        seen[key] = c
distinct = sorted(seen.values(), key=lambda c: c["score"])
if len(distinct) <= k:
    picked = distinct
else:
    picked = [distinct[round(i * (len(distinct) - 1) / (k - 1))] for i in range(k)]
for old in glob.glob(os.path.join(dest, "arch-*.json")):
    os.remove(old)
for i, c in enumerate(picked, 1):
    with open(os.path.join(dest, f"arch-{i}.json"), "w") as f:
        json.dump(c["genotype"], f, indent=1)
print(stages[-1].split(os.sep)[-2].split("-")[1], len(distinct))
EOF
)
read -r last_stage n_distinct <<<"$last_stage"
mapfile -t tau_archs < <(find "$tau_dir" -maxdepth 1 -name 'arch-*.json' | sort -V)
echo "# $(date -u +%FT%TZ) $cnas score $op1 --quiet --device $DEVICE ${THREAD_OPTS[*]} --arch ${tau_archs[*]} --json" \
    >>"$out/logs/tau-score.log"
if ! "$cnas" score "$op1" --quiet --device "$DEVICE" "${THREAD_OPTS[@]}" --arch "${tau_archs[@]}" --json \
    >"$tau_dir/scores.json" 2>>"$out/logs/tau-score.log"; then
    echo "ablation.sh: cnas score failed; the end of $out/logs/tau-score.log:" >&2
    tail -n 25 "$out/logs/tau-score.log" >&2
    exit 1
fi
step_done "tau-score" "$start" "stage $last_stage: ${#tau_archs[@]} of $n_distinct distinct candidates scored"

# --- 2. Retraining: every search's genotype, then the tau candidates ----------------------
echo "== retraining (one recipe, one training seed)"
for seed in $(seq 1 "$seeds"); do
    for mode in "${MODES[@]}"; do
        spawn train "$out/search-$mode-s$seed/genotype.json" "train-$mode-s$seed"
    done
done
for i in $(seq 1 "${#tau_archs[@]}"); do
    spawn train "$tau_dir/arch-$i.json" "tau-$i"
done
drain

: >"$tau_dir/pairs.txt"
for i in $(seq 1 "${#tau_archs[@]}"); do
    score=$("$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))[int(sys.argv[2])-1]["score"])' \
        "$tau_dir/scores.json" "$i")
    echo "$score $(final_top1 "$out/tau-$i")  # arch-$i" >>"$tau_dir/pairs.txt"
done
tau_line="op seed 1, stage $last_stage: one-shot score vs retrained final top-1: $("$PYTHON" "$SCRIPT_DIR/kendall.py" "$tau_dir/pairs.txt")"

# --- 3. Comparison ---------------------------------------------------------------------
echo "== compare"
runs=()
for kind in search train; do
    for seed in $(seq 1 "$seeds"); do
        for mode in "${MODES[@]}"; do
            runs+=("$out/$kind-$mode-s$seed")
        done
    done
done
for i in $(seq 1 "${#tau_archs[@]}"); do
    runs+=("$out/tau-$i")   # listed under op seed 1 (their genotype files are in it)
done
start=$(date +%s)
compare_log=$out/logs/compare.log
if "$cnas" compare "${runs[@]}" -o "$out/compare.html" >"$out/compare.md" 2>"$compare_log"; then
    compare_table=$(cat "$out/compare.md")
    step_done compare "$start" "cnas compare -> compare.html"
else
    if grep -qi "unrecognized subcommand\|unknown subcommand" "$compare_log"; then
        echo "ablation.sh: WARNING: this cnas has no 'compare' subcommand; printing the" \
            "script's own table instead (and no compare.html)" >&2
    else
        echo "ablation.sh: WARNING: cnas compare failed (see $compare_log); printing the" \
            "script's own table instead:" >&2
        tail -n 5 "$compare_log" >&2
    fi
    # Mode, seed, the held-out score of the search's genotype (its last derive line's best),
    # the retrained top-1 (best and final); then mean ± sample std per mode.
    compare_table=$("$PYTHON" - "$out" "$seeds" "${MODES[@]}" <<'EOF'
import json, os, statistics, sys
out, seeds, modes = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def lines(path):
    return [json.loads(l) for l in open(path) if l.strip()]
rows, per_mode = [], {m: ([], [], []) for m in modes}
for mode in modes:
    for seed in range(1, seeds + 1):
        s = lines(os.path.join(out, f"search-{mode}-s{seed}", "metrics.jsonl"))
        derive = [l for l in s if l.get("phase") == "derive"]
        score = derive[-1]["best_score"]
        t = os.path.join(out, f"train-{mode}-s{seed}")
        best = max(l.get("val_top1") or 0.0 for l in lines(os.path.join(t, "metrics.jsonl")))
        final = json.load(open(os.path.join(t, "eval.json")))["top1"]
        rows.append(f"| {mode} | {seed} | {100 * score:.2f} | {100 * best:.2f} | {100 * final:.2f} |")
        for acc, v in zip(per_mode[mode], (score, best, final)):
            acc.append(100 * v)
def ms(v):
    return f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}" if len(v) > 1 else f"{v[0]:.2f}"
print("| mode | seed | held-out score % | retrained best top-1 % | retrained final top-1 % |")
print("| --- | --- | --- | --- | --- |")
print("\n".join(rows))
print()
print(f"| mode | runs | held-out score % | retrained best top-1 % | retrained final top-1 % |")
print("| --- | --- | --- | --- | --- |")
for m in modes:
    v = per_mode[m]
    print(f"| {m} | {len(v[0])} | {ms(v[0])} | {ms(v[1])} | {ms(v[2])} |")
EOF
)
    step_done compare "$start" "own table (no cnas compare)"
fi

# --- 4. Summary ------------------------------------------------------------------------
total=$(($(date +%s) - T0))
{
    echo "# CNAS ablation ($scale scale)"
    echo
    echo "Command: \`$COMMAND_LINE\`"
    echo
    echo "cnas: \`$cnas\` ($("$cnas" --version 2>&1)); device $DEVICE; seeds 1..$seeds;" \
        "modes ${MODES[*]}"
    echo
    echo "Search options (every mode): \`${SEARCH_OPTS[*]}\`"
    echo
    echo "Retraining recipe (every genotype, training seed fixed): \`${TRAIN_OPTS[*]}\`"
    echo
    echo "Runs at a time: $JOBS${OMP_NUM_THREADS:+ (OMP_NUM_THREADS=$OMP_NUM_THREADS each)}"
    echo
    echo "## Steps (wall seconds; skipped steps are runs finished before)"
    echo
    echo "| step | seconds | what |"
    echo "| --- | --- | --- |"
    while IFS='|' read -r name secs what; do
        echo "| $name | $secs | $what |"
    done <"$STEPS_FILE"
    echo
    echo "Total wall time: ${total} s ($((total / 60)) min $((total % 60)) s)"
    echo
    echo "## Comparison"
    echo
    echo "$compare_table"
    echo
    echo "## Kendall tau"
    echo
    echo "$tau_line"
    echo
    echo "Pairs (score, retrained final top-1): \`$(tr '\n' ';' <"$tau_dir/pairs.txt")\`"
} | tee "$out/summary.md"
