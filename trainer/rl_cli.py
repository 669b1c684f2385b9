"""``unirg-trainer rl``: GRPO (or RLOO) of a report model on the composite clinical reward."""

from __future__ import annotations

import json
from pathlib import Path

import click

from unirg.trainer.presets import PRESETS

# CLI option -> RLConfig field (only options the user actually gave override the config file / preset)
_OPTION_FIELDS = {
    "sft": "sft",
    "data": "data",
    "output_dir": "output_dir",
    "algorithm": "algorithm",
    "max_steps": "max_steps",
    "epochs": "num_train_epochs",
    "num_generations": "num_generations",
    "batch_size": "per_device_train_batch_size",
    "grad_accum": "gradient_accumulation_steps",
    "learning_rate": "learning_rate",
    "beta": "beta",
    "temperature": "temperature",
    "max_completion_length": "max_completion_length",
    "max_samples": "max_train_samples",
    "save_steps": "save_steps",
    "logging_steps": "logging_steps",
    "seed": "seed",
    "threads": "threads",
    "bertscore_model": "bertscore_model",
    "bertscore_layers": "bertscore_layers",
    "chexbert_model": "chexbert_model",
    "radgraph_model": "radgraph_model",
    "use_vllm": "use_vllm",
    "vllm_mode": "vllm_mode",
}


@click.command("rl", context_settings={"show_default": True})
@click.option("--sft", type=click.Path(exists=True, file_okay=False), help="Start policy: the SFT output "
              "(checkpoint or LoRA adapter dir); for --preset unirg-step2, step 1's output.")
