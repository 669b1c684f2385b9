#!/usr/bin/env bash
# Build the demo model var/models/unirg-demo when it is absent (idempotent, deterministic seeds).
#
# The demo model is a tiny Qwen3-VL (the UniRG-CXR architecture, ~1.5 M parameters) trained from
# scratch with `unirg-trainer sft` on the synthetic testbed's institutions A and B (C is held out).
# It is a demo for the synthetic testbed only; it knows nothing about real radiographs.
# Point `unirg draft --model` (or $UNIRG_MODEL) at a real checkpoint such as microsoft/UniRG-CXR.
#
#   scripts/build-demo-model.sh            # build if absent
#   scripts/build-demo-model.sh --force    # rebuild
#
# Steps: generate the testbed (var/testbed-demo), train into a temporary folder, evaluate
# (CheXpert-14 F1 on held-out A/B patients and on institution C, vs the most-common-report
# baseline, written into unirg-model.json), then rename the folder into place, so a half-built
# model is never the default. About 10 minutes on 2 CPU cores.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
MODEL="var/models/unirg-demo"
TESTBED="var/testbed-demo"
PATIENTS="${UNIRG_DEMO_PATIENTS:-400}"
THREADS="${UNIRG_DEMO_THREADS:-2}"

# The manifest says the model was trained on synthetic data only ("training_data": "synthetic"; sft
# writes it for testbed data): its drafts' disclaimer then says so. Added here to models built before.
mark_synthetic() {
  "$PY" - "$1/unirg-model.json" <<'PYEOF'
import json, os, sys
path = sys.argv[1]
manifest = json.load(open(path, encoding="utf-8"))
if manifest.get("training_data") != "synthetic":
    manifest["training_data"] = "synthetic"
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(json.dumps(manifest, indent=2) + "\n")
    os.replace(path + ".tmp", path)
PYEOF
}

if [ "${1:-}" = "--force" ]; then
  rm -rf "$MODEL"
fi
if [ -f "$MODEL/unirg-model.json" ]; then
  mark_synthetic "$MODEL"
  echo "build-demo-model: $MODEL exists ($(grep -m1 '"version"' "$MODEL/unirg-model.json" | tr -d ' ,'))"
  exit 0
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
echo "build-demo-model: training (TRL SFTTrainer, $THREADS threads)"
"$PY" -c 'from unirg.trainer.train_cli import sft; sft(prog_name="unirg-trainer sft")' \
  --data "$TESTBED" --out "$WORK" --init tiny-qwen3-vl --institutions A,B --full \
  --image-size 128 --hidden-size 128 --layers 4 --vision-hidden-size 64 \
  --max-steps 600 --batch-size 8 --lr 3e-3 --warmup 0.05 --lr-scheduler cosine --seed 0 \
  --eval-fraction 0.15 --save-steps 0 --logging-steps 50 --threads "$THREADS" \
  --name unirg-demo --evaluate --eval-institutions C --eval-max-studies 120
rm -rf "$WORK/checkpoints"
mark_synthetic "$WORK"
rm -rf "$MODEL"
mv "$WORK" "$MODEL"
end=$(date +%s)
echo "build-demo-model: done in $((end - start)) s (testbed $((testbed_done - start)) s): $MODEL"
