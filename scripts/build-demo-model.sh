#!/usr/bin/env bash
# The demo model var/models/unirg-demo: copied from the weights shipped in the repository
# (model/demo/unirg-demo, 4.8 MB), or rebuilt from scratch with --rebuild. Idempotent.
#
# The demo model is a tiny Qwen3-VL (the UniRG-CXR architecture, ~1.2 M parameters) built the way real VLMs
# are built: its vision tower is first trained to see the 14 CheXpert observations on the synthetic
# testbed's institutions A and B (`unirg-trainer sft --vision-pretrain-epochs`), then the language model
# learns to write the report with that tower fixed (`--freeze-vision`). Institution C is never used.
# It is a demo for the synthetic testbed only; it knows nothing about real radiographs.
# Point `unirg draft --model` (or $UNIRG_MODEL) at a real checkpoint such as microsoft/UniRG-CXR.
#
#   scripts/build-demo-model.sh                   # copy the shipped weights if var/models/unirg-demo is absent
#   scripts/build-demo-model.sh --rebuild         # train it here (~25 min on 2 CPU cores), into var/models
#   scripts/build-demo-model.sh --rebuild --ship  # ... and replace the shipped copy with the result
#
# Rebuild steps: generate the testbed (4800 patients, seed 0, var/testbed-demo), pre-train the vision tower,
# SFT, evaluate (CheXpert-14 F1 on held-out A/B patients and on institution C, vs the most-common-report
# baseline, written into unirg-model.json), then rename the folder into place, so a half-built model is
# never the default.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
MODEL="var/models/unirg-demo"
SHIPPED="model/demo/unirg-demo"
TESTBED="var/testbed-demo"
PATIENTS="${UNIRG_DEMO_PATIENTS:-4800}"
THREADS="${UNIRG_DEMO_THREADS:-2}"
REBUILD=0 SHIP=0
for arg in "$@"; do
  case "$arg" in
    --rebuild|--force) REBUILD=1 ;;
    --ship) SHIP=1 ;;
    *) echo "build-demo-model: unknown argument $arg (use --rebuild [--ship])" >&2; exit 2 ;;
  esac
done

if [ "$REBUILD" = 0 ]; then
  if [ -f "$MODEL/unirg-model.json" ] && cmp -s "$MODEL/unirg-model.json" "$SHIPPED/unirg-model.json"; then
    echo "build-demo-model: $MODEL is the shipped model ($(grep -m1 '"version"' "$MODEL/unirg-model.json" | tr -d ' ,'))"
    exit 0
  fi
  if [ -f "$SHIPPED/unirg-model.json" ]; then
    mkdir -p var/models
    rm -rf "$MODEL.copying"
    cp -r "$SHIPPED" "$MODEL.copying"
    rm -rf "$MODEL"
    mv "$MODEL.copying" "$MODEL"
    echo "build-demo-model: copied the shipped demo model to $MODEL ($(grep -m1 '"version"' "$MODEL/unirg-model.json" | tr -d ' ,'))"
    exit 0
  fi
  echo "build-demo-model: no shipped weights in $SHIPPED; rebuilding" >&2
fi

start=$(date +%s)
if [ ! -f "$TESTBED/manifest.jsonl" ] || [ "$(cat "$TESTBED/.patients" 2>/dev/null)" != "$PATIENTS" ]; then
  echo "build-demo-model: generating the testbed ($PATIENTS patients, seed 0) in $TESTBED"
  rm -rf "$TESTBED"
  "$PY" -c 'from unirg.trainer.synth.cli import synth; synth(prog_name="unirg-trainer synth")' \
    --out "$TESTBED" --patients "$PATIENTS" --seed 0 --size 256 --workers "$THREADS"
  echo "$PATIENTS" > "$TESTBED/.patients"
fi
testbed_done=$(date +%s)

mkdir -p var/models
WORK="var/models/.unirg-demo.building"
rm -rf "$WORK"
echo "build-demo-model: vision pre-training, then SFT (TRL SFTTrainer, $THREADS threads)"
"$PY" -c 'from unirg.trainer.train_cli import sft; sft(prog_name="unirg-trainer sft")' \
  --data "$TESTBED" --out "$WORK" --init tiny-qwen3-vl --institutions A,B --full \
  --image-size 128 --hidden-size 128 --layers 4 --vision-hidden-size 64 --vision-layers 2 \
  --vision-pretrain-epochs 20 --freeze-vision --prior-report-style findings \
  --max-steps 2000 --batch-size 16 --lr 2e-3 --warmup 0.05 --lr-scheduler cosine --seed 0 \
  --eval-fraction 0.15 --save-steps 0 --logging-steps 50 --threads "$THREADS" \
  --name unirg-demo --evaluate --eval-institutions C --eval-max-studies 100
rm -rf "$WORK/checkpoints"
rm -rf "$MODEL"
mv "$WORK" "$MODEL"
end=$(date +%s)
echo "build-demo-model: done in $((end - start)) s (testbed $((testbed_done - start)) s): $MODEL"
if [ "$SHIP" = 1 ]; then
  rm -rf "$SHIPPED"
  mkdir -p "$(dirname "$SHIPPED")"
  cp -r "$MODEL" "$SHIPPED"
  echo "build-demo-model: shipped copy replaced: $SHIPPED ($(du -sh "$SHIPPED" | cut -f1)); commit it"
fi
