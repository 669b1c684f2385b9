"""Seconds per RL step: the CPU demo config as it runs, against TRL's stock generation path, same run.

    .venv/bin/python bench/bench_rl_step.py [--sft var/models/unirg-demo] [--data TESTBED] [--steps 30]
        [--config trainer/configs/rl-cpu-demo.toml] [--threads 2]

Three trainers, each built fresh from the same start policy, data, config and seed, train ``--steps`` steps:

* ``stock``: the rollouts and the greedy baseline drafts each take a TRL ``generate`` call with the LoRA adapter
  unmerged (what ``unirg-trainer rl`` did before ``unirg.trainer.rl_generation``);
* ``merged``: the adapter merged into the base weights while ``generate`` runs;
* ``merged+folded`` (the default): also the greedy drafts as greedy rows of the rollouts' ``generate`` call.

All three build the RL dataset the same way. Only ``trainer.train()`` is timed (not imports, data loading or
saving). ``stock`` and ``merged`` sample the same tokens (up to float rounding), so their logged rewards should
match; ``merged+folded`` draws the rollouts from the same distribution with a different random stream. Prints
seconds per step and the ratios to ``stock``. Without ``--data`` a 120-patient testbed is generated into a
temporary folder.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODES = {"stock": (False, False), "merged": (True, False), "merged+folded": (True, True)}


def _train(config: Path, sft: Path, data: Path, out: Path, steps: int, merge: bool, fold: bool, threads: int):
    from unirg.trainer.rl import build_trainer
    from unirg.trainer.rl_config import load_rl_config

    cfg = load_rl_config(config, overrides={
        "sft": str(sft), "data": str(data), "output_dir": str(out), "train_institutions": ["A", "B"],
        "max_steps": steps, "save_steps": steps + 1, "logging_steps": steps, "threads": threads,
        "merge_lora_for_generation": merge, "seed": 0})
    setup = build_trainer(cfg)
    setup.trainer.fold_greedy_drafts = fold
    start = time.perf_counter()
    setup.trainer.train()
    seconds = time.perf_counter() - start
    logged = next(h for h in setup.trainer.state.log_history if "reward" in h)
    return seconds, logged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft", type=Path, default=REPO / "var" / "models" / "unirg-demo")
    parser.add_argument("--data", type=Path, help="testbed directory (default: generate a small one)")
    parser.add_argument("--config", type=Path, default=REPO / "trainer" / "configs" / "rl-cpu-demo.toml")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if not (args.sft / "config.json").is_file():
        print(f"no model at {args.sft} (scripts/build-demo-model.sh puts the demo model there)", file=sys.stderr)
        return 2

    import torch

    torch.set_num_threads(args.threads)
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        data = args.data
        if data is None:
            from unirg.trainer.synth import generate_testbed

            data = Path(scratch) / "testbed"
            generate_testbed(data, patients=120, seed=0, size=256)
        for name, (merge, fold) in MODES.items():
            results[name] = _train(args.config, args.sft, data, Path(scratch) / "run", args.steps, merge, fold,
                                   args.threads)

    print(f"policy: {args.sft}; config: {args.config.name}; {args.steps} steps each; {args.threads} CPU threads")
    stock = results["stock"][0]
    for name, (seconds, logged) in results.items():
        print(f"{name:14s}: {seconds / args.steps:6.3f} s/step  ({seconds:6.1f} s)  x{stock / seconds:4.2f} vs stock"
              f"  mean reward {logged['reward']:.4f}, completion length {logged['completions/mean_length']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
