"""The UniRG demonstration on the synthetic testbed (run it with ``experiments/unirg_demo.sh``).

1. testbed: ``generate_testbed`` (institutions A, B, C; C writes in a different style);
2. SFT on institutions A + B (``unirg.trainer.sft.train_sft``, what ``unirg-trainer sft`` runs) from a
   tiny random-weight Qwen3-VL, a share of the A/B patients held out (``holdout.json``);
3. RL from that checkpoint (``unirg.trainer.rl.train_rl``, what ``unirg-trainer rl`` runs) with
   ``trainer/configs/rl-cpu-demo.toml``: the unirg-step1 reward (offline substitutes), GRPO, clip-higher;
4. both models draft the held-out institution C and the held-out A/B patients, greedy, through
   ``unirg.model.load_model`` with the plugin's inputs (:func:`unirg.trainer.rl.study_input`);
5. ``unirg.trainer.evaluate.evaluate`` + ``compare`` (what ``unirg-trainer eval`` runs): the ReXrank-style
   table per split with patient-level paired bootstrap CIs, written to ``OUT/results.md``.

Sized for 2 CPU cores in well under 20 minutes (``--quick`` for a smoke run of a few minutes).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger("unirg_demo")

HEADLINE = ("chexpert_micro_f1_14", "chexpert_macro_f1_14", "chexpert_micro_f1_5", "radgraph", "semb",
            "semantic", "bleu2", "rouge_l", "judge_errors")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / "var" / "experiments" / "unirg-demo"))
    p.add_argument("--patients", type=int, default=40, help="Testbed patients (1-6 studies each).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sft-epochs", type=float, default=15.0)
    p.add_argument("--sft-lr", type=float, default=3e-3)
    p.add_argument("--rl-steps", type=int, default=30)
    p.add_argument("--rl-lr", type=float, default=None, help="Override the RL config's learning rate.")
    p.add_argument("--rl-config", default=str(REPO / "trainer" / "configs" / "rl-cpu-demo.toml"))
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--judge-model", default=None, help="Local instruct model for judge errors in the table.")
    p.add_argument("--judge-gguf", default=None)
    p.add_argument("--quick", action="store_true", help="Smoke run: fewer patients and steps.")
    p.add_argument("--reuse", action="store_true", help="Keep finished stages found in --out.")
    return p.parse_args(argv)


def stage(name: str):
    logger.info("=== %s", name)
    return time.monotonic()


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.patients, args.sft_epochs, args.rl_steps, args.n_boot = 24, 3.0, 6, 200
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "datasets", "filelock", "sentence_transformers", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)
    from unirg.model import GenerationConfig, load_model
    from unirg.trainer.data import load_dataset
    from unirg.trainer.evaluate import EvalConfig, Prediction, compare, evaluate, write_predictions
    from unirg.trainer.rl import study_input, train_rl
    from unirg.trainer.rl_config import load_rl_config
    from unirg.trainer.sft import train_sft
    from unirg.trainer.sft_config import load_config as load_sft_config
    from unirg.trainer.synth import generate_testbed

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    started = time.monotonic()

    # 1. testbed
    t = stage("testbed")
    testbed = out / "testbed"
    if not (args.reuse and (testbed / "manifest.jsonl").is_file()):
        generate_testbed(testbed, args.patients, args.seed, size=256)
    samples = load_dataset(testbed)
    timings["testbed"] = time.monotonic() - t

    # 2. SFT on A + B
    t = stage("SFT on institutions A+B")
    sft_dir = out / "sft"
    if not (args.reuse and (sft_dir / "unirg-model.json").is_file()):
        sft_cfg = load_sft_config(
            data=str(testbed), out=str(sft_dir), init="tiny-qwen3-vl", institutions=("A", "B"),
            eval_fraction=0.2, epochs=args.sft_epochs, lr=args.sft_lr, batch_size=8, threads=args.threads,
            seed=args.seed, logging_steps=20, save_steps=0, overwrite=True,
        )
        train_sft(sft_cfg)
    timings["sft"] = time.monotonic() - t

    # 3. RL from the SFT checkpoint
    t = stage("RL (GRPO, unirg-step1 reward) from the SFT checkpoint")
    rl_dir = out / "rl"
    if not (args.reuse and (rl_dir / "unirg-model.json").is_file()):
        rl_cfg = load_rl_config(args.rl_config, overrides={
            "sft": str(sft_dir), "data": str(testbed), "output_dir": str(rl_dir), "max_steps": args.rl_steps,
            "seed": args.seed, "threads": args.threads, "max_completion_length": args.max_new_tokens,
            **({"learning_rate": args.rl_lr} if args.rl_lr else {}),
        })
        train_rl(rl_cfg)
    timings["rl"] = time.monotonic() - t

    # 4. drafts on held-out C and held-out A/B (images decoded as in RL training)
    rl_image_size = load_rl_config(args.rl_config).image_size
    held = set(json.loads((sft_dir / "holdout.json").read_text())["patients"])
    splits = {
        "held-out institution C": [s for s in samples if s.institution == "C" and s.frontal is not None],
        "held-out A/B patients": [s for s in samples if s.institution in ("A", "B") and s.patient_id in held
                                  and s.frontal is not None],
    }
    t = stage(f"drafting {sum(map(len, splits.values()))} held-out studies with SFT and SFT+RL")
    generation = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=8)
    predictions: dict[str, dict[str, Prediction]] = {}
    for run, path in (("SFT", sft_dir), ("SFT+RL", rl_dir)):
        model = load_model(path, device="cpu")
        preds = {}
        for split in splits.values():
            studies = [study_input(s, size=rl_image_size) for s in split]
            for s, draft in zip(split, model.draft(studies, generation), strict=True):
                preds[s.sample_id] = Prediction(s.sample_id, draft.findings, draft.impression)
        predictions[run] = preds
        write_predictions(preds.values(), out / "eval" / f"{run.replace('+', '_')}-predictions.jsonl")
    timings["drafting"] = time.monotonic() - t

    # 5. evaluation + paired comparison
    t = stage("evaluation (bootstrap CIs)")
    judge = None
    if args.judge_model:
        from unirg.trainer.rewards.judge import judge_from_config

        judge = judge_from_config({"backend": "transformers", "model": args.judge_model,
                                   "gguf_file": args.judge_gguf, "cache": str(out / "judge-cache.sqlite")})
    eval_cfg = EvalConfig(section="findings", n_boot=args.n_boot, seed=args.seed, judge=judge,
                          groups=("institution", "prior"))
    sections = []
    summary = {"timings_s": timings, "splits": {}}
    for label, split in splits.items():
        runs = {run: evaluate(split, predictions[run], eval_cfg, name=run) for run in predictions}
        for run, result in runs.items():
            result.save(out / "eval" / label.replace(" ", "_").replace("/", ""), stem=run.replace("+", "_"))
        comparison = compare(runs, baseline="SFT", groups=())
        comparison.save(out / "eval" / label.replace(" ", "_").replace("/", ""), stem="compare")
        sections.append((label, len(split), comparison))
        summary["splits"][label] = comparison.to_dict()
    timings["evaluation"] = time.monotonic() - t
    timings["total"] = time.monotonic() - started

    rl_run = json.loads((rl_dir / "rl_run.json").read_text())
    history = [h for h in rl_run["log_history"] if "loss" in h]
    first, last = history[: max(1, len(history) // 5)], history[-max(1, len(history) // 5):]

    def avg(rows, key):
        values = [r[key] for r in rows if key in r]
        return sum(values) / len(values) if values else float("nan")

    lines = ["# UniRG demonstration: SFT vs SFT+RL on the synthetic testbed", "",
             f"Testbed: {args.patients} patients, seed {args.seed}. SFT on institutions A+B (tiny Qwen3-VL, "
             f"{args.sft_epochs:g} epochs); RL: {rl_run['global_step']} GRPO steps of "
             f"{rl_run['settings']['per_device_train_batch_size'] // rl_run['settings']['num_generations']} "
             f"prompt(s) x {rl_run['settings']['num_generations']} rollouts, lr {rl_run['settings']['learning_rate']:g}, "
             "the unirg-step1 reward (offline substitutes), from the SFT checkpoint. Greedy drafts; findings section; "
             f"{args.n_boot} paired patient-level bootstrap resamples, 95% CI; Δ = SFT+RL − SFT, "
             "* = CI excludes 0.", "",
             "RL training signal (mean of the first / last fifth of the logged steps): "
             + ", ".join(f"{k} {avg(first, k):.3f} → {avg(last, k):.3f}"
                         for k in ("reward", "rewards/radgraph_substitute/mean", "rewards/semb_substitute/mean",
                                   "rewards/embedding_cosine/mean", "frac_reward_zero_std")), ""]
    for label, n, comparison in sections:
        lines += [f"## {label} ({n} studies)", "", "| metric | SFT | SFT+RL | Δ |", "|---|---:|---:|---:|"]
        block = comparison.blocks[0]
        for m in comparison.metrics:
            if m.key not in HEADLINE or m.key not in block["metrics"]:
                continue
            cell = block["metrics"][m.key]

            def fmt(c):
                if c.get("value") is None:
                    return "n/a"
                text = f"{c['value']:.3f}"
                if c.get("ci_low") is not None:
                    text += f" [{c['ci_low']:.3f}, {c['ci_high']:.3f}]"
                return text

            d = cell["delta"]["SFT+RL"]
            star = " *" if d.get("ci_low") is not None and (d["ci_low"] > 0 or d["ci_high"] < 0) else ""
            sign = "+" if (d.get("value") or 0) >= 0 else ""
            lines.append(f"| {m.label} {m.arrow} | {fmt(cell['runs']['SFT'])} | {fmt(cell['runs']['SFT+RL'])} | "
                         f"{sign}{fmt(d)}{star} |")
        lines.append("")
    lines.append("Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text, encoding="utf-8")
    (out / "results.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
