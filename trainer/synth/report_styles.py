"""The institutions' report styles (vocabulary, abbreviations, hedging words, section layout, ordering,
normal boilerplate, date format): phrase tables and the :class:`Style` classes that use them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np

from unirg.model.chexpert import NEGATIVE, POSITIVE, UNCERTAIN
from unirg.trainer.synth.patients import Finding, Patient, Study
from unirg.trainer.synth.render import lesion_size_mm

VOLUME = {"Pleural Effusion", "Pneumothorax", "Lung Lesion", "Cardiomegaly"}
"""Observations whose change is described as a size (decreased / increased) rather than a course."""

LOBE_NAMES = {"RUL": "right upper lobe", "RML": "right middle lobe", "RLL": "right lower lobe",
              "LUL": "left upper lobe", "LLL": "left lower lobe"}
ORDINALS = {1: "1st", 2: "2nd", 3: "3rd"}


def ordinal(n: int) -> str:
    return ORDINALS.get(n, f"{n}th")


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:] if s else s


def _join(items: list[str], conj: str = "or", oxford: bool = False) -> str:
    """'a', 'a or b', 'a, b or c' ('a, b, or c' with the Oxford comma)."""
    if len(items) <= 2:
        return f" {conj} ".join(items)
    return ", ".join(items[:-1]) + ("," if oxford else "") + f" {conj} " + items[-1]


def _plural(f: Finding) -> bool:
    """Whether the finding's noun phrase is plural (for verb agreement)."""
    if f.observation in ("Pleural Effusion", "Lung Opacity"):
        return f.laterality == "bilateral"
    if f.observation == "Fracture":
        return len(f.detail["ribs"]) > 1
    return f.observation == "Pleural Other" and f.detail.get("kind") == "plaques"


@dataclass
class Report:
    indication: str
    comparison: str | None
    findings: str
    impression: str
    labels: dict[str, int | None]
    observer: str
    signed: dt.datetime

    def sections(self) -> dict[str, str | None]:
        return {"indication": self.indication, "comparison": self.comparison,
                "findings": self.findings, "impression": self.impression}


@dataclass
class _Context:
    """What a style needs while writing one report."""

    rng: np.random.Generator
    patient: Patient
    study: Study
    prior: Study | None
    mentions: dict[str, int] = field(default_factory=dict)

    def mention(self, obs: str, value: int) -> None:
        # positive beats uncertain beats negative if a report says several things
        rank = {POSITIVE: 3, UNCERTAIN: 2, NEGATIVE: 1}
        if obs not in self.mentions or rank[value] > rank[self.mentions[obs]]:
            self.mentions[obs] = value

    def pick(self, options):
        return options[int(self.rng.integers(len(options)))]


