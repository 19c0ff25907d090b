#!/usr/bin/env bash
# Pre-training speed on one GPU, in bf16: BERT-base PoS-BERT and ViT-B MM-MAE with the balancers none, minimax and
# gradnorm; per row steps/s, samples/s, tokens/s (PoS-BERT) or images/s (MM-MAE), TFLOP/s, MFU (against the GPU's
# dense bf16 peak) and peak memory. Stops itself after LIMIT_S seconds (default 470: under 8 minutes); the rows
# printed by then are complete.
#
#   bash benchmarks/gpu.sh                 # eager
#   bash benchmarks/gpu.sh --compile       # model.compile=true (the first step of each row compiles)
#   bash benchmarks/gpu.sh --steps 100     # any option of `python -m benchmarks.bench_gpu --help`
#
# Environment: PYTHON (default python), LIMIT_S (default 470).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
LIMIT_S=${LIMIT_S:-470}

if ! nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; then
    echo "gpu.sh: no NVIDIA GPU here (nvidia-smi failed); python -m benchmarks runs the CPU benchmarks" >&2
    exit 1
fi
start=$(date +%s)
status=0
timeout --signal=INT --kill-after=20 "$LIMIT_S" \
    "$PYTHON" -m benchmarks.bench_gpu --device cuda --size base --balancers none,minimax,gradnorm "$@" || status=$?
echo "gpu.sh: $(($(date +%s) - start)) s"
if [ "$status" -eq 124 ]; then
    echo "gpu.sh: stopped after LIMIT_S=${LIMIT_S} s; the rows above are complete, the others did not run" >&2
fi
exit "$status"
