"""``unirg feedback``: drafts against signed final reports, per study and summarized.

* ``unirg feedback --data-dir DIR [--queue-url URL] [--config F] [--json] [--since DATE] [--model-version V]``
  prints one line per paired study (``--json``: one JSON object per line), then the summary by model
  version and by observation (``--json``: one last object ``{"summary": ...}``, the shape of
  :func:`unirg.plugin.feedback.summary.summarize`, and ``"embedding"``: see :func:`embedding_status`).
  Pairs scored without an embedding similarity (``[feedback] embedding = false``, or no sentence model) are
  counted and the reason said, and so is ``[feedback]`` turning pairing or the embedding off now.
* ``unirg feedback import --study UID --text FILE`` pairs a final report's text from a RIS with the study's
  draft (``final_time`` now, source ``import``).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import click

from unirg.model.feedback import EMBEDDING_DISABLED, EMBEDDING_UNAVAILABLE, FeedbackRecord, read_pairs
from unirg.plugin.config import Config
from unirg.plugin.feedback.capture import import_final
from unirg.plugin.feedback.summary import summarize
from unirg.plugin.service import config_from, open_services

__all__ = ["feedback", "record_line", "parse_since", "embedding_status"]

_config_opt = click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
                           help="unirg.toml; UNIRG_<SECTION>_<KEY> env vars override it.")
_data_dir_opt = click.option("--data-dir", help="The service's data dir (its embedded queue database).")
_queue_opt = click.option("--queue-url", help="Queue database URL (default: SQLite in the data dir).")


def parse_since(text: str | None) -> float | None:
    """``YYYY-MM-DD`` or an ISO date-time (UTC unless it says otherwise) -> epoch seconds.

    >>> parse_since("2026-12-01")
    1796083200.0
    """
    if not text:
        return None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise click.BadParameter(f"{text!r} is not a date; write YYYY-MM-DD or YYYY-MM-DDTHH:MM",
                                 param_hint="--since") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.timestamp()


def record_line(r: FeedbackRecord) -> dict[str, Any]:
    """One paired study as ``--json`` prints it."""
    s = r.scores
    return {
        "study_uid": r.study_uid, "model_version": r.model_version, "draft_sop_uid": r.draft_sop_uid,
        "final_sop_uid": r.final_sop_uid, "source": r.source, "label_agreement": r.label_agreement,
        "discordant": s.get("discordant"), "bleu2": s.get("bleu2"), "rouge_l": s.get("rouge_l"),
        "embedding_similarity": s.get("embedding_similarity"), "embedding_skipped": s.get("embedding_skipped"),
        "judge_errors": s.get("judge_errors"),
        "final_time": r.final_time, "paired_at": r.paired_at, "images": len(r.images), "priors": r.priors,
    }


def embedding_status(records: list[FeedbackRecord], config: Config) -> dict[str, Any]:
    """Why pairs have no embedding similarity: ``{"enabled": [feedback] enabled, "embedding": [feedback]
    embedding (both as configured now), "disabled": pairs scored with the embedding off, "unavailable":
    pairs whose sentence model could not be loaded}``."""
    skipped = [r.scores.get("embedding_skipped") for r in records]
    return {"enabled": config.feedback.enabled, "embedding": config.feedback.embedding,
            "disabled": skipped.count(EMBEDDING_DISABLED), "unavailable": skipped.count(EMBEDDING_UNAVAILABLE)}


def _notes(status: dict[str, Any], n: int) -> list[str]:
    out = []
    if status["disabled"]:
        out.append(f"Embedding similarity: not computed for {status['disabled']} of {n} pairs "
                   "([feedback] embedding = false when they were paired); 'embed' leaves them out.")
    if status["unavailable"]:
        out.append(f"Embedding similarity: not computed for {status['unavailable']} of {n} pairs "
                   "(the sentence model could not be loaded; see the workers' log).")
    if not status["embedding"]:
        out.append("[feedback] embedding = false: new pairs get no embedding similarity (stored as null).")
    if not status["enabled"]:
        out.append("[feedback] enabled = false: the workers pair no new finals.")
    return out


def _f(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _text_lines(records: list[FeedbackRecord], summary: dict[str, Any]) -> list[str]:
    out = []
    for r in records:
        d = r.scores.get("discordant") or {}
        wrong = "; ".join(f"{k}: {', '.join(v)}" for k, v in d.items() if v) or "none"
        out.append(f"{r.study_uid}  {r.model_version}  agreement {_f(r.label_agreement)}  "
                   f"draft {r.draft_sop_uid}  final {r.final_sop_uid}  discordant {wrong}")
    out.append("")
    out.append(f"By model version ({summary['n']} paired studies):")
    out.append(f"  {'model version':<28} {'n':>4} {'agreement [95% CI]':>24} {'BLEU-2':>7} {'ROUGE-L':>8} "
               f"{'embed':>6}")
    for version, v in summary["by_version"].items():
        a = v["agreement"]
        ci = f"{_f(a['mean'])} [{_f(a['ci_low'])}, {_f(a['ci_high'])}]"
        out.append(f"  {version:<28} {v['n']:>4} {ci:>24} {_f(v['bleu2']):>7} {_f(v['rouge_l']):>8} "
                   f"{_f(v['embedding_similarity']):>6}")
    out.append("By observation:")
    out.append(f"  {'observation':<28} {'agreement':>9} {'missed':>7} {'false':>6} {'uncertain':>9}")
    for obs, o in summary["by_observation"].items():
        out.append(f"  {obs:<28} {_f(o['agreement']):>9} {o['missed']:>7} {o['false']:>6} {o['uncertain']:>9}")
    return out


@click.group("feedback", invoke_without_command=True)
@_config_opt
@_data_dir_opt
@_queue_opt
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line (the summary last).")
@click.option("--since", help="Only studies paired on or after this date (YYYY-MM-DD, UTC).")
@click.option("--model-version", help="Only drafts of this model version.")
@click.pass_context
def feedback(ctx: click.Context, config_path: str | None, data_dir: str | None, queue_url: str | None,
             as_json: bool, since: str | None, model_version: str | None) -> None:
    """Drafts against signed final reports: one line per paired study, then a summary by model version
    (agreement with a 95% bootstrap CI, BLEU-2, ROUGE-L, embedding similarity) and by observation."""
    if ctx.invoked_subcommand is not None:
        return
    cfg = config_from(config_path, {"listener.data_dir": data_dir, "queue.url": queue_url})
    services = open_services(cfg)
    try:
        records = read_pairs(services.queue.engine, since=parse_since(since), model_version=model_version)
    finally:
        services.close()
    summary = summarize(records)
    status = embedding_status(records, cfg)
    if as_json:
        for r in records:
            click.echo(json.dumps(record_line(r)))
        click.echo(json.dumps({"summary": summary, "embedding": status}))
        return
    for line in _text_lines(records, summary) + _notes(status, len(records)):
        click.echo(line)


@feedback.command("import")
@_config_opt
@_data_dir_opt
@_queue_opt
@click.option("--study", "study_uid", required=True, help="StudyInstanceUID of a drafted study.")
@click.option("--text", "text_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="File with the signed final report text (from the RIS).")
def import_cmd(config_path: str | None, data_dir: str | None, queue_url: str | None, study_uid: str,
               text_file: str) -> None:
    """Pair a final report's text from a RIS with the study's draft (final time: now)."""
    cfg = config_from(config_path, {"listener.data_dir": data_dir, "queue.url": queue_url})
    text = Path(text_file).read_text(encoding="utf-8")
    services = open_services(cfg)
    try:
        outcome = import_final(services.queue, services.ledger, cfg.data_dir, study_uid, text,
                               embedding=cfg.feedback.embedding)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    finally:
        services.close()
    if outcome == "no draft":
        raise click.ClickException(f"study {study_uid} has no done draft in this queue; nothing paired")
    click.echo(f"{study_uid}: {outcome}")
