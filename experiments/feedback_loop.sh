#!/usr/bin/env bash
# The feedback loop of issue 12 on a simulated site: the current model drafts a batch of institution C studies,
# their signed finals arrive and are paired, `unirg-trainer export` writes a de-identified training set,
# `unirg-trainer sft` fine-tunes on it, `unirg-trainer publish` hands it to the running worker, the next batch
# is drafted by the new version; a control site drafts that batch with the old model. The agreement table with
# CIs goes to var/experiments/feedback-loop/results.md (honest: it says when the loop did not help).
#   experiments/feedback_loop.sh            # ~90 patients (about 30 at institution C)
#   experiments/feedback_loop.sh --quick    # smoke run
# Needs the demo model (scripts/build-demo-model.sh, run here when absent) or --model PATH.
# Extra arguments go to experiments/feedback_loop.py (--help lists them).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
case " $* " in
  *" --model "*|*" --help "*|*" -h "*) ;;
  *) scripts/build-demo-model.sh ;;
esac
exec "$ROOT/.venv/bin/python" "$ROOT/experiments/feedback_loop.py" "$@"
