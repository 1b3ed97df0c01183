#!/usr/bin/env bash
# Issue #14's GPU checks, one call on a lent GPU (a few minutes): batched sessions, speculation
# and the nfd-310m single-session speed, each a `worldstream bench` run whose JSON lands in $OUT.
# Dry run on any machine (tiny preset, a few frames):
#   DEVICE=cpu DTYPE=fp32 SMALL="--preset tiny" PRESET=tiny FRAMES=12 scripts/gpu_scheduler.sh
set -euo pipefail
OUT=${OUT:-runs/gpu-scheduler}
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-bf16}
SMALL=${SMALL:-}            # empty: the bundled model
PRESET=${PRESET:-nfd-310m}
FRAMES=${FRAMES:-}          # set: every run times this many frames
PY=${PY:-python}
mkdir -p "$OUT"
run() { local name=$1 frames=$2; shift 2; echo "== $name: worldstream bench $*" >&2
        $PY -m app.cli bench "$@" --device "$DEVICE" --dtype "$DTYPE" --no-recompute --frames "${FRAMES:-$frames}" \
            --json > "$OUT/$name.json" || echo "FAILED: $name" >&2; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt" 2>/dev/null || true
# shellcheck disable=SC2086  # $SMALL is a list of arguments
run small-sessions8 200 $SMALL --sessions 8           # target: 8 rollouts >= 6x one
run small-speculate 300 $SMALL --speculate 2          # target: acceptance >= 70%, lower latency p50
run nfd-eager 100 --preset "$PRESET"                  # target: >= 60 FPS one session
run nfd-compiled 100 --preset "$PRESET" --compile
run nfd-sessions8 60 --preset "$PRESET" --sessions 8
ls -l "$OUT" >&2