class Style:
    """Base: how to name, hedge and date; subclasses fill the tables and lay the report out."""

    code = ""
    hedges: tuple[str, ...] = ()
    lat_words = {"right": "right", "left": "left", "bilateral": "bilateral"}
    sev_words: dict[str, tuple[str, str, str]] = {}
    negation_terms: dict[str, str] = {}

    # -- names ----------------------------------------------------------------------------------
    def lat(self, f: Finding) -> str:
        return self.lat_words.get(f.laterality or "", "")

    def sev(self, f: Finding) -> str:
        words = self.sev_words.get(f.observation) or self.sev_words["default"]
        return words[max(f.severity, 1) - 1]

    def noun(self, f: Finding, with_severity: bool = True) -> str:
        raise NotImplementedError

    def device_sentences(self, ctx: _Context, f: Finding) -> list[str]:
        raise NotImplementedError

    def date(self, day: dt.date) -> str:
        raise NotImplementedError

    # -- sentences ------------------------------------------------------------------------------
    def statement(self, ctx: _Context, f: Finding) -> str:
        """One sentence about a finding: hedged when uncertain, framed by its change since the prior."""
        obs = f.observation
        if f.detail.get("calcified") and obs == "Lung Lesion":
            # a calcified granuloma: CheXpert does not count it as a Lung Lesion
            return self.positive(ctx, f)
        if not f.present:
            ctx.mention(obs, NEGATIVE)
            return self.resolved(ctx, f)
        if not f.certain:
            ctx.mention(obs, UNCERTAIN)
            text = ctx.pick(self.hedges).format(np=self.noun(f))
            return _cap(text) + ("" if f.change != "unchanged" else self.unchanged_suffix) + "."
        ctx.mention(obs, POSITIVE)
        return self.positive(ctx, f)

    unchanged_suffix = ", unchanged"

    def positive(self, ctx: _Context, f: Finding) -> str:
        raise NotImplementedError

    def resolved(self, ctx: _Context, f: Finding) -> str:
        raise NotImplementedError

    def findings_text(self, ctx: _Context, by_group: dict[str, list[str]], absent: list[str]) -> str:
        """The findings section: the finding sentences by group plus this site's normal boilerplate,
        which rules out (and so labels 0) the `absent` observations it routinely mentions."""
        raise NotImplementedError

    def comparison(self, ctx: _Context) -> str:
        raise NotImplementedError

    def indication(self, ctx: _Context, reason: tuple[str, str, str]) -> str:
        raise NotImplementedError

    # impression vocabulary
    normal_impression = ("", "")  # (no findings at all, nothing acute)
    devices_ok = ""
    removal = ""  # format with {devices} and {has}
    no_change = ""
    pneumonia_clauses = ("", "", "")  # resolved, consistent with, not excluded

    def format_impression(self, items: list[str]) -> str:
        raise NotImplementedError

    def _negate_list(self, ctx: _Context, observations: list[str], template: str, *, oxford=False) -> str | None:
        terms = []
        for obs in observations:
            ctx.mention(obs, NEGATIVE)
            terms.append(self.negation_terms[obs])
        return template.format(_join(terms, "or", oxford)) if terms else None


# ---------------------------------------------------------------------------------------------
# A: academic, structured by system, numbered impression, ISO dates, US spelling.
# ---------------------------------------------------------------------------------------------


