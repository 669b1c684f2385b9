#!/usr/bin/env bash
# The UniRG demonstration in one command: testbed -> SFT on A+B -> RL (GRPO) -> SFT vs SFT+RL on held-out C
# and held-out A/B, with paired bootstrap CIs. Results: var/experiments/unirg-demo/results.md.
#   experiments/unirg_demo.sh            # full run (~15-20 min on 2 CPU cores)
#   experiments/unirg_demo.sh --quick    # smoke run (a few minutes)
# Extra arguments go to experiments/unirg_demo.py (--help lists them).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "$ROOT/.venv/bin/python" "$ROOT/experiments/unirg_demo.py" "$@"
