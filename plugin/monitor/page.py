"""The status page: one self-contained HTML document (inline CSS, charts as inline SVG drawn here, no
script, nothing fetched from anywhere), a pure function of a snapshot
(:func:`unirg.plugin.monitor.snapshot.build_snapshot`).

Elements carry ``data-cy`` names (``queue-queued``, ``drafts-24h``, ``chart-drafts``, ``chart-agreement``,
``failure-reason``, ...) so tests and scrapers can find the numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from html import escape
from typing import Any

__all__ = ["render_page", "drafts_chart", "agreement_chart"]

#: Line colours of the agreement chart, one per model version (cycled).
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b")

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1b1f24;background:#f6f7f9}
header{background:#7a1f1f;color:#fff;padding:10px 20px}
header h1{margin:0;font-size:20px} .label{font-weight:700;letter-spacing:.02em}
main{padding:12px 20px;max-width:1200px}
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:10px 16px;margin:12px 0}
h2{font-size:16px;margin:4px 0 8px}
.cards{display:flex;gap:10px;flex-wrap:wrap}
.card{border:1px solid #dde1e6;border-radius:6px;padding:6px 14px;min-width:90px}
.card .n{font-size:24px;font-weight:700} .card .k{color:#57606a}
table{border-collapse:collapse} th,td{border-bottom:1px solid #eaecef;padding:3px 10px;text-align:right}
th:first-child,td:first-child{text-align:left} td.reason{text-align:left;max-width:700px;word-break:break-word}
.muted{color:#57606a} svg{display:block;max-width:100%} .legend span{margin-right:14px}
.swatch{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-1px}
"""


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], cy: str, empty: str) -> str:
    """A table of already-escaped cells (each row a ``<tr data-cy="{cy}">``)."""
    if not rows:
        return f'<p class="muted" data-cy="{cy}-empty">{escape(empty)}</p>'
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join(f'<tr data-cy="{cy}">' + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def drafts_chart(per_hour: Sequence[Mapping[str, Any]], width: int = 720, height: int = 160) -> str:
    """An SVG bar chart of drafts per hour (one ``rect.bar`` per hour, its count in a ``<title>``)."""
    pad_l, pad_b, pad_t = 34, 22, 8
    n = max(len(per_hour), 1)
    top = max([h["count"] for h in per_hour] + [1])
    slot = (width - pad_l) / n
    plot_h = height - pad_b - pad_t
    parts = [f'<svg data-cy="chart-drafts" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'role="img" aria-label="drafts per hour, last 24 hours">',
             f'<line x1="{pad_l}" y1="{height - pad_b}" x2="{width}" y2="{height - pad_b}" stroke="#888"/>',
             f'<text x="{pad_l - 4}" y="{pad_t + 10}" text-anchor="end" font-size="11">{top}</text>',
             f'<text x="{pad_l - 4}" y="{height - pad_b}" text-anchor="end" font-size="11">0</text>']
    for i, h in enumerate(per_hour):
        bar_h = plot_h * h["count"] / top
        x = pad_l + i * slot + 1
        hour = datetime.fromtimestamp(h["start"], timezone.utc).strftime("%H:00")
        parts.append(f'<rect class="bar" data-count="{h["count"]}" x="{x:.1f}" y="{height - pad_b - bar_h:.1f}" '
                     f'width="{max(slot - 2, 1):.1f}" height="{bar_h:.1f}" fill="#1f77b4">'
                     f'<title>{hour} UTC: {h["count"]} drafts</title></rect>')
        if i % 3 == 0:
            parts.append(f'<text x="{x + slot / 2:.1f}" y="{height - 6}" text-anchor="middle" '
                         f'font-size="10">{hour}</text>')
    parts.append("</svg>")
    return "".join(parts)


def agreement_chart(by_day: Sequence[Mapping[str, Any]], width: int = 720, height: int = 220) -> str:
    """An SVG line chart of mean label agreement per day, one line (``polyline``) and one ``circle.point``
    per day for each model version, y from 0 to 100 %."""
    days = sorted({d["day"] for d in by_day})
    versions = sorted({d["model_version"] for d in by_day})
    if not days:
        return '<p class="muted" data-cy="chart-agreement-empty">No draft has been paired with a final report yet.</p>'
    pad_l, pad_r, pad_b, pad_t, inset = 44, 16, 26, 10, 40
    plot_w, plot_h = width - pad_l - pad_r, height - pad_b - pad_t

    def x_of(day: str) -> float:  # days evenly spaced, ``inset`` px in from both ends (room for labels)
        span = plot_w - 2 * inset
        return pad_l + inset + (span / 2 if len(days) == 1 else span * days.index(day) / (len(days) - 1))

    def y_of(value: float) -> float:
        return pad_t + plot_h * (1 - value)

    parts = [f'<svg data-cy="chart-agreement" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
             f'role="img" aria-label="label agreement per day by model version">']
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = y_of(tick)
        parts.append(f'<line x1="{pad_l}" y1="{y:.1f}" x2="{width - pad_r}" y2="{y:.1f}" stroke="#e3e6ea"/>'
                     f'<text x="{pad_l - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{int(tick * 100)}%</text>')
    step = max(1, len(days) // 8)
    for i, day in enumerate(days):
        if i % step == 0 or i == len(days) - 1:
            parts.append(f'<text x="{x_of(day):.1f}" y="{height - 8}" text-anchor="middle" font-size="10">'
                         f'{escape(day)}</text>')
    for k, version in enumerate(versions):
        colour = PALETTE[k % len(PALETTE)]
        points = [(x_of(d["day"]), y_of(d["mean"]), d) for d in by_day if d["model_version"] == version]
        if len(points) > 1:
            coords = " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in points)
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}"/>')
        for x, y, d in points:
            parts.append(f'<circle class="point" data-version="{escape(version)}" cx="{x:.1f}" cy="{y:.1f}" r="4" '
                         f'fill="{colour}"><title>{escape(version)} {escape(d["day"])}: {_pct(d["mean"])} '
                         f'(n={d["n"]})</title></circle>')
    parts.append("</svg>")
    legend = "".join(f'<span><i class="swatch" style="background:{PALETTE[k % len(PALETTE)]}"></i>'
                     f"{escape(v)}</span>" for k, v in enumerate(versions))
    return "".join(parts) + f'<div class="legend">{legend}</div>'


def _card(key: str, label: str, value: Any) -> str:
    return (f'<div class="card"><div class="n" data-cy="{key}">{escape(str(value))}</div>'
            f'<div class="k">{escape(label)}</div></div>')


def render_page(snapshot: Mapping[str, Any], *, title: str = "unirg status", refresh_s: int = 60) -> str:
    """The whole status page for ``snapshot``."""
    q, drafts, lat = snapshot["queue"], snapshot["drafts"], snapshot["latency"]
    fails, agr = snapshot["failures"], snapshot["agreement"]
    label = escape(snapshot.get("research_label") or "RESEARCH ONLY - NOT FOR CLINICAL USE")

    queue_cards = "".join(_card(f"queue-{k}", text, q.get(k, 0)) for k, text in (
        ("queued", "queued"), ("retrying", "retrying (of queued)"), ("in_flight", "in flight"),
        ("done", "done"), ("failed", "failed")))
    studies = ", ".join(f"{escape(str(n))} {escape(s)}" for s, n in sorted(snapshot.get("studies", {}).items()))

    lat_rows = [[escape(name), _num(s["count"]), _num(s["p50"]), _num(s["p90"]), _num(s["max"])]
                for name, s in (("study stable -> SR stored", lat["stable_to_stored_s"]),
                                ("model alone", lat["model_s"]), ("worker, whole job", lat["job_s"]))]
    version_rows = [[escape(v), str(n)] for v, n in drafts["by_model_version"].items()]

    reason_rows = [[f'<span class="reason">{escape(r)}</span>', str(n)] for r, n in fails["by_reason"].items()]
    recent_rows = [[str(f["id"]), escape(f["study_uid"]), str(f["revision"]), str(f["attempts"]),
                    f'<span data-cy="failure-reason">{escape(f["reason"])}</span>', escape(_time(f["at"]))]
                   for f in fails["recent"]]
    retry_rows = [[str(f["id"]), escape(f["study_uid"]), str(f["revision"]), str(f["attempts"]),
                   f'<span data-cy="retry-reason">{escape(f["reason"])}</span>', escape(_time(f["at"]))]
                  for f in fails["retrying"]]

    agr_rows = [[escape(v), str(s["n"]), f'<span data-cy="agreement-mean">{_pct(s["mean"])}</span>',
                 f'{_pct(s["ci_low"])} - {_pct(s["ci_high"])}', _pct(s["min"]), _pct(s["max"]),
                 _num(s.get("bleu2")), _num(s.get("rouge_l")), _num(s.get("embedding_similarity"))]
                for v, s in agr["by_version"].items()]
    versions = list(agr["by_version"])
    obs_head = ["observation", "agreement (all)", "missed", "false", "uncertain", *versions]
    obs_rows = []
    for obs, row in agr["by_observation"].items():
        per_version = [_pct(agr["by_observation_version"][v][obs]["agreement"]) for v in versions]
        obs_rows.append([escape(obs), _pct(row["agreement"]), str(row["missed"]), str(row["false"]),
                         str(row["uncertain"]), *per_version])
    day_rows = [[escape(d["day"]), escape(d["model_version"]), str(d["n"]), _pct(d["mean"])] for d in agr["by_day"]]
    obs_days = list(agr.get("by_observation_day", {}))
    obs_day_rows = [[escape(obs), *(_pct(agr["by_observation_day"][d][obs]["agreement"]) for d in obs_days)]
                    for obs in agr["by_observation"]] if obs_days else []

    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{int(refresh_s)}">
<title>{escape(title)}</title><style>{_CSS}</style></head>
<body>
<header><h1>{escape(title)}</h1><div class="label" data-cy="research-label">{label}</div></header>
<main>
<section><h2>Queue</h2><div class="cards">{queue_cards}</div>
<p class="muted">Studies: <span data-cy="studies">{studies or "none yet"}</span></p></section>

<section><h2>Drafts per hour (last 24 h, UTC)</h2>
<div class="cards">{_card("drafts-24h", "drafts in the last 24 h", drafts["last_24h"])}{_card("drafts-total", "drafts in all", drafts["total"])}</div>
{drafts_chart(drafts["per_hour"])}
{_table(["model version", "drafts"], version_rows, "drafts-version", "No draft stored yet.")}</section>

<section><h2>Latency (seconds)</h2>
{_table(["", "n", "median", "90th pct", "max"], lat_rows, "latency", "")}
<p class="muted">Stable to stored: from the study judged complete and queued to its SR stored (retries
included). Model alone: the report model's time; whole job: reading, priors, model and storing.</p></section>

<section><h2>Failures</h2>
<div class="cards">{_card("failures-total", "jobs given up", fails["total"])}{_card("retrying-total", "failed, will retry", q.get("retrying", 0))}</div>
{_table(["reason", "jobs"], reason_rows, "failure-class", "No job has failed.")}
<h3>Latest given up</h3>
{_table(["job", "study", "revision", "attempts", "reason", "at"], recent_rows, "failure", "None.")}
<h3>Waiting to retry</h3>
{_table(["job", "study", "revision", "attempts", "last error", "at"], retry_rows, "retry", "None.")}</section>

<section><h2>Agreement with the signed final reports</h2>
<p class="muted">CheXpert-14 label agreement of each draft with the study's final report
(<span data-cy="pairs">{agr["pairs"]}</span> paired studies).</p>
{agreement_chart(agr["by_day"])}
<h3>By model version</h3>
{_table(["model version", "pairs", "mean agreement", "95% CI", "min", "max", "BLEU-2", "ROUGE-L", "embedding sim."],
         agr_rows, "agreement-version", "No pairs yet.")}
<h3>By observation</h3>
{_table(obs_head, obs_rows if agr["pairs"] else [], "agreement-observation", "No pairs yet.")}
<h3>By day</h3>
{_table(["day", "model version", "pairs", "mean"], day_rows, "agreement-day", "No pairs yet.")}
<h3>By observation and day (last {len(obs_days)} days with pairs, all versions)</h3>
{_table(["observation", *obs_days], obs_day_rows, "agreement-observation-day", "No pairs yet.")}</section>
<p class="muted">Generated {escape(_time(snapshot.get("generated_at")))}. {label}</p>
</main></body></html>
"""