class StyleA(Style):
    code = "A"
    hedges = ("possible {np}", "{np} cannot be excluded", "questionable {np}")
    sev_words = {
        "default": ("mild", "moderate", "severe"),
        "Pleural Effusion": ("small", "moderate", "large"),
        "Pneumothorax": ("small", "moderate", "large"),
        "Lung Opacity": ("faint", "patchy", "extensive"),
        "Consolidation": ("patchy", "confluent", "dense lobar"),
        "Atelectasis": ("subsegmental", "segmental", "lobar"),
        "Edema": ("mild interstitial", "moderate", "severe"),
    }
    negation_terms = {
        "Consolidation": "focal consolidation", "Edema": "pulmonary edema",
        "Pleural Effusion": "pleural effusion", "Pneumothorax": "pneumothorax", "Fracture": "acute rib fracture",
    }
    normal_impression = ("No acute cardiopulmonary abnormality",) * 2
    devices_ok = "Support devices in satisfactory position"
    removal = "Interval removal of the {devices}"
    no_change = "No significant interval change"
    pneumonia_clauses = (", pneumonia has resolved", ", consistent with pneumonia", ", pneumonia cannot be excluded")

    def date(self, day: dt.date) -> str:
        return day.isoformat()

    def indication(self, ctx: _Context, reason: tuple[str, str, str]) -> str:
        return reason[0]

    def comparison(self, ctx: _Context) -> str:
        """The prior's date and a summary of what changed since."""
        if ctx.prior is None:
            return "None."
        clauses = []
        for f in sorted(ctx.study.findings, key=lambda f: IMPRESSION_ORDER.index(f.observation)):
            if not f.certain or f.observation in ("Support Devices", "Pneumonia") or f.change in (None, "unchanged"):
                continue
            verb = {"new": "is new", "resolved": "has resolved",
                    "improved": "has decreased" if f.observation in VOLUME else "has improved",
                    "worsened": "has increased" if f.observation in VOLUME else "has worsened"}[f.change]
            if _plural(f):
                verb = "are new" if f.change == "new" else verb.replace("has ", "have ")
            ctx.mention(f.observation, NEGATIVE if f.change == "resolved" else POSITIVE)
            clauses.append(f"the {self.noun(f, with_severity=False)} {verb}")
        summary = "; ".join(clauses) if clauses else "no significant interval change"
        return f"Compared with {self.date(ctx.prior.when.date())}: {summary}."

    def format_impression(self, items: list[str]) -> str:
        return "\n".join(f"{i}. {_cap(item)}." for i, item in enumerate(items, 1))

    def noun(self, f: Finding, with_severity: bool = True) -> str:
        sev = self.sev(f) + " " if with_severity else ""
        lat, obs, d = self.lat(f), f.observation, f.detail
        if obs == "Cardiomegaly":
            return f"{sev}cardiomegaly"
        if obs == "Enlarged Cardiomediastinum":
            return f"{sev}widening of the mediastinum"
        if obs == "Pleural Effusion":
            return f"{sev}bilateral pleural effusions" if lat == "bilateral" else f"{sev}{lat} pleural effusion"
        if obs == "Pneumothorax":
            apical = "apical " if f.severity == 1 else ""
            return f"{sev}{lat} {apical}pneumothorax"
        if obs == "Edema":
            return f"{sev}pulmonary edema"
        if obs == "Consolidation":
            return f"{sev}consolidation in the {LOBE_NAMES[d['lobe']]}"
        if obs == "Pneumonia":
            return "multifocal pneumonia" if lat == "bilateral" else f"{LOBE_NAMES[d['lobe']]} pneumonia"
        if obs == "Lung Opacity":
            if lat == "bilateral":
                return f"{sev}bilateral {d['zone']} lung opacities"
            return f"{sev}opacity in the {lat} {d['zone']} lung"
        if obs == "Atelectasis":
            if lat == "bilateral":
                return f"{sev}bibasilar atelectasis"
            if d["zone"] == "lower":
                return f"{sev}atelectasis at the {lat} lung base"
            return f"{sev}{lat} midlung atelectasis"
        if obs == "Lung Lesion":
            mm = lesion_size_mm(f.extent)
            kind = "calcified nodule" if d.get("calcified") else "nodule" if mm < 30 else "mass"
            size = f"{mm / 10:.1f} cm " if with_severity else ""
            return f"{size}{lat} {d['zone']} lung {kind}"
        if obs == "Pleural Other":
            return f"{lat} pleural thickening" if d["kind"] == "thickening" else f"calcified {lat} pleural plaques"
        if obs == "Fracture":
            ribs = d["ribs"]
            age = "healing " if d.get("healing") else "acute "
            names = _join([ordinal(r) for r in ribs], "and")
            return f"{age if with_severity else ''}{lat} {names} rib fracture{'s' if len(ribs) > 1 else ''}"
        raise KeyError(obs)

    def positive(self, ctx: _Context, f: Finding) -> str:
        np_, base = self.noun(f), self.noun(f, with_severity=False)
        if f.change is None:
            return _cap(np_) + "."
        if f.change == "new":
            return f"New {np_}."
        if f.change == "unchanged":
            return f"{ctx.pick(['Unchanged', 'Stable'])} {np_}."
        if f.change == "improved":
            if f.observation in VOLUME:
                return f"Interval decrease in {base}, now {self.sev(f)}."
            return f"Interval improvement in {base}."
        if f.change == "worsened":
            if f.observation in VOLUME:
                return f"Interval increase in {base}, now {self.sev(f)}."
            return f"Worsening {np_}."
        raise ValueError(f.change)

    def resolved(self, ctx: _Context, f: Finding) -> str:
        return ctx.pick([f"Interval resolution of the {self.noun(f, False)}.",
                         f"Previously seen {self.noun(f, False)} {'have' if _plural(f) else 'has'} resolved."])

    def device_sentences(self, ctx: _Context, f: Finding) -> list[str]:
        out = []
        prior = _prior_device_kinds(ctx)
        for d in f.detail["devices"]:
            side, leads = d.get("side", ""), d.get("leads", 2)
            noun, where = {
                "ett": ("endotracheal tube", f"with the tip {d.get('tip_cm', 4):.0f} cm above the carina"),
                "ngt": ("enteric tube", "coursing below the diaphragm with the tip in the stomach"),
                "cvc": (f"{side} {'internal jugular' if d.get('route') == 'ij' else 'subclavian'} central venous "
                        "catheter", "with the tip in the SVC"),
                "port": (f"{side} chest port", "with the catheter tip in the SVC"),
                "pacemaker": (f"{side} chest wall pacemaker", f"with {leads} lead{'s' if leads > 1 else ''}"),
                "chest_tube": (f"{side} chest tube", "with the tip at the apex"),
            }[d["kind"]]
            new = ctx.prior is not None and d["kind"] not in prior
            out.append(f"Interval placement of {noun} {where}." if new else f"{_cap(noun)} {where}.")
        for d in f.detail.get("removed", []):
            out.append(f"Interval removal of the {DEVICE_NAMES['A'][d['kind']]}.")
        return out

    def findings_text(self, ctx: _Context, by_group: dict[str, list[str]], absent: list[str]) -> str:
        """One line per system: lines and tubes, lungs, pleura, heart and mediastinum, bones."""
        lung_neg = self._negate_list(ctx, [o for o in ("Consolidation", "Edema") if o in absent], "No {}.")
        if not by_group["lungs"]:
            ctx.mention("Lung Opacity", NEGATIVE)
        lungs = by_group["lungs"] or ["Clear."]
        pleura_neg = self._negate_list(ctx, [o for o in ("Pleural Effusion", "Pneumothorax") if o in absent], "No {}.")
        heart = list(by_group["heart"])
        if "Cardiomegaly" in absent:
            ctx.mention("Cardiomegaly", NEGATIVE)
            heart.append("Normal heart size.")
        if "Enlarged Cardiomediastinum" in absent:
            ctx.mention("Enlarged Cardiomediastinum", NEGATIVE)
            heart.append("Normal mediastinal contours.")
        bones = by_group["bones"] or [self._negate_list(ctx, ["Fracture"], "No {}.")]
        lines = [
            ("Lines and tubes", by_group["devices"]),
            ("Lungs", lungs + [lung_neg]),
            ("Pleura", by_group["pleura"] + [pleura_neg]),
            ("Heart and mediastinum", heart),
            ("Bones", bones),
        ]
        return "\n".join(f"{name}: {' '.join(t for t in texts if t)}" for name, texts in lines if any(texts))