@click.option("--data", type=click.Path(exists=True), help="Training data (a testbed dir from `unirg-trainer synth`, "
              "a JSONL manifest, MIMIC-CXR / CheXpert Plus / ReXGradient roots, a DICOM folder).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="TOML/YAML config (format: unirg.trainer.rl_config). CLI options override it.")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), help="UniRG recipe (unirg.trainer.presets).")
@click.option("--output-dir", "-o", type=click.Path(file_okay=False), help="Run directory [default: var/runs/rl].")
@click.option("--algorithm", type=click.Choice(["grpo", "rloo"]), help="RL algorithm [default: grpo].")
@click.option("--institutions", help="Comma-separated institutions to train on (e.g. A,B).")
@click.option("--max-steps", type=int, help="Stop after this many optimizer steps (overrides epochs).")
@click.option("--epochs", type=float, help="Epochs over the training studies.")
@click.option("--num-generations", "-G", type=int, help="Rollouts per prompt (UniRG: 16).")
@click.option("--batch-size", type=int, help="Completions per device per step (a multiple of -G).")
@click.option("--grad-accum", type=int, help="Gradient accumulation steps.")
@click.option("--learning-rate", "--lr", type=float, help="Learning rate (UniRG: 5e-6).")
@click.option("--beta", type=float, help="KL coefficient against the start policy (step 2: 0.03).")
@click.option("--temperature", type=float, help="Sampling temperature of the rollouts.")
@click.option("--max-completion-length", type=int, help="Max new tokens per rollout.")
@click.option("--max-samples", type=int, help="Use at most this many training studies.")
@click.option("--save-steps", type=int, help="Save a resumable checkpoint every N steps.")
@click.option("--logging-steps", type=int, help="Log metrics every N steps.")
@click.option("--seed", type=int, help="Seed (sampling, LoRA init, data order, scaling pairs).")
@click.option("--threads", type=int, help="torch CPU threads.")
@click.option("--bertscore-model", type=click.Path(exists=True), help="Local model for the real BERTScore "
              "(else the sentence-embedding substitute).")
@click.option("--bertscore-layers", type=int, help="BERTScore layer for --bertscore-model.")
@click.option("--chexbert-model", type=click.Path(exists=True), help="CheXbert checkpoint for the real SembScore.")
@click.option("--radgraph-model", type=click.Path(exists=True), help="RadGraph checkpoint for the real RadGraph-F1.")
@click.option("--judge-model", type=click.Path(exists=True), help="Local instruct model (transformers) as the judge.")
@click.option("--judge-gguf", help="GGUF file name inside --judge-model.")
@click.option("--judge-base-url", help="OpenAI-compatible endpoint of the judge (…/v1).")
@click.option("--judge-name", help="Model name served at --judge-base-url.")
@click.option("--no-lora", is_flag=True, default=False, help="Full fine-tuning instead of a LoRA adapter.")
@click.option("--use-vllm/--no-vllm", default=None, help="Generate rollouts with vLLM (GPU only).")
@click.option("--vllm-mode", type=click.Choice(["colocate", "server"]), help="vLLM in-process or a `trl vllm-serve`.")
@click.option("--resume", "resume_last", is_flag=True, default=False,
              help="Continue from the last checkpoint in OUTPUT_DIR/checkpoints.")
@click.option("--resume-from", type=click.Path(exists=True, file_okay=False),
              help="Continue from this checkpoint directory.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Any config field (or section.key), value as a TOML literal: --set reward.scaling='\"none\"'.")
@click.option("--dry-run", is_flag=True, default=False, help="Print the resolved settings and reward table; "
              "do not load the model or train.")
def rl(config_file, preset, institutions, judge_model, judge_gguf, judge_base_url, judge_name, no_lora, resume_last,
       resume_from, sets, dry_run, **options) -> None:
    """Reinforcement learning (GRPO, or RLOO) from an SFT checkpoint on the composite clinical reward.

    \b
    Examples:
      unirg-trainer rl --sft var/runs/sft --data var/testbed --preset unirg-step1 --institutions A,B -o var/runs/rl1
      unirg-trainer rl --sft var/runs/rl1 --data var/testbed --preset unirg-step2 \\
          --judge-model /models/judge -o var/runs/rl2
      unirg-trainer rl --config trainer/configs/rl-cpu-demo.toml --sft ... --data ... --set max_steps=20
      accelerate launch --config_file trainer/configs/accelerate/zero2.yaml -m unirg.trainer.rl_cli \\
          --config trainer/configs/unirg-step1.toml --sft ... --data ...

    Logs per step: loss, rewards/<component>/mean|std for every reward term, reward, reward_std,
    frac_reward_zero_std (share of groups without reward variance: no gradient), kl (beta > 0), clip ratios.
    """
    from unirg.trainer.rl_config import load_rl_config, parse_override

    overrides = {field: options[name] for name, field in _OPTION_FIELDS.items() if options.get(name) is not None}
    if institutions:
        overrides["train_institutions"] = [i.strip() for i in institutions.split(",") if i.strip()]
    if no_lora:
        overrides["use_lora"] = False
    if judge_model or judge_base_url:
        judge = ({"backend": "transformers", "model": judge_model} if judge_model
                 else {"backend": "openai", "base_url": judge_base_url, "model": judge_name})
        if judge_gguf:
            judge["gguf_file"] = judge_gguf
        overrides["judge"] = judge
    for text in sets:
        key, value = parse_override(text)
        overrides[key] = value
    try:
        cfg = load_rl_config(config_file, preset=preset, overrides=overrides)
    except ValueError as exc:  # RLConfigError and TRL's own checks
        raise click.UsageError(str(exc)) from None

    if dry_run:
        from unirg.trainer.rl import reward_table, resolve_rewards

        click.echo(json.dumps(cfg.summary(), indent=1, default=str))
        click.echo(reward_table(resolve_rewards(cfg)).replace("mean|std per step", "mean|std per step; "
                                                               "scaling is fitted at start-up"))
        return
    from unirg.trainer.rl import train_rl

    if resume_last and resume_from:
        raise click.UsageError("give --resume or --resume-from, not both")
    result = train_rl(cfg, resume=resume_from or resume_last)
    last = {k: v for h in result.log_history for k, v in h.items()}
    click.echo(json.dumps({
        "out_dir": str(result.out_dir),
        "model": result.manifest.get("name"),
        "version": result.manifest.get("version"),
        "global_step": result.global_step,
        "train_samples": result.train_samples,
        "wall_s": round(result.wall_s, 1),
        "last_reward": last.get("reward"),
        "frac_reward_zero_std": result.metric("frac_reward_zero_std")[-1:] or None,
        "summary": str(Path(result.out_dir) / "rl_run.json"),
    }, indent=1))


def main() -> None:  # `python -m unirg.trainer.rl_cli` (e.g. under `accelerate launch`)
    rl(prog_name="unirg-trainer rl")


if __name__ == "__main__":
    main()
