#!/usr/bin/env bash
# The GPU check, one command: the paper presets against their plans, then pre-training speed on one GPU in bf16.
#
# 1. For each preset of PRESETS (default paper_table1,paper_table2): `python run.py experiment=<preset> stage=plan
#    trainer.devices=1` (runner/plan.py: FLOPs per step, memory per device at the preset's per-GPU batch, MFU
#    assumed) and one short real-shape run of its model (BERT-base or ViT-B MM-MAE with minimax, the preset's
#    per-GPU batch, synthetic batches; `python -m benchmarks.bench_gpu`). REPORT (default
#    outputs/gpu_check/gpu_report.md) gets one row per preset: measured GFLOP/step, MFU and peak memory against the
#    plan's, and the GPU-hours of the full run at the measured rate.
# 2. BERT-base PoS-BERT and ViT-B MM-MAE with the balancers none, minimax and gradnorm; per row steps/s, samples/s,
#    tokens/s (PoS-BERT) or images/s (MM-MAE), TFLOP/s, MFU (against the GPU's dense bf16 peak) and peak memory.
# Stops itself after LIMIT_S seconds (default 470: under 8 minutes); the rows printed by then are complete.
#
#   bash benchmarks/gpu.sh                 # eager
#   bash benchmarks/gpu.sh --compile       # model.compile=true (the first step of each row compiles)
#   bash benchmarks/gpu.sh --steps 100     # any option of `python -m benchmarks.bench_gpu --help` (part 2)
#   PRESETS= bash benchmarks/gpu.sh        # part 2 only
#
# Environment: PYTHON (default python), LIMIT_S (default 470), PRESETS, OUT, REPORT, PLAN_ARGS (more overrides of the
# plans), PRESET_ARGS (options of the presets' bench_gpu runs, default --device cuda --size base --steps 10 --warmup 3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
LIMIT_S=${LIMIT_S:-470}
PRESETS=${PRESETS-paper_table1,paper_table2}
OUT=${OUT:-outputs/gpu_check}  # plans, rows and the report (outputs/ is git-ignored)
REPORT=${REPORT:-$OUT/gpu_report.md}
PRESET_ARGS=${PRESET_ARGS:---device cuda --size base --steps 10 --warmup 3}

if ! nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; then
    echo "gpu.sh: no NVIDIA GPU here (nvidia-smi failed); python -m benchmarks runs the CPU benchmarks" >&2
    exit 1
fi
start=$(date +%s)
left() {  # seconds of LIMIT_S left (at least 1: timeout 0 would mean no limit)
    local s=$((LIMIT_S - ($(date +%s) - start)))
    echo $((s < 1 ? 1 : s))
}

# one preset: its plan (plan.json) and one short real-shape run (a bench_gpu row, prefixed with the preset)
check_preset() {
    local preset=$1 family batch
    # shellcheck disable=SC2086
    "$PYTHON" run.py experiment="$preset" stage=plan trainer.devices=1 trainer.num_nodes=1 logger=none \
        hydra.run.dir="$OUT/plan_$preset" ${PLAN_ARGS:-} >"$OUT/plan_$preset.log" 2>&1
    read -r family batch < <("$PYTHON" -c 'import json, sys; p = json.load(open(sys.argv[1]))
print("pos_bert" if "tokens_per_step" in p else "mm_mae", p["batch_per_device"])' "$OUT/plan_$preset/plan.json")
    local batch_opt=--mae-batch
    [ "$family" = pos_bert ] && batch_opt=--pos-batch
    # shellcheck disable=SC2086
    timeout --signal=INT --kill-after=20 "$(left)" "$PYTHON" -m benchmarks.bench_gpu --experiments "$family" \
        --balancers minimax "$batch_opt" "$batch" $PRESET_ARGS | grep "^$family " | sed "s/^/$preset /" >>"$OUT/rows.txt"
}

write_report() {
    "$PYTHON" - "$OUT" "$REPORT" <<'PY'
import json, sys
from pathlib import Path

out, report = Path(sys.argv[1]), Path(sys.argv[2])
lines = ["| preset | GFLOP/step plan | measured | MFU plan | measured | memory GiB plan | measured peak "
         "| GPU-hours at measured rate |", "|---|---|---|---|---|---|---|---|"]
for row in (out / "rows.txt").read_text().splitlines():
    cols = row.split()  # preset experiment balancer steps/s samples/s unit/s TFLOP/s MFU peak GFLOP/step fit
    plan = json.loads((out / f"plan_{cols[0]}" / "plan.json").read_text())
    tflops = float(cols[6])
    hours = plan["total_flops"] / (tflops * 1e12) / 3600 if tflops > 0 else float("nan")
    lines.append(f"| {cols[0]} | {plan['flops_per_step'] / 1e9:.1f} | {cols[9]} | {plan['assumptions']['mfu']:.0%} "
                 f"| {cols[7]} | {plan['memory_per_device_gib']['total']:.2f} | {cols[8]} | {hours:,.1f} |")
report.write_text("\n".join(lines) + "\n")
print(f"gpu.sh: preset report ({report}):\n" + "\n".join(lines))
PY
}

status=0
if [ -n "$PRESETS" ]; then
    mkdir -p "$OUT"
    : >"$OUT/rows.txt"
    for preset in ${PRESETS//,/ }; do
        check_preset "$preset" || { status=$?; echo "gpu.sh: the check of $preset failed ($status); see $OUT" >&2; }
    done
    write_report || status=$?
fi
timeout --signal=INT --kill-after=20 "$(left)" \
    "$PYTHON" -m benchmarks.bench_gpu --device cuda --size base --balancers none,minimax,gradnorm "$@" || status=$?
echo "gpu.sh: $(($(date +%s) - start)) s"
if [ "$status" -eq 124 ]; then
    echo "gpu.sh: stopped after LIMIT_S=${LIMIT_S} s; the rows above are complete, the others did not run" >&2
fi
exit "$status"
