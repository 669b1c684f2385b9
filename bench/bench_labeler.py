"""Throughput of the rule-based labeler on one core, against a plain regex-only peer measured in the same run.

    .venv/bin/python bench/bench_labeler.py [--patients 150] [--repeats 5] [--seed 0] [--against REV]

Reports: the synthetic testbed's reports (findings + impression, written without images) and the hand-written
real-style set (tests/data/labeler_real_style.jsonl). The peer finds the same mention phrases with one plain
``re`` alternation and negates a mention when "no" / "without" / "negative for" precedes it in its sentence:
the floor cost of regex matching, with none of the labeler's rules. ``--against REV`` also times the labeler
as committed at git revision REV (e.g. HEAD) in the same run. Rates are reports per second of CPU time (best of
the repeats; CPU time, not wall time, so other load on a shared machine does not count); exits 1 when the
labeler runs under 2,000 reports/s.
"""

from __future__ import annotations

import argparse
import json
import os
import importlib
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from unirg.model.labeler import label_report, report_text
from unirg.model.labeler import phrases as P
from unirg.trainer.synth.institutions import INSTITUTIONS
from unirg.trainer.synth.patients import make_patient
from unirg.trainer.synth.report import write_report

TARGET = 2000.0
REAL_STYLE = Path(__file__).resolve().parents[1] / "tests" / "data" / "labeler_real_style.jsonl"

_OBSERVATIONS = list(P.MENTIONS)
_PEER = re.compile("|".join(f"(?P<o{i}>{'|'.join(p.pattern for p in P.MENTIONS[o])})"
                            for i, o in enumerate(_OBSERVATIONS)))
_PEER_NEG = re.compile(r"\b(?:no|without|negative\s+for)\b")
_PEER_SENTENCE = re.compile(r"[^.!?]+")


def peer_label(text: str) -> dict[str, int]:
    """Regex-only peer: mention → 1, or 0 after a negation cue in the same sentence."""
    low = text.lower()
    out: dict[str, int] = {}
    for s in _PEER_SENTENCE.finditer(low):
        neg = _PEER_NEG.search(low, s.start(), s.end())
        for m in _PEER.finditer(low, s.start(), s.end()):
            o = _OBSERVATIONS[int(m.lastgroup[1:])]
            label = 0 if neg and neg.start() < m.start() else 1
            out[o] = max(out.get(o, label), label)
    return out


def testbed_reports(patients: int, seed: int) -> list[str]:
    texts = []
    for i in range(patients):
        patient = make_patient(np.random.default_rng([seed, i]), i, seed)
        prior = None
        for study in patient.studies:
            report = write_report(patient, study, prior, np.random.default_rng([seed, i, study.index, 3]),
                                  INSTITUTIONS[study.institution].radiologists)
            texts.append(report_text({"findings": report.findings, "impression": report.impression}))
            prior = study
    return texts


def rate(fn, texts: list[str], repeats: int) -> float:
    fn(texts[0])  # warm-up (compilation)
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for t in texts:
            fn(t)
        best = min(best, time.process_time() - start)
    return len(texts) / max(best, 1e-9)


def labeler_at(rev: str, tmp: str):
    """``label_report`` of the labeler committed at ``rev`` (read with ``git show``, imported from ``tmp``)."""
    root = Path(__file__).resolve().parents[1]
    files = subprocess.run(["git", "ls-tree", "--name-only", rev, "model/labeler/"], cwd=root, check=True,
                           capture_output=True, text=True).stdout.split()
    package = Path(tmp) / "labeler_at_rev"
    package.mkdir()
    for name in files:
        text = subprocess.run(["git", "show", f"{rev}:{name}"], cwd=root, check=True, capture_output=True,
                              text=True).stdout
        (package / Path(name).name).write_text(text.replace("unirg.model.labeler", "labeler_at_rev"))
    sys.path.insert(0, tmp)
    return importlib.import_module("labeler_at_rev").label_report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=150)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--against", metavar="REV", help="also time the labeler committed at this git revision")
    args = ap.parse_args(argv)
    tmp = tempfile.TemporaryDirectory()
    old = labeler_at(args.against, tmp.name) if args.against else None
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    sets = {
        "testbed": testbed_reports(args.patients, args.seed),
        "real-style": [json.loads(line)["text"] for line in REAL_STYLE.read_text().splitlines() if line.strip()],
    }
    slow = False
    for name, texts in sets.items():
        words = sum(len(t.split()) for t in texts) / len(texts)
        ours = rate(label_report, texts, args.repeats)
        peer = rate(peer_label, texts, args.repeats)
        slow |= ours < TARGET
        line = (f"{name:10s} {len(texts):4d} reports ({words:4.1f} words): labeler {ours:6.0f}/s, "
                f"regex-only peer {peer:6.0f}/s (ratio {ours / peer:.2f})")
        if old:
            was = rate(old, texts, args.repeats)
            line += f", labeler at {args.against} {was:6.0f}/s (ratio {ours / was:.2f})"
        print(line)
    print(f"target >= {TARGET:.0f} reports/s on one core: {'MISSED' if slow else 'met'}")
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
