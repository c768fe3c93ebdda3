#!/usr/bin/env bash
# Issue 14's GPU benchmark on a lent GPU machine without a network, in one script (see the gpu-kit's README.md).
# From the repository root, with the kit and the data copied beside the project (KIT, DATA to point elsewhere):
#
#     PTRAY_COMMIT=$(git rev-parse --short HEAD) bash benchmarks/gpu/run.sh [all|bench|configs]
#
# bench:   python benchmarks/bench_speed.py --device cuda: 135M and 1.1B random-init Llama shapes, HF PEFT against
#          ptray's variants, train and evaluation, timed in turns; writes RESULTS.json's gpu record and RESULTS.md.
# configs: the first 5 steps of every experiments/gpu_*.yaml with `ptray train` on a random-init backbone of its
#          architecture (benchmarks/gpu/first_steps.py): seconds per step and peak memory, added to the gpu record.
# Both parts copy RESULTS.json, RESULTS.md and run.log into $OUT as they finish, so a part cut short keeps the other's.
#
# Expected on one H200 (the kit's run of 2026-11-30: a backbone builds in ~4 s, a 1.1B batch-32 step takes ~0.1 s):
#   install the kit's wheels                               ~10 s
#   bench, 135M: build 5 s, 9 loads 25 s, train turns (warm-up 2 + 3 rounds x 3 steps of 10 variants) ~30 s,
#                evaluation turns (277 examples, 3 rounds) ~30 s, host-sync counts (one call each) ~5 s  ~1.6 min
#   bench, 1.1B: build 5 s, 8 loads 30 s, train turns ~30 s, evaluation turns ~40 s, syncs ~5 s       ~1.9 min
#   bench total with imports and the matmul peak                                                      ~4.3 min
#   configs: llama-8b ZeRO-3 (16 GB written and read back) ~1.5 min; roberta-large, t5-base, t5-large ~30 s each;
#            a fresh process each (imports ~10 s)                                                     ~3.5 min
# BENCH_ARGS=--compile adds the step under torch.compile (static widths, CUDA graphs; 16 compiling warm-up steps per
# backbone, never timed on a GPU yet): run it as `bench` alone, as a second call.
# all: ~8 min, so under the 10-minute command limit; if the first call's start-up was slow, run `bench` and
# `configs` as two calls instead.
set -uo pipefail  # not -e: a config that fails is recorded (its rc), and the next one still runs

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
KIT=${KIT:-$ROOT/shared/gpu-kit}
DATA=${DATA:-$ROOT/shared/data}
OUT=${OUT:-/tmp/ptray-gpu-out}
PART=${1:-all}
mkdir -p "$OUT"
cd "$ROOT"
exec > >(tee -a "$OUT/run.log") 2>&1

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$KIT"/whl/*.whl
export PYTHONPATH=/tmp/site:$ROOT PTRAY_DATA_DIR=$DATA/superglue PTRAY_TOKENIZER=$KIT/tok HF_HUB_OFFLINE=1
# The copied project may have no .git: the commit the results belong to comes from the caller.
export PTRAY_COMMIT=${PTRAY_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

save() { cp benchmarks/RESULTS.json benchmarks/RESULTS.md "$OUT"/; }

if [[ $PART == all || $PART == bench ]]; then
    echo "== bench $(date -u +%T)"
    python3 benchmarks/bench_speed.py --device cuda --shapes 135m 1.1b ${BENCH_ARGS:-} && save
fi

if [[ $PART == all || $PART == configs ]]; then
    BACKBONES=/tmp/ptray-backbones
    for pair in gpu_llama8b_zero3:llama-8b gpu_roberta_large_deep:roberta-large gpu_t5_base_superglue:t5-base \
                gpu_t5_large_superglue:t5-large; do
        config=${pair%%:*} shape=${pair##*:}
        echo "== $config on a random-init $shape $(date -u +%T)"
        python3 benchmarks/random_backbones.py "$BACKBONES" "$shape" --tokenizer "$KIT/tok" --device cuda &&
            python3 benchmarks/gpu/first_steps.py "experiments/$config.yaml" "$BACKBONES/$shape"
        rm -rf "${BACKBONES:?}/$shape"  # the 8B folder alone is 16 GB of a 64 GB disk
    done
    python3 benchmarks/bench_speed.py --render && save
fi
echo "== done $(date -u +%T)"
