"""Synthetic patients: demographics, a timeline of studies, and findings that evolve between them.

Everything here is plain data drawn from a ``numpy.random.Generator``; the same generator state gives
the same patient.  A patient has a *scenario* (heart failure, pneumonia, ICU stay, ...) that decides
which findings are likely, where the studies happen (outpatient PA + lateral, portable AP in the ICU)
and how the findings change from one study to the next.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace

import numpy as np

from unirg.trainer.synth.anatomy import Anatomy

SEVERITY_NAMES = {1: "mild", 2: "moderate", 3: "severe"}
CHANGES = ("new", "unchanged", "improved", "worsened", "resolved")
LOBES = {"right": ("RUL", "RML", "RLL"), "left": ("LUL", "LLL")}

SCENARIOS = {  # scenario: weight
    "healthy": 0.27, "heart_failure": 0.14, "pneumonia": 0.16, "icu": 0.12,
    "trauma": 0.08, "oncology": 0.10, "cardiac_device": 0.06, "chronic": 0.07,
}
_FIRST_SETTING = {
    "healthy": {"outpatient": 0.8, "emergency": 0.2},
    "heart_failure": {"emergency": 0.5, "inpatient": 0.4, "outpatient": 0.1},
    "pneumonia": {"emergency": 0.6, "outpatient": 0.3, "inpatient": 0.1},
    "icu": {"icu": 1.0},
    "trauma": {"emergency": 1.0},
    "oncology": {"outpatient": 0.8, "inpatient": 0.2},
    "cardiac_device": {"outpatient": 0.6, "inpatient": 0.4},
    "chronic": {"outpatient": 1.0},
}
_NEXT_SETTING = {
    "icu": {"icu": 0.6, "inpatient": 0.3, "outpatient": 0.1},
    "emergency": {"inpatient": 0.4, "outpatient": 0.6},
    "inpatient": {"inpatient": 0.5, "outpatient": 0.5},
    "outpatient": {"outpatient": 0.85, "emergency": 0.15},
}
_AGE_RANGE = {
    "healthy": (20, 80), "heart_failure": (55, 92), "pneumonia": (18, 90), "icu": (30, 85),
    "trauma": (18, 85), "oncology": (45, 85), "cardiac_device": (60, 92), "chronic": (55, 88),
}
_UNCERTAIN_P = {
    "Pneumonia": 0.35, "Lung Opacity": 0.15, "Fracture": 0.15, "Pneumothorax": 0.1,
    "Atelectasis": 0.15, "Lung Lesion": 0.1, "Edema": 0.15, "Cardiomegaly": 0.05,
    "Enlarged Cardiomediastinum": 0.2, "Consolidation": 0.1, "Pleural Effusion": 0.08,
    "Pleural Other": 0.1, "Support Devices": 0.0,
}
CHRONIC = {"Cardiomegaly", "Enlarged Cardiomediastinum", "Pleural Other", "Fracture", "Lung Lesion"}

ETHNIC_GROUPS = {"White": 0.55, "Black": 0.15, "Asian": 0.14, "Hispanic": 0.12, "Other": 0.04}
_FIRST_NAMES = {
    "F": ("Anna", "Maria", "Grace", "Leila", "Sofia", "Hannah", "Mei", "Amara", "Ingrid", "Lucia",
          "Fatima", "Claire", "Nadia", "Rosa", "Emily", "Yuna", "Zainab", "Olivia", "Irene", "Ana"),
    "M": ("James", "Omar", "Lukas", "Daniel", "Kofi", "Hiroshi", "Mateo", "Peter", "Arjun", "Samuel",
          "Ivan", "Tomas", "Diego", "Ahmed", "Felix", "Noah", "Ravi", "Jonas", "Victor", "Chen"),
}
_LAST_NAMES = (
    "Smith", "Garcia", "Okoro", "Kim", "Novak", "Rossi", "Hansen", "Silva", "Tanaka", "Mueller",
    "Khan", "Dubois", "Olsen", "Reyes", "Kowalczyk", "Mensah", "Ivanova", "Costa", "Walsh", "Sato",
    "Nielsen", "Ortiz", "Haddad", "Popescu", "Fischer", "Moyo", "Larsen", "Bianchi", "Chen", "Ward",
)


@dataclass
class Finding:
    """One observation in one study; the same object lineage carries it from study to study.

    ``extent`` (0..1] drives how large it is drawn; ``severity`` 1..3 is its bucket (0 when resolved).
    ``detail`` holds what the drawing and the text need to stay the same over time (lobe, zone,
    position, devices, a shape seed).
    """

    observation: str
    laterality: str | None
    extent: float
    certain: bool = True
    change: str | None = None
    detail: dict = field(default_factory=dict)

    @property
    def severity(self) -> int:
        if self.change == "resolved":
            return 0
        return 1 if self.extent < 0.4 else 2 if self.extent < 0.7 else 3

    @property
    def present(self) -> bool:
        return self.change != "resolved"

    def record(self) -> dict:
        """The manifest form: observation, laterality, severity name, change."""
        sev = None if self.observation == "Support Devices" or not self.present else SEVERITY_NAMES[self.severity]
        record = {"observation": self.observation, "laterality": self.laterality,
                  "severity": sev, "change": self.change}
        if self.detail.get("calcified"):
            record["calcified"] = True  # a granuloma: drawn and described, not labelled Lung Lesion
        return record


@dataclass
class Study:
    index: int
    when: dt.datetime
    setting: str
    institution: str
    views: tuple[str, ...]  # "PA" / "AP" frontal first, then "LAT"
    findings: list[Finding]

    @property
    def present(self) -> list[Finding]:
        return [f for f in self.findings if f.present]

    def get(self, observation: str) -> Finding | None:
        return next((f for f in self.findings if f.observation == observation), None)


@dataclass
class Patient:
    index: int
    patient_id: str
    name: str  # PN
    sex: str
    birth_date: dt.date
    ethnic_group: str
    height_m: float
    weight_kg: float
    home: str
    scenario: str
    anatomy: Anatomy
    studies: list[Study] = field(default_factory=list)

    def age_at(self, day: dt.date) -> int:
        b = self.birth_date
        return day.year - b.year - ((day.month, day.day) < (b.month, b.day))


def _pick(rng: np.random.Generator, weights: dict):
    keys = list(weights)
    p = np.array([weights[k] for k in keys], dtype=float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _extent(rng: np.random.Generator, lo: float = 0.15, hi: float = 0.95) -> float:
    return float(round(rng.uniform(lo, hi), 3))


def _side(rng: np.random.Generator, bilateral_p: float = 0.0) -> str:
    if rng.random() < bilateral_p:
        return "bilateral"
    return "right" if rng.random() < 0.55 else "left"


def _new_finding(rng: np.random.Generator, obs: str, *, laterality: str | None = None,
                 extent: float | None = None, certain: bool | None = None, **detail) -> Finding:
    """A finding with the per-observation details its drawing and text need."""
    if certain is None:
        certain = bool(rng.random() >= _UNCERTAIN_P.get(obs, 0.1))
    ext = _extent(rng) if extent is None else extent
    if not certain:
        ext = min(ext, 0.3)  # what is uncertain is subtle
    d: dict = {"seed": int(rng.integers(2**31))}
    if obs in ("Pleural Effusion", "Pleural Other"):
        laterality = laterality or _side(rng, 0.35)
        if obs == "Pleural Other":
            d["kind"] = "plaques" if rng.random() < 0.5 else "thickening"
    elif obs in ("Pneumothorax", "Fracture"):
        laterality = laterality or _side(rng)
        if obs == "Fracture":
            first = int(rng.integers(4, 9))
            d["ribs"] = list(range(first, first + 1 + int(ext > 0.4) + int(ext > 0.7)))
            d["healing"] = False
    elif obs in ("Consolidation", "Pneumonia"):
        laterality = laterality or _side(rng)
        lobes = LOBES["right" if laterality == "bilateral" else laterality]
        d["lobe"] = detail.pop("lobe", None) or str(rng.choice(lobes, p=_lobe_p(lobes)))
    elif obs == "Lung Opacity":
        laterality = laterality or _side(rng, 0.25)
        d["zone"] = str(rng.choice(["upper", "mid", "lower"], p=[0.2, 0.35, 0.45]))
    elif obs == "Atelectasis":
        laterality = laterality or _side(rng, 0.35)
        d["zone"] = "lower" if rng.random() < 0.8 else "mid"
    elif obs == "Lung Lesion":
        laterality = laterality or _side(rng)
        d["zone"] = str(rng.choice(["upper", "mid", "lower"], p=[0.45, 0.3, 0.25]))
        d["pos"] = [float(round(rng.uniform(0.3, 0.75), 3)), float(round(rng.uniform(0.2, 0.8), 3))]
        d["calcified"] = bool(detail.pop("calcified", rng.random() < 0.2))
        if d["calcified"]:  # a granuloma: small, certain, never changes
            certain, ext = True, min(ext, 0.2)
    elif obs in ("Cardiomegaly", "Enlarged Cardiomediastinum", "Edema"):
        laterality = None
    elif obs == "Support Devices":
        laterality = None
        ext = 1.0
        certain = True
    d.update(detail)
    return Finding(obs, laterality, ext, certain, None, d)


def _zone_lobe(laterality: str, zone: str) -> str:
    """The lobe that mostly projects over a lung zone on a frontal view."""
    if laterality == "left":
        return "LUL" if zone != "lower" else "LLL"
    return {"upper": "RUL", "mid": "RML", "lower": "RLL"}[zone]


def _lobe_p(lobes: tuple[str, ...]) -> list[float]:
    p = np.array([0.25 if "U" in lobe else 0.15 if "M" in lobe else 0.6 for lobe in lobes])
    return list(p / p.sum())


def _devices_for(rng: np.random.Generator, setting: str, scenario: str) -> list[dict]:
    devices: list[dict] = []
    if setting == "icu":
        if rng.random() < 0.85:
            devices.append({"kind": "ett", "tip_cm": float(round(rng.uniform(2.5, 6.5), 1))})
        if rng.random() < 0.75:
            devices.append({"kind": "ngt"})
        if rng.random() < 0.8 or not devices:
            devices.append({"kind": "cvc", "side": _side(rng), "route": "ij" if rng.random() < 0.7 else "subclavian"})
    if scenario == "cardiac_device" or (scenario == "heart_failure" and rng.random() < 0.15):
        devices.append({"kind": "pacemaker", "side": "left" if rng.random() < 0.85 else "right",
                        "leads": int(rng.integers(1, 3))})
    if scenario == "oncology" and rng.random() < 0.3:
        devices.append({"kind": "port", "side": "right" if rng.random() < 0.7 else "left"})
    return devices


def _initial_findings(rng: np.random.Generator, scenario: str, setting: str) -> list[Finding]:
    out: dict[str, Finding] = {}

    def add(obs: str, p: float = 1.0, **kw) -> Finding | None:
        if obs not in out and rng.random() < p:
            out[obs] = _new_finding(rng, obs, **kw)
        return out.get(obs)

    if scenario == "healthy":
        if rng.random() < 0.1:
            add(str(rng.choice(["Lung Lesion", "Fracture", "Pleural Other"])), extent=0.2)
        if rng.random() < 0.05:
            add("Lung Opacity", certain=False)
        add("Pneumothorax", 0.04)  # spontaneous, in the young and thin
    elif scenario == "heart_failure":
        add("Cardiomegaly", 0.85)
        add("Edema", 0.8)
        add("Pleural Effusion", 0.65)
        add("Enlarged Cardiomediastinum", 0.15)
        add("Atelectasis", 0.2, laterality="bilateral", extent=0.2)
    elif scenario == "pneumonia":
        host = add("Consolidation", 0.75)
        if host is None:
            host = add("Lung Opacity")
        else:
            add("Lung Opacity", 0.3, laterality=host.laterality)
        lobe = host.detail.get("lobe") or _zone_lobe(host.laterality, host.detail["zone"])
        add("Pneumonia", laterality=host.laterality, lobe=lobe, extent=host.extent,
            certain=None if host.certain else False)
        add("Pleural Effusion", 0.25, laterality=host.laterality, extent=0.2)
        add("Atelectasis", 0.15)
    elif scenario == "icu":
        add("Atelectasis", 0.55)
        add("Pleural Effusion", 0.5)
        add("Edema", 0.35)
        add("Lung Opacity", 0.4)
        add("Consolidation", 0.2)
        add("Cardiomegaly", 0.25)
        add("Pneumothorax", 0.12, extent=0.2)
    elif scenario == "trauma":
        fx = add("Fracture", 0.85)
        side = fx.laterality if fx else _side(rng)
        add("Pneumothorax", 0.6, laterality=side)
        add("Lung Opacity", 0.3, laterality=side)
        add("Pleural Effusion", 0.2, laterality=side, extent=0.25)
    elif scenario == "oncology":
        lesion = add("Lung Lesion", extent=_extent(rng, 0.2, 0.95))
        add("Pleural Effusion", 0.3, laterality=lesion.laterality)
        add("Atelectasis", 0.2, laterality=lesion.laterality)
        add("Enlarged Cardiomediastinum", 0.2)
    elif scenario == "cardiac_device":
        add("Cardiomegaly", 0.6)
        add("Pleural Effusion", 0.2)
        add("Edema", 0.2)
    elif scenario == "chronic":
        add("Pleural Other", 0.7)
        fx = add("Fracture", 0.4)
        if fx:
            fx.detail["healing"] = True
        add("Lung Lesion", 0.3, extent=0.15, calcified=True)
        add("Atelectasis", 0.2, extent=0.2)
    devices = _devices_for(rng, setting, scenario)
    if devices:
        out["Support Devices"] = _new_finding(rng, "Support Devices", devices=devices)
    return list(out.values())


def _evolve(rng: np.random.Generator, prior: list[Finding], setting: str, prior_setting: str,
            scenario: str, days: int) -> list[Finding]:
    """The findings of the next study: each prior finding changes, some new ones appear."""
    out: dict[str, Finding] = {}
    for old in prior:
        if not old.present:
            continue  # resolved last time: no longer reported
        f = replace(old, detail=dict(old.detail), change=None)
        if f.observation == "Support Devices":
            f = _evolve_devices(rng, f, setting, prior_setting)
        elif f.observation == "Pneumonia":
            continue  # follows its host below
        else:
            f.change = _next_change(rng, f, days)
            _apply_change(rng, f)
            if f.observation == "Fracture" and days > 14:
                f.detail["healing"] = True
        out[f.observation] = f
    pneumonia = next((f for f in prior if f.observation == "Pneumonia" and f.present), None)
    if pneumonia is not None:
        host = out.get("Consolidation") or out.get("Lung Opacity")
        f = replace(pneumonia, detail=dict(pneumonia.detail))
        if host is not None and host.laterality == f.laterality:
            f.change, f.extent = host.change, host.extent
        else:
            f.change = "resolved"
        out["Pneumonia"] = f
    # a chest tube goes in for a pneumothorax that is not small
    ptx = out.get("Pneumothorax")
    if ptx is not None and ptx.present and ptx.severity >= 2 and setting in ("inpatient", "icu", "emergency"):
        dev = out.get("Support Devices")
        tube = {"kind": "chest_tube", "side": ptx.laterality}
        if dev is None:
            dev = out["Support Devices"] = _new_finding(rng, "Support Devices", devices=[])
            dev.change = "new"
        elif not dev.present:
            dev.change = "unchanged"
        if tube not in dev.detail["devices"]:
            dev.detail["devices"].append(tube)
            ptx.change, ptx.extent = "improved", round(ptx.extent * 0.4, 3)
    # new findings
    candidates = {
        "heart_failure": {"Pleural Effusion": 0.25, "Edema": 0.25},
        "pneumonia": {"Pleural Effusion": 0.15, "Atelectasis": 0.1},
        "icu": {"Atelectasis": 0.25, "Lung Opacity": 0.2, "Pleural Effusion": 0.2, "Pneumothorax": 0.08,
                "Edema": 0.1},
        "oncology": {"Pleural Effusion": 0.2, "Atelectasis": 0.1},
        "cardiac_device": {"Pleural Effusion": 0.1},
    }.get(scenario, {})
    candidates = {**{"Lung Opacity": 0.03, "Atelectasis": 0.03, "Lung Lesion": 0.02}, **candidates}
    for obs, p in candidates.items():
        if obs not in out and rng.random() < p:
            f = _new_finding(rng, obs, extent=_extent(rng, 0.15, 0.6))
            f.change = "new"
            out[obs] = f
    if setting == "icu" and "Support Devices" not in out:
        devices = _devices_for(rng, setting, scenario)
        if devices:
            out["Support Devices"] = _new_finding(rng, "Support Devices", devices=devices)
            out["Support Devices"].change = "new"
    return list(out.values())


def _next_change(rng: np.random.Generator, f: Finding, days: int) -> str:
    if f.detail.get("calcified"):
        return "unchanged"
    if not f.certain:
        return _pick(rng, {"resolved": 0.45, "unchanged": 0.4, "worsened": 0.15})
    if f.observation in CHRONIC:
        weights = {"unchanged": 0.85, "worsened": 0.12, "improved": 0.03}
        if f.observation == "Lung Lesion":
            weights = {"unchanged": 0.7, "worsened": 0.3}
        return _pick(rng, weights)
    if days > 60:
        return _pick(rng, {"resolved": 0.6, "improved": 0.15, "unchanged": 0.15, "worsened": 0.1})
    return _pick(rng, {"improved": 0.3, "resolved": 0.25, "unchanged": 0.3, "worsened": 0.15})


def _apply_change(rng: np.random.Generator, f: Finding) -> None:
    if f.change == "improved":
        f.extent = round(max(0.08, f.extent * rng.uniform(0.45, 0.7)), 3)
    elif f.change == "worsened":
        if not f.certain:
            f.certain = True
            f.extent = round(max(f.extent, 0.3), 3)
        else:
            f.extent = round(min(1.0, f.extent * rng.uniform(1.3, 1.7) + 0.08), 3)
        if f.observation == "Fracture":
            f.detail["ribs"] = f.detail["ribs"] + [f.detail["ribs"][-1] + 1]


def _evolve_devices(rng: np.random.Generator, f: Finding, setting: str, prior_setting: str) -> Finding:
    before = [dict(d) for d in f.detail["devices"]]
    devices = before
    if prior_setting == "icu" and setting != "icu":
        devices = [d for d in before if d["kind"] in ("pacemaker", "port")
                   or (d["kind"] == "cvc" and rng.random() < 0.4)]
    elif rng.random() < 0.15:
        devices = [d for d in before if d["kind"] not in ("chest_tube", "ngt")]
    for d in devices:
        if d["kind"] == "ett":
            d["tip_cm"] = float(round(rng.uniform(2.5, 6.5), 1))
    f.detail["devices"] = devices
    f.detail["removed"] = [d for d in before if d["kind"] not in {k["kind"] for k in devices}]
    f.change = "unchanged" if devices else "resolved"
    return f


def _views(rng: np.random.Generator, setting: str) -> tuple[str, ...]:
    if setting == "outpatient":
        return ("PA", "LAT") if rng.random() < 0.92 else ("PA",)
    if setting == "emergency":
        return ("PA", "LAT") if rng.random() < 0.55 else ("AP",)
    if setting == "inpatient":
        if rng.random() < 0.2:
            return ("PA", "LAT")
        return ("AP", "LAT") if rng.random() < 0.1 else ("AP",)
    return ("AP",)


def _study_time(rng: np.random.Generator, day: dt.date, setting: str) -> dt.datetime:
    if setting == "outpatient":
        minutes = int(rng.integers(8 * 60, 17 * 60))
    elif setting == "icu":
        minutes = int(rng.integers(4 * 60 + 30, 7 * 60)) if rng.random() < 0.7 else int(rng.integers(0, 24 * 60))
    else:
        minutes = int(rng.integers(0, 24 * 60))
    return dt.datetime.combine(day, dt.time(minutes // 60, minutes % 60, int(rng.integers(0, 60))))


def _interval_days(rng: np.random.Generator, setting: str) -> int:
    lo, hi = {"icu": (1, 2), "inpatient": (1, 5), "emergency": (7, 60), "outpatient": (60, 700)}[setting]
    return int(rng.integers(lo, hi + 1))


def make_patient(rng: np.random.Generator, index: int, seed: int) -> Patient:
    """One patient with a full timeline of studies and findings."""
    scenario = _pick(rng, SCENARIOS)
    sex = "F" if rng.random() < 0.5 else "M"
    home = "ABC"[index % 3]
    first_day = dt.date(2019, 1, 1) + dt.timedelta(days=int(rng.integers(0, 5 * 365)))
    lo, hi = _AGE_RANGE[scenario]
    age = int(rng.integers(lo, hi + 1))
    birth = first_day - dt.timedelta(days=int(age * 365.25 + rng.integers(1, 364)))
    height = float(np.clip(rng.normal(1.76 if sex == "M" else 1.63, 0.07), 1.45, 2.05))
    bmi = float(np.clip(rng.normal(27, 5), 17, 45))
    name = f"{_LAST_NAMES[int(rng.integers(len(_LAST_NAMES)))]}^{_FIRST_NAMES[sex][int(rng.integers(20))]}"
    patient = Patient(
        index=index, patient_id=f"SYN{seed}-{index:05d}", name=name, sex=sex, birth_date=birth,
        ethnic_group=_pick(rng, ETHNIC_GROUPS), height_m=round(height, 2),
        weight_kg=round(bmi * height**2, 1), home=home, scenario=scenario,
        anatomy=Anatomy.sample(rng, sex=sex, bmi=bmi, age=age),
    )
    n_studies = int(rng.choice([1, 2, 3, 4, 5, 6], p=[0.3, 0.25, 0.2, 0.12, 0.08, 0.05]))
    if scenario == "icu":
        n_studies = max(n_studies, 2)
    setting = _pick(rng, _FIRST_SETTING[scenario])
    day = first_day
    findings = _initial_findings(rng, scenario, setting)
    prior_setting = setting
    for k in range(n_studies):
        if k:
            prior_setting, setting = setting, _pick(rng, _NEXT_SETTING[setting])
            days = _interval_days(rng, setting)
            day = day + dt.timedelta(days=days)
            findings = _evolve(rng, findings, setting, prior_setting, scenario, days)
        when = _study_time(rng, day, setting)
        if patient.studies and when <= patient.studies[-1].when:
            when = patient.studies[-1].when + dt.timedelta(hours=6)
        site = home if rng.random() < 0.85 or k == 0 else str(rng.choice([c for c in "ABC" if c != home]))
        patient.studies.append(Study(k, when, setting, site, _views(rng, setting), findings))
    return patient
