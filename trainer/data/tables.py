"""Small table readers shared by the loaders: CSV (also ``.csv.gz``), JSON and JSONL rows as dicts."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def open_text(path: str | os.PathLike[str]) -> IO[str]:
    """Open a text file, gunzipping ``*.gz``."""
    path = Path(path)
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def read_csv(path: str | os.PathLike[str]) -> Iterator[dict[str, str]]:
    """The rows of a CSV file with a header line, as dicts of strings."""
    with open_text(path) as f:
        yield from csv.DictReader(f)


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The objects of a JSON-lines file (blank lines skipped); errors name the line."""
    with open_text(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            yield record


def read_records(path: str | os.PathLike[str], *, key_field: str = "id") -> list[dict[str, Any]]:
    """Rows of a CSV, JSONL, or JSON file (a list of objects, or an object of objects keyed by id, the key
    then stored under ``key_field`` when the row lacks it)."""
    name = Path(path).name.lower().removesuffix(".gz")
    if name.endswith(".csv"):
        return list(read_csv(path))
    if name.endswith(".jsonl"):
        return list(read_jsonl(path))
    if name.endswith(".json"):
        with open_text(path) as f:
            data = json.load(f)
        if isinstance(data, list):
            return [dict(r) for r in data]
        if isinstance(data, dict):
            return [{key_field: k, **v} if key_field not in v else dict(v) for k, v in data.items()]
        raise ValueError(f"{path}: expected a JSON list or object, got {type(data).__name__}")
    raise ValueError(f"{path}: unknown table format (want .csv, .csv.gz, .json or .jsonl)")


def as_list(value: Any) -> list[Any]:
    """A list-valued cell: a list, a JSON / Python list literal ("['a', 'b']"), or one value."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    text = str(value).strip()
    if not text or text.lower() == "nan":
        return []
    if text.startswith("[") and text.endswith("]"):
        try:
            return list(json.loads(text))
        except json.JSONDecodeError:
            import ast

            try:
                return list(ast.literal_eval(text))
            except (ValueError, SyntaxError):
                pass
    return [text]
