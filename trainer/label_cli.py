"""``unirg-trainer label``: CheXpert-14 labels for reports in a text, CSV or JSONL file."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from typing import IO, Any

import click

from unirg.model.chexpert import OBSERVATIONS
from unirg.model.labeler import extract_mentions, label_report, report_text


def _field(obj: Any, path: str) -> Any:
    """``obj["a"]["b"]`` for ``path`` "a.b" (``None`` where a key is missing)."""
    for key in path.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def read_reports(stream: IO[str], *, csv_column: str | None = None, jsonl_field: str | None = None) -> Iterator[str]:
    """Report texts from ``stream``: one per line, or a CSV column, or a JSONL field (dotted path; a dict value
    such as the testbed manifest's ``report`` gives its findings and impression)."""
    if csv_column and jsonl_field:
        raise click.UsageError("give --csv-column or --jsonl-field, not both")
    if csv_column:
        reader = csv.DictReader(stream)
        if reader.fieldnames is None or csv_column not in reader.fieldnames:
            raise click.UsageError(f"CSV has no column {csv_column!r}; columns: {reader.fieldnames}")
        for row in reader:
            yield row[csv_column] or ""
    elif jsonl_field:
        for n, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise click.ClickException(f"line {n} is not JSON: {exc}") from exc
            yield report_text(_field(obj, jsonl_field))
    else:
        for line in stream:
            yield line.rstrip("\n")


@click.command("label")
@click.argument("file", type=click.File("r", encoding="utf-8"))
@click.option("--csv-column", metavar="NAME", help="FILE is CSV; label the column NAME.")
@click.option("--jsonl-field", metavar="NAME",
              help="FILE is JSONL; label the field NAME (dotted path, e.g. report.impression; a dict of sections "
                   "such as the testbed's 'report' gives findings + impression).")
@click.option("--mentions", is_flag=True, help="Print {'labels': ..., 'mentions': [...]} instead of the labels.")
def label(file: IO[str], csv_column: str | None, jsonl_field: str | None, mentions: bool) -> None:
    """Print the CheXpert-14 labels of each report in FILE ('-' for stdin) as one JSON line per report.

    FILE holds one report per line unless --csv-column or --jsonl-field is given. Labels: 1 positive,
    0 negative, -1 uncertain, null not mentioned.
    """
    out = sys.stdout
    for text in read_reports(file, csv_column=csv_column, jsonl_field=jsonl_field):
        labels = label_report(text)
        record: dict[str, Any] = {o: labels[o] for o in OBSERVATIONS}
        if mentions:
            record = {
                "labels": record,
                "mentions": [
                    {"observation": m.observation, "finding": m.finding, "label": m.label,
                     "laterality": m.laterality, "text": m.text, "span": list(m.span),
                     "sentence_span": list(m.sentence_span), "rule": m.rule}
                    for m in extract_mentions(text)
                ],
            }
        out.write(json.dumps(record) + "\n")
