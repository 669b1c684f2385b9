"""``unirg-trainer eval``: the ReXrank-style table of a report generator, with bootstrap CIs.

Either score a predictions file (JSONL of ``sample_id`` + ``findings`` / ``impression``) against a dataset,
or draft the dataset's studies with a model first (``--model``); optionally compare saved runs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import click

from unirg.trainer.data import FORMATS, load_dataset, split_by_patient
from unirg.trainer.evaluate import (
    DEFAULT_GROUPS,
    GROUPS,
    SECTIONS,
    EvalConfig,
    EvalResult,
    compare,
    evaluate,
    generate_predictions,
    read_predictions,
    write_predictions,
)

log = logging.getLogger(__name__)


def _parse_fractions(text: str) -> dict[str, float]:
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not NAME=FRACTION", param_hint="--split-fractions")
        out[name.strip()] = float(value)
    return out


def _parse_runs(items: tuple[str, ...]) -> dict[str, Path]:
    runs = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"{item!r} is not NAME=EVAL.json", param_hint="--compare")
        if not Path(path).is_file():
            raise click.BadParameter(f"{path} does not exist", param_hint="--compare")
        runs[name] = Path(path)
    return runs


def _judge(model: str | None, gguf: str | None, base_url: str | None, cache: str | None):
    if not model and not base_url:
        return None
    from unirg.trainer.rewards.judge import judge_from_config

    cfg = {"backend": "openai" if base_url else "transformers", "model": model, "gguf_file": gguf,
           "base_url": base_url, "cache": cache}
    return judge_from_config({k: v for k, v in cfg.items() if v is not None})


@click.command("eval")
@click.option("--data", "--manifest", "data", type=click.Path(exists=True),
              help="Dataset: a testbed folder, a JSONL manifest, a MIMIC-CXR / ReXGradient root, a CheXpert "
                   "Plus CSV or a DICOM folder.")
@click.option("--data-format", type=click.Choice(FORMATS), default="auto", show_default=True)
@click.option("--predictions", type=click.Path(exists=True, dir_okay=False),
              help="JSONL: one {sample_id, findings, impression} per line.")
@click.option("--model", "model_path", type=click.Path(exists=True, file_okay=False),
              help="Draft the studies with this checkpoint (unirg.model.load_model) instead.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder: eval.json, eval.md, eval.png (+ predictions.jsonl, compare.*).")
@click.option("--name", default=None, help="Run name in tables (default: predictions file / model folder name).")
@click.option("--section", type=click.Choice(SECTIONS), default="findings", show_default=True,
              help="Which report text is compared.")
@click.option("--institution", "institutions", multiple=True, help="Keep only these institutions (repeatable).")
@click.option("--split", "official_split", default=None, help="Keep only this split of the source (Sample.split).")
@click.option("--patient-split", default=None, help="Keep only this patient-level hash split (e.g. test).")
@click.option("--split-seed", default=0, show_default=True, type=int)
@click.option("--split-fractions", default="train=0.8,val=0.1,test=0.1", show_default=True)
@click.option("--group", "groups", multiple=True, type=click.Choice(sorted(GROUPS)),
              help=f"Group rows (repeatable; default: {', '.join(DEFAULT_GROUPS)}).")
@click.option("--n-boot", default=1000, show_default=True, type=click.IntRange(min=0), help="Bootstrap resamples.")
@click.option("--seed", default=0, show_default=True, type=int, help="Bootstrap seed.")
@click.option("--resample", type=click.Choice(["patient", "report"]), default="patient", show_default=True,
              help="Bootstrap unit.")
@click.option("--ci", default=0.95, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True))
@click.option("--semantic", type=click.Choice(["auto", "bertscore", "embedding", "none"]), default="auto",
              show_default=True, help="auto: BERTScore if --bertscore-model, else embedding cosine.")
@click.option("--embedding-model", type=click.Path(exists=True, file_okay=False), default=None,
              help="Sentence-transformers checkpoint (default: the shipped all-MiniLM-L6-v2).")
@click.option("--bertscore-model", type=click.Path(exists=True, file_okay=False), default=None)
@click.option("--bertscore-layers", type=int, default=None)
@click.option("--judge-model", default=None, help="Judge: local causal LM path, or the served model name.")
@click.option("--judge-gguf-file", default=None, help="GGUF file inside --judge-model.")
@click.option("--judge-base-url", default=None, help="OpenAI-compatible endpoint for the judge.")
@click.option("--judge-cache", default=None, help="SQLite cache of judge answers.")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(min=1), help="--model batches.")
@click.option("--max-new-tokens", default=300, show_default=True, type=click.IntRange(min=1))
@click.option("--image-size", default=512, show_default=True, type=click.IntRange(min=16))
@click.option("--device", default=None, help="--model device (default: cuda when available).")
@click.option("--trust-remote-code", is_flag=True,
              help="Run Python code shipped in the --model checkpoint (MAIRA-2 needs it). Read its *.py files first.")
@click.option("--compare", "compare_with", multiple=True, metavar="NAME=EVAL.json",
              help="Also compare with saved runs (repeatable); the first is the baseline.")
def eval_command(data: str | None, data_format: str, predictions: str | None, model_path: str | None,
                 out_dir: str, name: str | None, section: str, institutions: tuple[str, ...],
                 official_split: str | None, patient_split: str | None, split_seed: int, split_fractions: str,
                 groups: tuple[str, ...], n_boot: int, seed: int, resample: str, ci: float, semantic: str,
                 embedding_model: str | None, bertscore_model: str | None, bertscore_layers: int | None,
                 judge_model: str | None, judge_gguf_file: str | None, judge_base_url: str | None,
                 judge_cache: str | None, batch_size: int, max_new_tokens: int, image_size: int,
                 device: str | None, trust_remote_code: bool, compare_with: tuple[str, ...]) -> None:
    """Evaluate report drafts: BLEU-2, ROUGE-L, semantic score, SembScore / RadGraph-F1 substitutes,
    RadCliQ-v1, CheXpert-14 / top-5 F1 and judge errors, overall and by institution, sex, age band and
    prior, with bootstrap CIs.

    \b
    Examples:
      unirg-trainer eval --data testbed --predictions preds.jsonl --out eval/sft --institution C
      unirg-trainer eval --data testbed --model ckpt/rl --out eval/rl --compare SFT=eval/sft/eval.json
    """
    saved = _parse_runs(compare_with)
    if predictions and model_path:
        raise click.UsageError("give --predictions or --model, not both")
    out = Path(out_dir)
    runs: dict[str, EvalResult] = {n: EvalResult.load(p) for n, p in saved.items()}
    if predictions or model_path:
        if not data:
            raise click.UsageError("--data (or --manifest) is required with --predictions / --model")
        try:
            samples = load_dataset(data, data_format)
        except (FileNotFoundError, ValueError) as exc:
            raise click.ClickException(f"cannot load {data}: {exc}") from exc
        if institutions:
            samples = [s for s in samples if s.institution in set(institutions)]
        if official_split:
            samples = [s for s in samples if s.split == official_split]
        if patient_split:
            fractions = _parse_fractions(split_fractions)
            if patient_split not in fractions:
                raise click.BadParameter(f"{patient_split!r} is not in --split-fractions", param_hint="--patient-split")
            samples = split_by_patient(samples, seed=split_seed, fractions=fractions)[patient_split]
        if not samples:
            raise click.ClickException("no samples left after the filters")
        if model_path:
            from unirg.model import GenerationConfig, load_model

            try:
                model = load_model(model_path, device=device, trust_remote_code=trust_remote_code)
            except ValueError as exc:  # RemoteCodeNotTrusted, WeightsMismatch: say what to do
                raise click.ClickException(str(exc)) from None
            click.echo(f"drafting {len(samples)} studies with {model.info.name} {model.info.version}", err=True)
            preds = generate_predictions(
                model, samples, generation=GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size),
                image_size=image_size, progress=lambda done, total: click.echo(f"  {done}/{total}", err=True))
            write_predictions(preds.values(), out / "predictions.jsonl")
        else:
            try:
                preds = read_predictions(predictions)
            except ValueError as exc:
                raise click.ClickException(str(exc)) from exc
        try:
            config = EvalConfig(section=section, n_boot=n_boot, seed=seed, resample=resample, ci=ci,
                                groups=tuple(groups) or DEFAULT_GROUPS, semantic=semantic,
                                embedding_model=embedding_model, bertscore_model=bertscore_model,
                                bertscore_layers=bertscore_layers,
                                judge=_judge(judge_model, judge_gguf_file, judge_base_url, judge_cache))
        except (ValueError, ImportError, FileNotFoundError, RuntimeError) as exc:
            raise click.ClickException(str(exc)) from exc
        run_name = name or (Path(predictions).stem if predictions else Path(model_path).name)
        start = time.monotonic()
        try:
            result = evaluate(samples, preds, config, name=run_name)
        except (ValueError, ImportError, FileNotFoundError) as exc:
            raise click.ClickException(str(exc)) from exc
        paths = result.save(out)
        click.echo(result.to_markdown())
        click.echo(f"{result.overall['n']} reports in {time.monotonic() - start:.1f} s -> "
                   + ", ".join(str(p) for p in paths.values()))
        if run_name in runs:
            raise click.UsageError(f"--compare already has a run named {run_name!r}; pass --name")
        runs[run_name] = result
    elif not saved:
        raise click.UsageError("give --predictions or --model (with --data), or --compare runs")
    if saved:
        if len(runs) < 2:
            raise click.UsageError("--compare needs at least two runs (saved runs plus this one)")
        try:
            comparison = compare(runs, groups=[g for g in (groups or ("institution",))])
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
        paths = comparison.save(out)
        click.echo(comparison.to_markdown())
        click.echo("comparison -> " + ", ".join(str(p) for p in paths.values()))
