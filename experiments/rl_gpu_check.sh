#!/usr/bin/env bash
# GPU check of the RL scale configs, for a session that has a GPU machine (never run in this repository yet).
# Tiny Qwen3-VL + small testbed; two GRPO steps each under: single GPU (bf16), accelerate DDP (all GPUs),
# and vLLM colocate when vllm is installed. Writes var/experiments/rl-gpu-check/*.log; exit 1 on a failure.
#   experiments/rl_gpu_check.sh
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
OUT=var/experiments/rl-gpu-check
mkdir -p "$OUT"
"$PY" - "$OUT" <<'PYEOF'
import sys
from pathlib import Path
from unirg.trainer.tiny_models import build_tiny_qwen3_vl
from unirg.trainer.synth import generate_testbed
out = Path(sys.argv[1])
if not (out / "tiny" / "config.json").is_file():
    build_tiny_qwen3_vl(out / "tiny", overwrite=True)
if not (out / "testbed" / "manifest.jsonl").is_file():
    generate_testbed(out / "testbed", patients=4, seed=0, size=256)
PYEOF
COMMON=(--sft "$OUT/tiny" --data "$OUT/testbed" --preset unirg-step1 -G 4 --batch-size 8 --max-steps 2
        --max-samples 8 --max-completion-length 32 --save-steps 1 --set image_size=128)
status=0
run() { local name=$1; shift; echo "== $name"; if "$@" >"$OUT/$name.log" 2>&1; then echo ok; else echo "FAILED (see $OUT/$name.log)"; status=1; fi; }
run single-gpu "$PY" -m unirg.trainer.rl_cli "${COMMON[@]}" -o "$OUT/run-single" --set bf16=true
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
run ddp .venv/bin/accelerate launch --config_file trainer/configs/accelerate/ddp.yaml --num_processes "$NGPU" \
    -m unirg.trainer.rl_cli "${COMMON[@]}" -o "$OUT/run-ddp" --batch-size 4 -G 4
if "$PY" -c "import vllm" 2>/dev/null; then
  run vllm-colocate "$PY" -m unirg.trainer.rl_cli "${COMMON[@]}" -o "$OUT/run-vllm" --use-vllm --vllm-mode colocate \
      --set vllm_gpu_memory_utilization=0.3
else
  echo "== vllm-colocate skipped (vllm not installed)"
fi
if "$PY" -c "import deepspeed" 2>/dev/null; then
  run zero2 .venv/bin/accelerate launch --config_file trainer/configs/accelerate/zero2.yaml --num_processes "$NGPU" \
      -m unirg.trainer.rl_cli "${COMMON[@]}" -o "$OUT/run-zero2" --batch-size 4 -G 4
else
  echo "== zero2 skipped (deepspeed not installed)"
fi
exit $status
