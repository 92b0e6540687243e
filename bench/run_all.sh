#!/usr/bin/env bash
# Run every benchmark of docs/benchmarks.md in sequence, from the repository root, on an
# otherwise idle machine. Each table goes to bench/results/NAME.txt and its JSON beside it.
# Needs data/prepared and models/evaluator (dvc repro prepare train_evaluator); the no-op
# `dvc repro` figure is meaningful only when `dvc status` reports nothing to do.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
mkdir -p bench/results

echo "== $(date -u +%FT%TZ) load $(cut -d' ' -f1 /proc/loadavg)"
# A workspace that is not up to date would make `dvc repro` run the pipeline, so skip it then.
if .venv/bin/dvc status 2>&1 | tee bench/results/dvc_status.txt | grep -q "up to date"; then
    $PY bench/pipeline_time.py --label "dvc repro (nothing to do)" -- .venv/bin/dvc repro 2>&1 | tail -n 1 | tee bench/results/pipeline_noop.txt
    $PY bench/pipeline_time.py --label "dvc status" -- .venv/bin/dvc status 2>&1 | tail -n 1 | tee -a bench/results/pipeline_noop.txt
else
    echo "skipped the no-op dvc repro: dvc status lists changes (bench/results/dvc_status.txt)"
fi
$PY bench/mfu.py 2>&1 | grep -v '^USDT' | tee bench/results/mfu.txt
$PY bench/mfu.py --profile diffusion --precisions fp32 bf16 2>&1 | grep -v '^USDT\|^ERROR' | tee bench/results/profile_diffusion.txt
$PY bench/conv_speed.py 2>&1 | grep -v '^USDT' | tee bench/results/conv_speed.txt
$PY bench/sampling_speed.py 2>&1 | grep -v '^USDT\|step/s\]\|s/step\]' | tee bench/results/sampling_speed.txt
$PY bench/vs_diffusers.py --baseline-lrs 1e-4 2e-3 2>&1 | grep -v '^USDT\|it/s\]\|s/it\]' | tee bench/results/vs_diffusers.txt
echo "== $(date -u +%FT%TZ) load $(cut -d' ' -f1 /proc/loadavg)"
