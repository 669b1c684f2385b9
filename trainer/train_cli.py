"""``unirg-trainer sft`` and ``unirg-trainer publish``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

__all__ = ["publish", "sft"]

_DIR = click.Path(file_okay=False, path_type=Path)


def _institutions(_ctx, _param, value: str | None):
    if value is None:
        return None
    if value.strip().lower() in ("", "all"):
        return ()
    return tuple(part.strip() for part in value.split(",") if part.strip())


@click.command("sft")
@click.option("--data", type=_DIR, help="Testbed directory (manifest.jsonl) from `unirg-trainer synth`, or a JSONL "
              "manifest folder such as `unirg-trainer export` writes.")
@click.option("--out", type=_DIR, help="Output model directory (load it with --model OUT).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="TOML file with any of these settings (top level or [sft]); options override it.")
@click.option("--institutions", callback=_institutions,
              help="Comma-separated institutions to train on (default A,B; 'all' for every one).")
@click.option("--base", type=click.Path(exists=True, file_okay=False), help="Checkpoint directory to fine-tune.")
@click.option("--init", type=click.Choice(["tiny-qwen3-vl", "tiny-qwen2.5-vl"]),
              help="Start from a random tiny model built here (the demo model).")
@click.option("--lora/--full", default=None, help="LoRA adapters (default with --base) or full fine-tuning "
              "(default with --init).")
@click.option("--lora-r", type=int, help="LoRA rank (default 16).")
@click.option("--merge-lora/--no-merge-lora", default=None, help="Save the merged model instead of the adapter.")
@click.option("--epochs", type=float, help="Epochs (default 1; ignored when --max-steps is set).")
@click.option("--max-steps", type=int, help="Optimizer steps (overrides --epochs).")
@click.option("--lr", type=float, help="Peak learning rate (default 2e-4).")
@click.option("--batch-size", type=int, help="Examples per device step (default 4).")
@click.option("--grad-accum", type=int, help="Gradient accumulation steps (default 1).")
@click.option("--warmup", type=float, help="Warm-up: ratio of steps (< 1) or a step count.")
@click.option("--lr-scheduler", help="linear, cosine, constant, ... (default linear).")
@click.option("--seed", type=int, help="Seed for the model init, split, data order (default 0).")
@click.option("--eval-fraction", type=float, help="Share of patients held out (default 0.1).")
@click.option("--priors/--no-priors", default=None, help="Longitudinal examples with the prior image and report.")
@click.option("--prior-report-style", type=click.Choice(["text", "findings"]),
              help="Prior report in the prompt as written, or as the labeler's findings (default: the base's).")
@click.option("--image-size", "tiny_image_size", type=int, help="--init model: image side in pixels (default 128).")
@click.option("--patch-size", "tiny_patch_size", type=int,
              help="--init tiny-qwen3-vl: vision patch side (default 16; 32 reads 256 px into 16 tokens).")
@click.option("--hidden-size", "tiny_hidden_size", type=int, help="--init model: text width (default 128).")
@click.option("--layers", "tiny_layers", type=int, help="--init model: text layers (default 4).")
@click.option("--vision-hidden-size", "tiny_vision_hidden_size", type=int, help="--init model: vision width.")
@click.option("--vision-layers", "tiny_vision_layers", type=int, help="--init model: vision depth (default 2).")
@click.option("--vision-pretrain-epochs", type=float,
              help="Train the vision tower on the training studies' labels first (epochs; default 0: no).")
@click.option("--vision-pretrain-lr", type=float, help="Learning rate of vision pre-training (default 2e-3).")
@click.option("--freeze-vision/--train-vision", default=None,
              help="Keep the vision tower fixed during SFT (default: it trains).")
@click.option("--save-steps", type=int, help="Checkpoint every N steps and at the end (0: none).")
@click.option("--logging-steps", type=int, help="Log the loss every N steps.")
@click.option("--resume", is_flag=True, default=None, help="Continue from the newest checkpoint in OUT/checkpoints.")
@click.option("--overwrite", is_flag=True, default=None, help="Start again in an OUT that holds a model.")
@click.option("--threads", type=int, help="torch CPU threads.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="Default: cuda when available.")
@click.option("--trust-remote-code", is_flag=True, default=None,
              help="Run Python code shipped in the --base checkpoint (MAIRA-2 needs it). Read its *.py files first.")
@click.option("--name", help="Model name in unirg-model.json (default: OUT's name).")
@click.option("--version", "model_version", help="Model version (default sft-<weights hash>).")
@click.option("--evaluate/--no-evaluate", default=False, show_default=True,
              help="Afterwards, draft held-out studies and write CheXpert-14 F1 into the manifest.")
@click.option("--eval-institutions", default="C", show_default=True,
              help="Institutions evaluated in full besides the held-out patients (comma-separated).")
@click.option("--eval-max-studies", type=int, default=200, show_default=True,
              help="At most this many studies per evaluation set.")
def sft(config_file, evaluate, eval_institutions, eval_max_studies, model_version, **options) -> None:
    """Supervised fine-tuning of a report model on a testbed (TRL SFTTrainer).

    \b
    The demo model (what scripts/build-demo-model.sh runs):
      unirg-trainer sft --data var/testbed --out var/models/unirg-demo --init tiny-qwen3-vl \\
          --institutions A,B --max-steps 600 --lr 1e-3 --batch-size 8
    A real checkpoint, with LoRA:
      unirg-trainer sft --data var/testbed --out var/models/my-cxr --base /models/UniRG-CXR --lora
    """
    from unirg.trainer.sft import evaluate_model_dir, load_config, train_sft

    options["version"] = model_version
    try:
        config = load_config(config_file, **options)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        result = train_sft(config)
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    losses = result.losses
    click.echo(
        f"trained {result.manifest['name']} version {result.manifest['version']} in {result.wall_s:.0f} s: "
        f"{result.manifest['training']['steps']} steps on {len(result.train_examples)} studies, "
        f"loss {losses[0]:.3f} -> {losses[-1]:.3f}" if losses else "no loss logged"
    )
    if evaluate:
        institutions = tuple(part.strip() for part in eval_institutions.split(",") if part.strip())
        metrics = evaluate_model_dir(result.out_dir, config, institutions=institutions, max_studies=eval_max_studies)
        for name, scores in metrics["sets"].items():
            click.echo(
                f"{name:>12}: n={scores['n']:4d}  CheXpert-14 micro F1 {scores['model']['micro']['f1']:.3f} "
                f"(baseline {scores['baseline']['micro']['f1']:.3f}), top-5 {scores['model']['micro_top5']['f1']:.3f} "
                f"(baseline {scores['baseline']['micro_top5']['f1']:.3f}), macro {scores['model']['macro_f1']:.3f}"
            )
    click.echo(f"model: {result.out_dir}  (unirg draft STUDY --model {result.out_dir} --out DIR)")


@click.command("publish")
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Trained model directory (from sft or rl).")
@click.option("--to", "publish_dir", required=True, type=_DIR, help="The directory the workers watch.")
@click.option("--version", help="Version to publish as (default: the model's manifest version).")
@click.option("--metrics", "metrics_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON file of metrics to record in the published manifest.")
def publish(model_dir: Path, publish_dir: Path, version: str | None, metrics_file: Path | None) -> None:
    """Publish a model for hot reload: copy it to PUBLISH_DIR/versions/V, then flip current.json.

    Running workers (ModelWatcher) swap it in between jobs; the next SR names version V.
    """
    from unirg.trainer.publish import PublishError, publish_model

    metrics = None
    if metrics_file is not None:
        try:
            metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="'--metrics'") from None
    try:
        result = publish_model(model_dir, publish_dir, version=version, metrics=metrics)
    except PublishError as exc:
        raise click.ClickException(str(exc)) from None
    logging.getLogger(__name__).info("published %s", result.path)
    click.echo(
        f"published {result.version} ({result.weights_sha256[:12]}) to {result.path}; "
        f"current: {result.version} (was {result.previous or 'none'})"
    )
