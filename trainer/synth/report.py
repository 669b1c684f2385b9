"""Final radiologist reports written from a study's findings, in the style of its institution.

Each site has its own vocabulary, abbreviations, hedging words, section layout, ordering, normal
boilerplate and date format, so a model trained on one site's reports learns that site's style.

The CheXpert labels of a study are not decided separately: every sentence that names an
observation records what it says about it (1 positive, 0 negated or resolved, -1 hedged), and the
labels are exactly those mentions.  Text and labels therefore cannot disagree.

The styles themselves are in :mod:`.report_styles`.
"""

from __future__ import annotations

import datetime as dt

import numpy as np

from unirg.model.chexpert import NEGATIVE, OBSERVATIONS, POSITIVE, UNCERTAIN
from unirg.trainer.synth.patients import Finding, Patient, Study
from unirg.trainer.synth.report_styles import (
    DEVICE_NAMES,
    GROUPS,
    IMPRESSION_ORDER,
    STYLES,
    Report,
    Style,
    _Context,
    _join,
)

_REASONS = {  # scenario -> [(A, B, C)] ; follow-ups separately
    "healthy": [("Preoperative evaluation.", "Pre-op.", "pre-operative assessment"),
                ("Chronic cough.", "Cough.", "a chronic cough"),
                ("Chest pain.", "CP.", "chest pain")],
    "heart_failure": [("Shortness of breath.", "SOB.", "increasing breathlessness"),
                      ("Dyspnea and leg swelling.", "SOB, LE edema.", "breathlessness and ankle swelling")],
    "pneumonia": [("Fever and cough, evaluate for pneumonia.", "Fever, cough. r/o PNA.", "fever and productive cough"),
                  ("Productive cough.", "Cough, r/o PNA.", "cough and raised inflammatory markers")],
    "icu": [("Intubated patient, evaluate tube position.", "ETT placement.", "intubation, tube position check"),
            ("Respiratory failure.", "Resp failure.", "respiratory failure")],
    "trauma": [("Fall with chest wall pain.", "Fall, CP.", "a fall with chest wall pain"),
               ("Motor vehicle collision.", "MVC.", "a road traffic collision")],
    "oncology": [("Known lung lesion, staging.", "Lung mass, staging.", "known lung lesion, for staging"),
                 ("Hemoptysis and weight loss.", "Hemoptysis, wt loss.", "haemoptysis and weight loss")],
    "cardiac_device": [("Status post pacemaker insertion.", "S/p pacer.", "post pacemaker insertion"),
                       ("Palpitations.", "Palpitations.", "palpitations")],
    "chronic": [("Chronic dyspnea.", "Chronic SOB.", "chronic breathlessness"),
                ("Asbestos exposure surveillance.", "Asbestos exposure.", "previous asbestos exposure")],
}
_FOLLOW_UP = {
    "icu": ("Daily ICU radiograph, lines and tubes.", "Daily ICU film.", "daily review of lines and tubes"),
    "default": ("Follow-up.", "F/u.", "follow-up of known findings"),
}


def _reason(ctx: _Context) -> tuple[str, str, str]:
    if ctx.study.index == 0:
        return ctx.pick(_REASONS[ctx.patient.scenario])
    return _FOLLOW_UP["icu" if ctx.study.setting == "icu" else "default"]


def write_report(patient: Patient, study: Study, prior: Study | None, rng: np.random.Generator,
                 radiologists: tuple[str, ...]) -> Report:
    """The signed report of `study` in the style of its institution, with its CheXpert labels."""
    style = STYLES[study.institution]()
    ctx = _Context(rng, patient, study, prior)
    indication = style.indication(ctx, _reason(ctx))
    comparison = style.comparison(ctx)

    by_group: dict[str, list[str]] = {g: [] for g in ("devices", "lungs", "pleura", "heart", "bones")}
    for f in sorted(study.findings, key=lambda f: OBSERVATIONS.index(f.observation)):
        if f.observation == "Pneumonia":
            continue  # an interpretation: named in the impression only
        if f.observation == "Support Devices":
            by_group["devices"] += style.device_sentences(ctx, f)
            ctx.mention("Support Devices", POSITIVE if f.present else NEGATIVE)
            continue
        by_group[GROUPS[f.observation]].append(style.statement(ctx, f))
    mentioned = {f.observation for f in study.findings}
    absent = [o for o in OBSERVATIONS[1:] if o not in mentioned]

    findings = style.findings_text(ctx, by_group, absent)
    impression = _impression(style, ctx)
    labels: dict[str, int | None] = {o: ctx.mentions.get(o) for o in OBSERVATIONS}
    acute = [f for f in study.present if f.observation != "Support Devices"]
    labels["No Finding"] = None if acute else POSITIVE
    signed = study.when + dt.timedelta(minutes=int(rng.integers(20, 20 * 60)))
    observer = radiologists[int(rng.integers(len(radiologists)))]
    return Report(indication, comparison, findings, impression, labels, observer, signed)


def _impression(style: Style, ctx: _Context) -> str:
    study = ctx.study
    items: list[str] = []
    findings = sorted(study.findings, key=lambda f: IMPRESSION_ORDER.index(f.observation))
    host_of_pneumonia = None
    pneumonia = study.get("Pneumonia")
    if pneumonia is not None:
        host_of_pneumonia = next((f for f in findings if f.observation in ("Consolidation", "Lung Opacity")
                                  and f.present and f.laterality == pneumonia.laterality), None)
    for f in findings:
        if f.observation in ("Support Devices",):
            continue
        if f.observation == "Pneumonia" and host_of_pneumonia is not None:
            continue  # said together with its host below
        if study.index and f.present and f.certain and f.change == "unchanged" and f.observation not in (
                "Pneumothorax", "Edema", "Consolidation"):
            continue  # stable chronic findings are left to the findings section
        item = style.statement(ctx, f).rstrip(".")
        if f is host_of_pneumonia:
            item += _pneumonia_clause(style, ctx, pneumonia)
        items.append(item)
    if not any(f.present for f in study.findings if f.observation != "Support Devices"):
        items.insert(0, style.normal_impression[1 if study.findings else 0])
    dev = study.get("Support Devices")
    if dev is not None and dev.present and (dev.change == "new" or study.index == 0):
        items.append(style.devices_ok)
        ctx.mention("Support Devices", POSITIVE)
    elif dev is not None and dev.detail.get("removed"):
        removed = [DEVICE_NAMES[style.code][d["kind"]] for d in dev.detail["removed"]]
        items.append(style.removal.format(devices=_join(removed, "and"), has="have" if len(removed) > 1 else "has"))
    if not items:
        items.append(style.no_change)
    edema, heart = study.get("Edema"), study.get("Cardiomegaly")
    if style.code == "B" and edema and heart and edema.present and edema.certain and heart.present:
        items.insert(0, "Findings c/w CHF")  # B names the syndrome
    return style.format_impression(items)


def _pneumonia_clause(style: Style, ctx: _Context, pneumonia: Finding) -> str:
    resolved, consistent, hedged = style.pneumonia_clauses
    if not pneumonia.present:
        ctx.mention("Pneumonia", NEGATIVE)
        return resolved
    ctx.mention("Pneumonia", POSITIVE if pneumonia.certain else UNCERTAIN)
    return consistent if pneumonia.certain else hedged
