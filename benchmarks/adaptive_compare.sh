#!/usr/bin/env bash
# The comparisons of docs/attacks.md, "Adaptive attacks, measured": ours-proj under each threat
# model (with the null row and actFT for reference) on each adaptive attack's digits recipe, the
# re-activation ASR of every default row on BadNets and Blend, the default rows on an all-to-all
# BadNets victim, and ours-proj with larger ranks against proj-aware. Each writes its tables to
# docs/results/<name>/ (summary.md, .csv, .json). Run from the repository root:
#
#   OMP_NUM_THREADS=1 bash benchmarks/adaptive_compare.sh sqlite:////tmp/me/mlflow.db [PART ...]
#
# PART: adaptive, reactivation, all-to-all, rank (default: these four), fashion.
set -euo pipefail
URI=${1:?give the MLflow store, e.g. sqlite:////tmp/me/mlflow.db}
shift
PARTS=("$@")
[ ${#PARTS[@]} -eq 0 ] && PARTS=(adaptive reactivation all-to-all rank)
BDTOOL=${BDTOOL:-.venv/bin/bdtool}
METRICS=(--metric score --metric class_score --metric asr --metric acc --metric ctca --metric reactivation --metric reactivation_acc)
ROWS=(--defense suppress-target --defense ours-proj --defense ours-proj:knowledge=target --defense ours-proj:knowledge=none --defense actft)
run() {  # name, then the compare options
  local name=$1; shift
  echo "== $name: bdtool compare $*"
  "$BDTOOL" compare --device cpu --tracking-uri "$URI" --experiment adaptive-compare --no-log-models \
    --samples 50 --seeds 3 "${METRICS[@]}" --output "docs/results/$name" "$@"
}
for part in "${PARTS[@]}"; do
  case $part in
    adaptive)
      run adaptive_compare_adap_blend --attack adap-blend --poison-rate 0.05 "${ROWS[@]}"
      run adaptive_compare_adap_patch --attack adap-patch:size=3 --poison-rate 0.05 "${ROWS[@]}"
      run adaptive_compare_proj_aware --attack proj-aware:size=3 --poison-rate 0.1 "${ROWS[@]}" ;;
    reactivation)
      run reactivation_badnets --attack badnets --poison-rate 0.05
      run reactivation_blend --attack blend --poison-rate 0.05 ;;
    all-to-all)
      run all_to_all_badnets --attack badnets --target all-to-all --poison-rate 0.1 ;;
    rank)
      run proj_aware_rank --attack proj-aware:size=3 --poison-rate 0.1 --defense ours-proj \
        --defense ours-proj:max_rank=16 --defense ours-proj:max_rank=32 --defense ours-proj:max_rank=32,knowledge=none ;;
    fashion)  # Fashion-MNIST, victim seed 0: the adap-blend victim, ours-proj on it, then the clean model
      "$BDTOOL" train --device cpu --tracking-uri "$URI" --dataset fashion-mnist --attack adap-blend --poison-rate 0.05 --json
      run fashion_adap_blend --dataset fashion-mnist --attack adap-blend --poison-rate 0.05 --defense ours-proj \
        --defense ours-proj:knowledge=none
      "$BDTOOL" train --device cpu --tracking-uri "$URI" --dataset fashion-mnist --attack badnets --poison-rate 0 --json ;;
    *) echo "unknown part $part" >&2; exit 2 ;;
  esac
done
