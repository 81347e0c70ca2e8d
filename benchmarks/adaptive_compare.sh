#!/usr/bin/env bash
# The comparisons of docs/attacks.md, "Adaptive attacks, measured": ours-proj under each threat
# model (with the null row and actFT for reference) on each adaptive attack's digits recipe, and
# the re-activation ASR of every default row on BadNets. Each writes its tables to
# docs/results/<name>/ (summary.md, .csv, .json). Run from the repository root:
#
#   OMP_NUM_THREADS=1 bash benchmarks/adaptive_compare.sh sqlite:////tmp/me/mlflow.db
set -euo pipefail
URI=${1:?give the MLflow store, e.g. sqlite:////tmp/me/mlflow.db}
BDTOOL=${BDTOOL:-.venv/bin/bdtool}
METRICS=(--metric score --metric class_score --metric asr --metric acc --metric ctca --metric reactivation --metric reactivation_acc)
ROWS=(--defense suppress-target --defense ours-proj --defense ours-proj:knowledge=target --defense ours-proj:knowledge=none --defense actft)
run() {  # name, then the compare options
  local name=$1; shift
  echo "== $name: bdtool compare $*"
  "$BDTOOL" compare --device cpu --tracking-uri "$URI" --experiment adaptive-compare --no-log-models \
    --samples 50 --seeds 3 "${METRICS[@]}" --output "docs/results/$name" "$@"
}
run adaptive_compare_adap_blend --attack adap-blend --poison-rate 0.05 "${ROWS[@]}"
run adaptive_compare_adap_patch --attack adap-patch:size=3 --poison-rate 0.05 "${ROWS[@]}"
run adaptive_compare_proj_aware --attack proj-aware:size=3 --poison-rate 0.1 "${ROWS[@]}"
run reactivation_badnets --attack badnets --poison-rate 0.05