DEVICE_NAMES = {
    "A": {"ett": "endotracheal tube", "ngt": "enteric tube", "cvc": "central venous catheter",
          "port": "chest port", "pacemaker": "pacemaker", "chest_tube": "chest tube"},
    "B": {"ett": "ETT", "ngt": "NGT", "cvc": "CVC", "port": "port", "pacemaker": "pacer", "chest_tube": "chest tube"},
    "C": {"ett": "endotracheal tube", "ngt": "nasogastric tube", "cvc": "central venous catheter",
          "port": "portacath", "pacemaker": "pacemaker", "chest_tube": "intercostal drain"},
}


def _prior_device_kinds(ctx: _Context) -> set[str]:
    if ctx.prior is None:
        return set()
    f = ctx.prior.get("Support Devices")
    return {d["kind"] for d in f.detail["devices"]} if f is not None and f.present else set()


# ---------------------------------------------------------------------------------------------
# B: community hospital, terse, abbreviations (PTX, ETT, NGT, CHF, PNA, R/L, RLL), US dates.
# ---------------------------------------------------------------------------------------------


class StyleB(Style):
    code = "B"
    hedges = ("? {np}", "questionable {np}", "poss {np}")
    lat_words = {"right": "R", "left": "L", "bilateral": "bilat"}
    sev_words = {
        "default": ("mild", "mod", "marked"),
        "Pleural Effusion": ("sm", "mod", "lg"),
        "Pneumothorax": ("sm", "mod", "lg"),
        "Lung Opacity": ("faint", "patchy", "extensive"),
        "Consolidation": ("patchy", "", "dense"),
        "Atelectasis": ("plate-like", "segmental", "lobar"),
        "Edema": ("mild", "mod", "severe"),
    }
    negation_terms = {"Pneumothorax": "PTX", "Pleural Effusion": "effusion", "Consolidation": "consolidation"}
    unchanged_suffix = ", unch"
    normal_impression = ("No acute cardiopulmonary process",) * 2
    devices_ok = "Lines/tubes OK"
    removal = "{devices} out"
    no_change = "No change"
    pneumonia_clauses = (", PNA resolved", ", c/w PNA", ", ? PNA")

    def date(self, day: dt.date) -> str:
        return day.strftime("%m/%d/%Y")

    def indication(self, ctx: _Context, reason: tuple[str, str, str]) -> str:
        return reason[1]

    def comparison(self, ctx: _Context) -> str:
        return f"CXR {self.date(ctx.prior.when.date())}." if ctx.prior else "None."

    def format_impression(self, items: list[str]) -> str:
        return "; ".join(_cap(item) for item in items) + "."

    def noun(self, f: Finding, with_severity: bool = True) -> str:
        sev = (self.sev(f) + " ") if with_severity and self.sev(f) else ""
        lat, obs, d = self.lat(f), f.observation, f.detail
        if obs == "Cardiomegaly":
            return f"{sev}cardiomegaly" if f.detail["seed"] % 2 else f"{sev}enlarged heart"
        if obs == "Enlarged Cardiomediastinum":
            return "widened mediastinum"
        if obs == "Pleural Effusion":
            return f"{sev}{lat} effusion{'s' if lat == 'bilat' else ''}"
        if obs == "Pneumothorax":
            return f"{sev}{lat} PTX"
        if obs == "Edema":
            return f"{sev}pulm edema"
        if obs == "Consolidation":
            return f"{sev}{d['lobe']} consolidation"
        if obs == "Pneumonia":
            return "multifocal PNA" if lat == "bilat" else f"{d['lobe']} PNA"
        if obs == "Lung Opacity":
            return f"{sev}{lat} {d['zone']} lung opacit{'ies' if lat == 'bilat' else 'y'}"
        if obs == "Atelectasis":
            where = "bibasilar" if lat == "bilat" else f"{lat} basilar" if d["zone"] == "lower" else f"{lat} midlung"
            return f"{sev}{where} atelectasis"
        if obs == "Lung Lesion":
            mm = lesion_size_mm(f.extent)
            kind = "calcified nodule" if d.get("calcified") else "nodule" if mm < 30 else "mass"
            return f"{lat} {d['zone']} lung {kind}" + (f" {mm:.0f} mm" if with_severity else "")
        if obs == "Pleural Other":
            return f"{lat} pleural thickening" if d["kind"] == "thickening" else "calcified pleural plaques"
        if obs == "Fracture":
            ribs = d["ribs"]
            span = f"{ribs[0]}" if len(ribs) == 1 else f"{ribs[0]}-{ribs[-1]}"
            age = "healing " if d.get("healing") and with_severity else ""
            return f"{age}{lat} rib fx ({span})"
        raise KeyError(obs)

    def positive(self, ctx: _Context, f: Finding) -> str:
        np_, base = self.noun(f), self.noun(f, with_severity=False)
        if f.change is None:
            return _cap(np_) + "."
        return {
            "new": f"New {np_}.",
            "unchanged": f"Stable {np_}.",
            "improved": f"{_cap(base)} {'smaller' if f.observation in VOLUME else 'improved'}.",
            "worsened": f"{_cap(base)} {'larger' if f.observation in VOLUME else 'worse'}.",
        }[f.change]

    def resolved(self, ctx: _Context, f: Finding) -> str:
        return f"{_cap(self.noun(f, False))} resolved."

    def device_sentences(self, ctx: _Context, f: Finding) -> list[str]:
        out = []
        prior = _prior_device_kinds(ctx)
        for d in f.detail["devices"]:
            side = {"right": "R", "left": "L"}.get(d.get("side", ""), "")
            text = {
                "ett": f"ETT {d.get('tip_cm', 4):.0f} cm above carina",
                "ngt": "NGT in stomach",
                "cvc": f"{side} {'IJ' if d.get('route') == 'ij' else 'SC'} CVC, tip SVC",
                "port": f"{side} port, tip SVC",
                "pacemaker": f"{side} pacer, {d.get('leads', 2)} lead{'s' if d.get('leads', 2) > 1 else ''}",
                "chest_tube": f"{side} chest tube",
            }[d["kind"]]
            new = ctx.prior is not None and d["kind"] not in prior
            out.append(("New " if new else "") + text + ".")
        for d in f.detail.get("removed", []):
            out.append(f"{DEVICE_NAMES['B'][d['kind']]} removed.")
        return out

    def findings_text(self, ctx: _Context, by_group: dict[str, list[str]], absent: list[str]) -> str:
        """One terse paragraph: heart, lungs, pleura, devices, bones, then the normal statements."""
        out = [t for g in ("heart", "lungs", "pleura", "devices", "bones") for t in by_group[g]]
        if "Cardiomegaly" in absent:
            ctx.mention("Cardiomegaly", NEGATIVE)
            out.append("Heart size nml.")
        if not any(GROUPS[f.observation] == "lungs" for f in ctx.study.present):
            ctx.mention("Lung Opacity", NEGATIVE)
            out.append("Lungs clear.")
        elif "Consolidation" in absent:
            out.append(self._negate_list(ctx, ["Consolidation"], "No {}."))
        pleura = [o for o in ("Pneumothorax", "Pleural Effusion") if o in absent]
        if pleura:
            out.append(self._negate_list(ctx, pleura, "No {}."))
        return " ".join(out)


