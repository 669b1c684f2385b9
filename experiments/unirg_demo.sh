#!/usr/bin/env bash
# The UniRG demonstration in one command: per fresh testbed seed, `unirg-trainer rl` from the default model on
# A+B, then SFT vs SFT+RL on unseen institution C and on A/B patients held out of RL, with paired bootstrap
# CIs. Results: var/experiments/unirg-demo/results.md.
#   experiments/unirg_demo.sh            # three seeds (30-55 min on 2 CPU cores, by machine)
#   experiments/unirg_demo.sh --quick    # smoke run (a few minutes)
# Extra arguments go to experiments/unirg_demo.py (--help lists them).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "$ROOT/.venv/bin/python" "$ROOT/experiments/unirg_demo.py" "$@"
