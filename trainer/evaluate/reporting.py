""":class:`EvalResult` and :class:`Comparison` with their JSON, markdown and figure output."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unirg.trainer.evaluate.metrics import Metric, ReportScores


# -- the result ------------------------------------------------------------------------------------------------
@dataclass
class EvalResult:
    """Metrics overall and per group with CIs; :meth:`save` writes JSON, markdown and a PNG figure."""

    name: str
    metrics: list[Metric]
    overall: dict[str, Any]
    groups: dict[str, dict[str, dict[str, Any]]]
    info: dict[str, Any]
    scores: ReportScores | None = None

    def metric(self, key: str) -> Metric:
        return next(m for m in self.metrics if m.key == key)

    def value(self, key: str, group: str | None = None, level: str | None = None) -> float | None:
        """The point estimate of ``key`` overall, or in ``group=level``."""
        block = self.overall if group is None else self.groups[group][level]
        return block["metrics"][key]["value"]

    def to_dict(self, *, include_reports: bool = True) -> dict[str, Any]:
        d = {"name": self.name, "metrics": [dataclasses.asdict(m) for m in self.metrics],
             "overall": self.overall, "groups": self.groups, "info": self.info}
        if include_reports and self.scores is not None:
            d["reports"] = self.scores.rows()
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvalResult:
        rows = d.get("reports")
        return cls(d["name"], [Metric(**m) for m in d["metrics"]], d["overall"], d["groups"], d["info"],
                   ReportScores.from_rows(rows) if rows else None)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EvalResult:
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def to_markdown(self) -> str:
        return render_markdown(self)

    def save(self, out_dir: str | os.PathLike[str], stem: str = "eval") -> dict[str, Path]:
        """Write ``STEM.json`` (with per-report rows), ``STEM.md`` and ``STEM.png`` into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md", "figure": out / f"{stem}.png"}
        _write_text(paths["json"], json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")
        _write_text(paths["markdown"], self.to_markdown())
        plot_result(self, paths["figure"])
        return paths


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# -- rendering -------------------------------------------------------------------------------------------------
def format_cell(cell: Mapping[str, Any] | None, digits: int = 3) -> str:
    """``value [ci_low, ci_high]`` of a metric cell (``n/a`` when it has no value)."""
    if cell is None or cell.get("value") is None:
        return "n/a"
    text = f"{cell['value']:.{digits}f}"
    if cell.get("ci_low") is not None:
        text += f" [{cell['ci_low']:.{digits}f}, {cell['ci_high']:.{digits}f}]"
    return text


def render_markdown(result: EvalResult) -> str:
    """The ReXrank-style table (rows: overall and every group level; cells: value [CI])."""
    cols = result.metrics
    lines = [f"# Evaluation: {result.name}", ""]
    counts = result.info.get("counts", {})
    cfg = result.info.get("config", {})
    lines.append(f"{result.overall['n']} reports of {result.overall['n_patients']} patients; section: "
                 f"{cfg.get('section')}; {result.info.get('bootstrap')}.")
    left = {k: v for k, v in counts.items() if k != "samples" and isinstance(v, int) and v}
    if left:
        lines.append("Left out: " + "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in left.items()) + ".")
    lines += [f"{k.replace('_', ' ')}: {v}." for k, v in counts.items() if isinstance(v, str)]
    lines += ["", "| group | n | " + " | ".join(f"{m.label} {m.arrow}" for m in cols) + " |",
              "|---|---:|" + "---:|" * len(cols)]

    def row(label: str, block: Mapping[str, Any]) -> str:
        cells = [format_cell(block["metrics"].get(m.key)) for m in cols]
        return f"| {label} | {block['n']} | " + " | ".join(cells) + " |"

    lines.append(row("**overall**", result.overall))
    for g, levels in result.groups.items():
        for level, block in levels.items():
            lines.append(row(f"{g} = {level}", block))
    lines += ["", "Metrics:", ""]
    for m in cols:
        kind = "" if m.real else " **substitute**"
        lines.append(f"- {m.label} ({'higher' if m.higher_is_better else 'lower'} is better){kind}"
                     + (f": {m.note}" if m.note else ""))
    return "\n".join(lines) + "\n"


FIGURE_METRICS = ("chexpert_micro_f1_14", "chexpert_micro_f1_5", "chexpert_macro_f1_14", "radgraph", "semb",
                  "semantic", "bleu2", "rouge_l", "inv_radcliq_v1", "judge_errors", "judge_ge4")


def _figure(n_panels: int, n_rows: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = min(4, n_panels)
    nrows = math.ceil(n_panels / ncols)
    fig = Figure(figsize=(4.2 * ncols, 0.8 + nrows * (0.6 + 0.28 * n_rows)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes


def _xerr(cell: Mapping[str, Any]) -> list[list[float]] | None:
    if cell.get("ci_low") is None:
        return None
    return [[max(0.0, cell["value"] - cell["ci_low"])], [max(0.0, cell["ci_high"] - cell["value"])]]


def plot_result(result: EvalResult, path: str | os.PathLike[str]) -> Path:
    """A PNG: one panel per key metric, a point with its CI per row (overall and every group level)."""
    keys = [k for k in FIGURE_METRICS if any(m.key == k for m in result.metrics)
            and (result.overall["metrics"].get(k) or {}).get("value") is not None]
    rows = [("overall", result.overall)] + [(f"{g}={lv}", b) for g, lvs in result.groups.items()
                                            for lv, b in lvs.items()]
    fig, axes = _figure(len(keys), len(rows))
    ys = np.arange(len(rows))[::-1]
    for ax, key in zip(axes, keys, strict=False):
        m = result.metric(key)
        for y, (_, block) in zip(ys, rows, strict=True):
            cell = block["metrics"].get(key) or {}
            if cell.get("value") is None:
                continue
            ax.errorbar(cell["value"], y, xerr=_xerr(cell), fmt="o", color="C0" if y != ys[0] else "C3", capsize=3)
        ax.set_yticks(ys, [label for label, _ in rows], fontsize=7)
        ax.set_title(f"{m.label} {m.arrow}", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{result.name}: {result.overall['n']} reports, {result.info.get('bootstrap', '')}", fontsize=9)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


# -- comparing runs --------------------------------------------------------------------------------------------
@dataclass
class Comparison:
    """Runs side by side with CIs, and each run minus the baseline with paired-bootstrap CIs."""

    runs: list[str]
    baseline: str
    metrics: list[Metric]
    blocks: list[dict[str, Any]]  # {"group", "n", "n_patients", "metrics": {key: {"runs": {...}, "delta": {...}}}}
    info: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"runs": self.runs, "baseline": self.baseline, "metrics": [dataclasses.asdict(m) for m in self.metrics],
                "blocks": self.blocks, "info": self.info}

    def to_markdown(self) -> str:
        others = [r for r in self.runs if r != self.baseline]
        lines = [f"# Comparison: {', '.join(self.runs)} (baseline {self.baseline})", "",
                 f"{self.info['bootstrap']}; Δ = run − baseline on the same resamples (paired); "
                 "* marks a Δ whose CI excludes 0.", ""]
        for block in self.blocks:
            lines += [f"## {block['group']} ({block['n']} reports, {block['n_patients']} patients)", "",
                      "| metric | " + " | ".join(self.runs) + " | " + " | ".join(f"Δ {r}" for r in others) + " |",
                      "|---|" + "---:|" * (len(self.runs) + len(others))]
            for m in self.metrics:
                cell = block["metrics"].get(m.key)
                if cell is None:
                    continue
                deltas = []
                for r in others:
                    d = cell["delta"][r]
                    text = format_cell(d)
                    if d.get("value") is not None and d["value"] >= 0:
                        text = "+" + text
                    if d.get("ci_low") is not None and (d["ci_low"] > 0 or d["ci_high"] < 0):
                        text += " *"
                    deltas.append(text)
                lines.append(f"| {m.label} {m.arrow} | " + " | ".join(format_cell(cell["runs"][r]) for r in self.runs)
                             + " | " + " | ".join(deltas) + " |")
            lines.append("")
        return "\n".join(lines)

    def save(self, out_dir: str | os.PathLike[str], stem: str = "compare") -> dict[str, Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md", "figure": out / f"{stem}.png"}
        _write_text(paths["json"], json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")
        _write_text(paths["markdown"], self.to_markdown())
        plot_comparison(self, paths["figure"])
        return paths


def plot_comparison(comparison: Comparison, path: str | os.PathLike[str]) -> Path:
    """A PNG: one panel per key metric, each run's value and CI per group."""
    keys = [k for k in FIGURE_METRICS if any(m.key == k for m in comparison.metrics)]
    groups = [b["group"] for b in comparison.blocks]
    fig, axes = _figure(len(keys), len(groups) * len(comparison.runs))
    ys = np.arange(len(groups))[::-1].astype(float)
    offsets = np.linspace(-0.25, 0.25, len(comparison.runs))
    for ax, key in zip(axes, keys, strict=False):
        m = next(x for x in comparison.metrics if x.key == key)
        for j, run in enumerate(comparison.runs):
            for y, block in zip(ys, comparison.blocks, strict=True):
                cell = block["metrics"][key]["runs"][run]
                if cell["value"] is None:
                    continue
                ax.errorbar(cell["value"], y + offsets[j], xerr=_xerr(cell), fmt="o", color=f"C{j}", capsize=3,
                            label=run if y == ys[0] else None)
        ax.set_yticks(ys, groups, fontsize=7)
        ax.set_title(f"{m.label} {m.arrow}", fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    if keys:
        axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"{' vs '.join(comparison.runs)}: {comparison.info['bootstrap']}", fontsize=9)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path
