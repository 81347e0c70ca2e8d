#!/usr/bin/env bash
# docs/own-models.md, "A model of your own architecture": run in this folder with bdtool on PATH.
# EPOCHS, SEEDS and DEFENSES make it smaller (tests/test_any_model.py runs it so); the defaults are
# what docs/own-models.md shows.
set -euo pipefail
rows=()
for d in ${DEFENSES:-ours-proj nc fp actft}; do rows+=(--defense "$d"); done
python train_mine.py "${EPOCHS:-30}"
bdtool compare --victim mine.safetensors --model mymod:Net --normalize 0.5,0.5 \
  --attack image:trigger=trigger.png,mask=mask.png --target 3 \
  "${rows[@]}" --samples 50 --seeds "${SEEDS:-3}" --no-log-models
bdtool defend mine.safetensors --model mymod:Net --normalize 0.5,0.5 --data my-images --defense ours-proj \
  --target-label 3 --trigger-image trigger.png --trigger-mask mask.png --output mine.defended.safetensors
