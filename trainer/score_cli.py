"""``unirg-trainer score``: reward components of candidate reports against references."""

from __future__ import annotations

import json
import sys
from typing import IO, Any

import click

from unirg.trainer.label_cli import read_reports
from unirg.trainer.rewards import MODEL_FREE, REGISTRY, CompositeReward
from unirg.trainer.rewards.base import mean

DEFAULT_COMPONENTS = (*MODEL_FREE, "embedding_cosine")


def _parse_weights(text: str) -> dict[str, float]:
    weights = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not NAME=WEIGHT", param_hint="--weights")
        try:
            weights[name.strip()] = float(value)
        except ValueError as exc:
            raise click.BadParameter(f"weight of {name!r} is not a number: {value!r}", param_hint="--weights") from exc
    return weights


@click.command("score")
@click.option("--candidates", "candidates_file", required=True, type=click.File("r", encoding="utf-8"),
              help="Candidate reports, one per line (or see --jsonl-field).")
@click.option("--references", "references_file", required=True, type=click.File("r", encoding="utf-8"),
              help="Reference reports, one per line, in the same order.")
@click.option("--components", default=",".join(DEFAULT_COMPONENTS), show_default=True,
              help=f"Comma-separated components; known: {', '.join(sorted(REGISTRY))}.")
@click.option("--weights", default=None, metavar="NAME=W,...",
              help="Also print the weighted sum ('composite') of these components (added to --components).")
@click.option("--model-path", type=click.Path(exists=True, file_okay=False), default=None,
              help="Sentence-transformers checkpoint for embedding_cosine (default: the shipped all-MiniLM-L6-v2).")
@click.option("--bertscore-model", type=click.Path(exists=True, file_okay=False), default=None,
              help="Local model for bertscore (needs the bert-score package).")
@click.option("--bertscore-layers", type=int, default=None, help="Layer for bertscore.")
@click.option("--jsonl-field", metavar="NAME", default=None,
              help="Both files are JSONL; read the report from field NAME (dotted path).")
def score(candidates_file: IO[str], references_file: IO[str], components: str, weights: str | None,
          model_path: str | None, bertscore_model: str | None, bertscore_layers: int | None,
          jsonl_field: str | None) -> None:
    """Score each candidate report against its reference: one JSON line per pair with every component,
    then one line {"mean": {...}, "n": N}."""
    candidates = list(read_reports(candidates_file, jsonl_field=jsonl_field))
    references = list(read_reports(references_file, jsonl_field=jsonl_field))
    if len(candidates) != len(references):
        raise click.UsageError(f"{len(candidates)} candidates but {len(references)} references; they pair by line")
    names = [c.strip() for c in components.split(",") if c.strip()]
    weight_map = _parse_weights(weights) if weights else {}
    names += [n for n in weight_map if n not in names]
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise click.BadParameter(f"unknown components {unknown}; known: {', '.join(sorted(REGISTRY))}",
                                 param_hint="--components")
    options: dict[str, dict[str, Any]] = {}
    if model_path:
        options["embedding_cosine"] = {"model_path": model_path}
    if "bertscore" in names:
        if not bertscore_model or bertscore_layers is None:
            raise click.UsageError("bertscore needs --bertscore-model and --bertscore-layers")
        options["bertscore"] = {"model_path": bertscore_model, "num_layers": bertscore_layers}
    try:
        scorer = CompositeReward({n: weight_map.get(n, 0.0) for n in names},
                                 options={k: v for k, v in options.items() if k in names})
    except (ImportError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    parts = scorer.score_components(candidates, references)
    if weight_map:
        parts["composite"] = scorer.combine(parts)
    out = sys.stdout
    for i in range(len(candidates)):
        out.write(json.dumps({"index": i, **{k: v[i] for k, v in parts.items()}}) + "\n")
    out.write(json.dumps({"mean": {k: mean(v) for k, v in parts.items()}, "n": len(candidates)}) + "\n")