# ---------------------------------------------------------------------------------------------
# C: regional centre, narrative prose, British spelling, "in keeping with", bulleted impression.
# ---------------------------------------------------------------------------------------------


class StyleC(Style):
    code = "C"
    hedges = ("{np} is not excluded", "appearances could represent {np}", "possible {np}")
    sev_words = {
        "default": ("mild", "moderate", "marked"),
        "Cardiomegaly": ("mildly", "moderately", "markedly"),
        "Pleural Effusion": ("small", "moderate", "large"),
        "Pneumothorax": ("small", "moderate", "large"),
        "Lung Opacity": ("faint", "patchy", "extensive"),
        "Consolidation": ("patchy", "confluent", "dense"),
        "Atelectasis": ("linear", "segmental", "lobar"),
        "Edema": ("mild interstitial", "moderate", "severe alveolar"),
    }
    negation_terms = {
        "Consolidation": "focal airspace consolidation", "Edema": "pulmonary oedema",
        "Pleural Effusion": "pleural fluid", "Pneumothorax": "pneumothorax",
    }
    unchanged_suffix = ", unchanged from the previous examination"
    normal_impression = ("Normal chest radiograph", "No acute abnormality")
    devices_ok = "Lines and tubes are satisfactorily positioned"
    removal = "The {devices} {has} been removed"
    no_change = "Stable appearances"
    pneumonia_clauses = (", the pneumonia has resolved", ", in keeping with pneumonia", ", pneumonia is not excluded")

    def date(self, day: dt.date) -> str:
        return f"{day.day} {day.strftime('%B %Y')}"

    def indication(self, ctx: _Context, reason: tuple[str, str, str]) -> str:
        age = ctx.patient.age_at(ctx.study.when.date())
        return f"{age}-year-old {'man' if ctx.patient.sex == 'M' else 'woman'} with {reason[2]}."

    def comparison(self, ctx: _Context) -> str:
        if ctx.prior is None:
            return "No previous imaging available for comparison."
        return f"Previous chest radiograph dated {self.date(ctx.prior.when.date())}."

    def format_impression(self, items: list[str]) -> str:
        return "\n".join(f"- {_cap(item)}." for item in items)

    def noun(self, f: Finding, with_severity: bool = True) -> str:
        sev = self.sev(f) + " " if with_severity else ""
        lat, obs, d = self.lat(f), f.observation, f.detail
        sided = f"{lat}-sided" if lat in ("right", "left") else lat
        if obs == "Cardiomegaly":
            return f"{sev}enlarged cardiac silhouette"
        if obs == "Enlarged Cardiomediastinum":
            return f"{sev}widening of the superior mediastinum"
        if obs == "Pleural Effusion":
            if lat == "bilateral":
                return f"{sev}bilateral pleural fluid"
            return f"{sev}{sided} pleural fluid" if d["seed"] % 2 else f"{sev}fluid in the {lat} pleural space"
        if obs == "Pneumothorax":
            return f"{sev}{sided} pneumothorax"
        if obs == "Edema":
            return f"{sev}pulmonary oedema"
        if obs == "Consolidation":
            return f"{sev}airspace consolidation in the {LOBE_NAMES[d['lobe']]}"
        if obs == "Pneumonia":
            return "multifocal pneumonia" if lat == "bilateral" else f"{LOBE_NAMES[d['lobe']]} pneumonia"
        if obs == "Lung Opacity":
            return f"{sev}airspace opacification in the {lat} {d['zone']} zone{'s' if lat == 'bilateral' else ''}"
        if obs == "Atelectasis":
            if f.severity == 3 and lat != "bilateral" and with_severity:
                return f"collapse of the {LOBE_NAMES[('R' if lat == 'right' else 'L') + 'LL']}"
            if lat == "bilateral":
                where = "both lung bases"
            else:
                where = f"the {lat} base" if d["zone"] == "lower" else f"the {lat} mid zone"
            return f"{sev}atelectasis at {where}"
        if obs == "Lung Lesion":
            mm = lesion_size_mm(f.extent)
            kind = "calcified nodule" if d.get("calcified") else "nodule" if mm < 30 else "mass"
            size = f" measuring {mm:.0f} mm" if with_severity else ""
            return f"{kind} in the {lat} {d['zone']} zone{size}"
        if obs == "Pleural Other":
            if d["kind"] == "thickening":
                return f"{sided} pleural thickening"
            plaques = "calcified pleural plaques"
            return f"{plaques}, in keeping with previous asbestos exposure" if with_severity else plaques
        if obs == "Fracture":
            ribs = d["ribs"]
            age = ("healing " if d.get("healing") else "acute ") if with_severity else ""
            s = "s" if len(ribs) > 1 else ""
            return f"{age}fracture{s} of the {lat} {_join([ordinal(r) for r in ribs], 'and')} rib{s}"
        raise KeyError(obs)

    def positive(self, ctx: _Context, f: Finding) -> str:
        np_, base = _cap(self.noun(f)), self.noun(f, with_severity=False)
        since = f"since {self.date(ctx.prior.when.date())}" if ctx.prior else ""
        is_, has = ("are", "have") if _plural(f) else ("is", "has")
        if f.change is None:
            return f"{np_} {is_} {ctx.pick(['noted', 'present', 'seen'])}."
        return {
            "new": f"{np_} {is_} new {since}.",
            "unchanged": f"{np_} {is_} again demonstrated, unchanged.",
            "improved": f"The {base} {has} {'decreased' if f.observation in VOLUME else 'improved'} {since}.",
            "worsened": f"The {base} {has} {'increased' if f.observation in VOLUME else 'progressed'} {since}.",
        }[f.change]

    def resolved(self, ctx: _Context, f: Finding) -> str:
        return f"The previously noted {self.noun(f, False)} {'have' if _plural(f) else 'has'} resolved."

    def device_sentences(self, ctx: _Context, f: Finding) -> list[str]:
        out = []
        for d in f.detail["devices"]:
            side = d.get("side", "")
            out.append({
                "ett": f"An endotracheal tube is in situ with its tip {d.get('tip_cm', 4):.0f} cm above the carina.",
                "ngt": "A nasogastric tube is seen with its tip below the diaphragm.",
                "cvc": f"A {side}-sided {'internal jugular' if d.get('route') == 'ij' else 'subclavian'} central "
                       "venous catheter terminates in the superior vena cava.",
                "port": f"A {side}-sided portacath is present with its tip in the superior vena cava.",
                "pacemaker": f"A {side}-sided cardiac pacemaker is noted with {d.get('leads', 2)} "
                             f"lead{'s' if d.get('leads', 2) > 1 else ''}.",
                "chest_tube": f"A {side}-sided intercostal drain is in situ.",
            }[d["kind"]])
        for d in f.detail.get("removed", []):
            out.append(f"The {DEVICE_NAMES['C'][d['kind']]} has been removed.")
        return out

    def findings_text(self, ctx: _Context, by_group: dict[str, list[str]], absent: list[str]) -> str:
        """Paragraphs: heart, lungs, pleura, bones; the normal statements; lines and tubes last."""
        paragraphs = [" ".join(by_group[g]) for g in ("heart", "lungs", "pleura", "bones") if by_group[g]]
        normal = []
        if "Cardiomegaly" in absent:
            ctx.mention("Cardiomegaly", NEGATIVE)
            normal.append("The heart is not enlarged.")
        if "Enlarged Cardiomediastinum" in absent:
            ctx.mention("Enlarged Cardiomediastinum", NEGATIVE)
            normal.append("The mediastinal contours are normal.")
        normal.append(self._negate_list(ctx, [o for o in ("Consolidation", "Edema") if o in absent], "No {} is seen."))
        normal.append(self._negate_list(ctx, [o for o in ("Pleural Effusion", "Pneumothorax") if o in absent],
                                        "There is no {}."))
        if "Fracture" in absent:
            ctx.mention("Fracture", NEGATIVE)
            normal.append("No rib fracture is identified.")
        if by_group["lungs"]:
            ctx.mention("Lung Opacity", NEGATIVE)
            normal.append("The lungs are otherwise clear.")
        paragraphs.append(" ".join(t for t in normal if t))
        if by_group["devices"]:
            paragraphs.append(" ".join(by_group["devices"]))
        return "\n".join(p for p in paragraphs if p)


STYLES: dict[str, type[Style]] = {"A": StyleA, "B": StyleB, "C": StyleC}

GROUPS = {  # finding -> section group
    "Support Devices": "devices", "Consolidation": "lungs", "Lung Opacity": "lungs", "Edema": "lungs",
    "Atelectasis": "lungs", "Lung Lesion": "lungs", "Pneumonia": "lungs", "Pleural Effusion": "pleura",
    "Pneumothorax": "pleura", "Pleural Other": "pleura", "Cardiomegaly": "heart",
    "Enlarged Cardiomediastinum": "heart", "Fracture": "bones",
}
IMPRESSION_ORDER = (
    "Pneumothorax", "Consolidation", "Pneumonia", "Edema", "Pleural Effusion", "Lung Lesion", "Cardiomegaly",
    "Enlarged Cardiomediastinum", "Lung Opacity", "Atelectasis", "Fracture", "Pleural Other", "Support Devices",
)


# ---------------------------------------------------------------------------------------------
