"""The rule-based CheXpert-14 labeler: hand-written report sentences first, then the synthetic testbed."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

from unirg.model.chexpert import OBSERVATIONS
from unirg.trainer.label_cli import label
from unirg.model.labeler import OTHER, Mention, aggregate, extract_mentions, label_report, report_text
from unirg.model.labeler import phrases as P
from unirg.model.labeler import triggers as T
from unirg.model.labeler.scan import Alternation

NF = "No Finding"


def labeled(text: str) -> dict[str, int]:
    """The non-None labels of a text."""
    return {k: v for k, v in label_report(text).items() if v is not None}


def cases(*rows):
    return [pytest.param(text, expected, id=text[:60]) for text, expected in rows]


NORMAL_BOILERPLATE = cases(
    ("Heart size is normal.", {"Cardiomegaly": 0, NF: 1}),
    ("The heart is normal in size.", {"Cardiomegaly": 0, NF: 1}),
    ("Normal heart size.", {"Cardiomegaly": 0, NF: 1}),
    ("The cardiac silhouette is within normal limits.", {"Cardiomegaly": 0, NF: 1}),
    ("Heart size is top normal.", {"Cardiomegaly": 0, NF: 1}),
    ("The heart is top-normal in size.", {"Cardiomegaly": 0, NF: 1}),
    ("Cardiac silhouette is at the upper limits of normal.", {"Cardiomegaly": 0, NF: 1}),
    ("The heart is not enlarged.", {"Cardiomegaly": 0, NF: 1}),
    ("The cardiomediastinal silhouette is normal.", {"Enlarged Cardiomediastinum": 0, NF: 1}),
    ("Normal cardiomediastinal contours.", {"Enlarged Cardiomediastinum": 0, NF: 1}),
    ("Mediastinal and hilar contours are unremarkable.", {"Enlarged Cardiomediastinum": 0, NF: 1}),
    ("The mediastinum is not widened.", {"Enlarged Cardiomediastinum": 0, NF: 1}),
    ("Heart size and mediastinal contours are within normal limits.",
     {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0, NF: 1}),
    ("The heart, mediastinum, and hila are normal.", {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0, NF: 1}),
    ("The lungs are clear.", {"Lung Opacity": 0, NF: 1}),
    ("Lungs are well expanded and clear.", {"Lung Opacity": 0, NF: 1}),
    ("Clear lungs.", {"Lung Opacity": 0, NF: 1}),
    ("The lungs are clear bilaterally.", {"Lung Opacity": 0, NF: 1}),
    ("No pleural effusion or pneumothorax.", {"Pleural Effusion": 0, "Pneumothorax": 0, NF: 1}),
    ("There is no pleural effusion or pneumothorax.", {"Pleural Effusion": 0, "Pneumothorax": 0, NF: 1}),
    ("No acute cardiopulmonary process.", {NF: 1}),
    ("No acute cardiopulmonary abnormality.", {NF: 1}),
    ("Costophrenic angles are sharp.", {"Pleural Effusion": 0, NF: 1}),
)

NEGATION = cases(
    ("No cardiomegaly.", {"Cardiomegaly": 0, NF: 1}),
    ("No focal consolidation, pleural effusion, or pneumothorax.",
     {"Consolidation": 0, "Pleural Effusion": 0, "Pneumothorax": 0, NF: 1}),
    ("No evidence of pneumonia.", {"Pneumonia": 0, NF: 1}),
    ("Negative for pneumothorax.", {"Pneumothorax": 0, NF: 1}),
    ("The lungs are free of focal airspace disease.", {"Lung Opacity": 0, NF: 1}),
    ("Without evidence of pulmonary edema.", {"Edema": 0, NF: 1}),
    ("No pulmonary edema or vascular congestion.", {"Edema": 0, NF: 1}),
    ("No displaced rib fractures.", {"Fracture": 0, NF: 1}),
    ("No suspicious pulmonary nodules or masses.", {"Lung Lesion": 0, NF: 1}),
    ("Pleural effusion is not seen.", {"Pleural Effusion": 0, NF: 1}),
    ("Pneumothorax is absent.", {"Pneumothorax": 0, NF: 1}),
    ("No definite focal consolidation.", {"Consolidation": 0, NF: 1}),
    ("Neither effusion nor pneumothorax.", {"Pleural Effusion": 0, "Pneumothorax": 0, NF: 1}),
    ("No CHF.", {"Edema": 0, NF: 1}),
    ("The lungs are clear without consolidation or effusion.",
     {"Lung Opacity": 0, "Consolidation": 0, "Pleural Effusion": 0, NF: 1}),
)

POSITIVE_AND_SYNONYMS = cases(
    ("Moderate cardiomegaly.", {"Cardiomegaly": 1}),
    ("Enlarged cardiac silhouette.", {"Cardiomegaly": 1}),
    ("The heart is enlarged.", {"Cardiomegaly": 1}),
    ("Heart size is mildly enlarged.", {"Cardiomegaly": 1}),
    ("Widened mediastinum.", {"Enlarged Cardiomediastinum": 1}),
    ("Small left pleural effusion.", {"Pleural Effusion": 1}),
    ("Fluid in the right pleural space.", {"Pleural Effusion": 1}),
    ("Layering pleural fluid on the right.", {"Pleural Effusion": 1}),
    ("Small pericardial effusion.", {}),  # not a pleural effusion, but a finding
    ("Large right PTX.", {"Pneumothorax": 1}),
    ("Right apical pneumothorax.", {"Pneumothorax": 1}),
    ("Patchy opacity at the left base.", {"Lung Opacity": 1}),
    ("Opacity over the heart.", {"Lung Opacity": 1}),  # positional, not a heart mention
    ("Right lower lobe consolidation.", {"Consolidation": 1}),
    ("Right lower lobe pneumonia.", {"Pneumonia": 1}),
    ("Bibasilar atelectasis.", {"Atelectasis": 1}),
    ("Plate-like atelectasis at the left base.", {"Atelectasis": 1}),
    ("Moderate pulmonary edema.", {"Edema": 1}),
    ("Interstitial edema.", {"Edema": 1}),
    ("Evidence of CHF.", {"Edema": 1, "Cardiomegaly": -1}),  # CheXpert: heart failure → cardiomegaly uncertain
    ("Congestive heart failure.", {"Edema": 1, "Cardiomegaly": -1}),
    ("A 1.5 cm nodule in the right upper lobe.", {"Lung Lesion": 1}),
    ("Left hilar mass.", {"Lung Lesion": 1}),
    ("Nodular opacity in the left lower lobe.", {"Lung Lesion": 1, "Lung Opacity": 1}),
    ("Left pleural thickening.", {"Pleural Other": 1}),
    ("Healed left rib fractures.", {"Fracture": 1}),
    ("Acute fracture of the right clavicle.", {"Fracture": 1}),
    ("Endotracheal tube terminates 4 cm above the carina.", {"Support Devices": 1, NF: 1}),
    ("ETT in standard position.", {"Support Devices": 1, NF: 1}),
    ("Enteric tube courses below the diaphragm.", {"Support Devices": 1, NF: 1}),
    ("Left PICC terminates in the SVC.", {"Support Devices": 1, NF: 1}),
    ("Dual-chamber pacemaker with leads in the right atrium and right ventricle.", {"Support Devices": 1, NF: 1}),
    ("Median sternotomy wires.", {"Support Devices": 1, NF: 1}),
    ("Right chest tube in place.", {"Support Devices": 1, NF: 1}),
    ("Small R PTX.", {"Pneumothorax": 1}),
    ("No PTX.", {"Pneumothorax": 0, NF: 1}),
)

COMPARISON = cases(
    ("Unchanged small left pleural effusion.", {"Pleural Effusion": 1}),
    ("Stable moderate cardiomegaly.", {"Cardiomegaly": 1}),
    ("Persistent right lower lobe opacity.", {"Lung Opacity": 1}),
    ("Slightly increased left effusion.", {"Pleural Effusion": 1}),
    ("Improving left lower lobe pneumonia.", {"Pneumonia": 1}),
    ("Resolved right pneumothorax.", {"Pneumothorax": 0, NF: 1}),
    ("The right pneumothorax has resolved.", {"Pneumothorax": 0, NF: 1}),
    ("Interval resolution of the left pleural effusion.", {"Pleural Effusion": 0, NF: 1}),
    ("Interval removal of the endotracheal tube.", {"Support Devices": 0, NF: 1}),
    ("s/p removal of ETT.", {"Support Devices": 0, NF: 1}),
    ("The nasogastric tube has been removed.", {"Support Devices": 0, NF: 1}),
    ("The pneumothorax is no longer seen.", {"Pneumothorax": 0, NF: 1}),
    ("Partially resolved right pneumothorax.", {"Pneumothorax": 1}),
    # pseudo-negations
    ("No interval change in the small left effusion.", {"Pleural Effusion": 1}),
    ("There is no change in the small left effusion.", {"Pleural Effusion": 1}),
    ("No significant change in bibasilar atelectasis.", {"Atelectasis": 1}),
    # CheXpert's comparison rules
    ("No new consolidation.", {"Consolidation": -1}),
    ("Stable cardiomediastinal silhouette.", {"Enlarged Cardiomediastinum": -1}),
    ("Heart size is unchanged.", {"Cardiomegaly": -1}),
    ("Heart size is enlarged but unchanged.", {"Cardiomegaly": 1}),
    ("Heart size is mildly enlarged but stable.", {"Cardiomegaly": 1}),
)

UNCERTAINTY = cases(
    ("Cannot exclude pneumonia.", {"Pneumonia": -1}),
    ("Pneumonia cannot be excluded.", {"Pneumonia": -1}),
    ("Early pneumonia is not excluded.", {"Pneumonia": -1}),
    ("Possible small left effusion.", {"Pleural Effusion": -1}),
    ("Possibly atelectasis.", {"Atelectasis": -1}),
    ("Probable right lower lobe pneumonia.", {"Pneumonia": -1}),
    ("Findings may represent pneumonia.", {"Pneumonia": -1}),
    ("This could be atelectasis.", {"Atelectasis": -1}),
    ("Opacity suspicious for pneumonia.", {"Lung Opacity": 1, "Pneumonia": -1}),
    ("Findings concerning for pneumonia.", {"Pneumonia": -1}),
    ("Questionable small right pneumothorax.", {"Pneumothorax": -1}),
    ("Suspected left lower lobe pneumonia.", {"Pneumonia": -1}),
    ("Differential diagnosis includes pneumonia.", {"Pneumonia": -1}),
    ("Clinical correlation for pneumonia is recommended.", {"Pneumonia": -1}),
    ("Atelectasis versus pneumonia.", {"Atelectasis": -1, "Pneumonia": -1}),
    ("Atelectasis vs. pneumonia in the left lower lobe.", {"Atelectasis": -1, "Pneumonia": -1}),
    ("Atelectasis or pneumonia at the left base.", {"Atelectasis": -1, "Pneumonia": -1}),
    ("Retrocardiac opacity, atelectasis or pneumonia.", {"Lung Opacity": 1, "Atelectasis": -1, "Pneumonia": -1}),
    ("Left lower lobe opacity may represent atelectasis or pneumonia.",
     {"Lung Opacity": 1, "Atelectasis": -1, "Pneumonia": -1}),
    ("Opacity likely atelectasis.", {"Lung Opacity": 1, "Atelectasis": 1}),  # CheXpert: "likely" is positive
    ("Pneumonia is less likely.", {"Pneumonia": -1}),
    ("Borderline cardiomegaly.", {"Cardiomegaly": -1}),
    ("Heart size is borderline.", {"Cardiomegaly": -1}),
    ("Blunting of the left costophrenic angle.", {"Pleural Effusion": -1}),
    ("Left costophrenic angle is blunted.", {"Pleural Effusion": -1}),
    ("Pulmonary vascular congestion.", {"Edema": -1}),
    ("Mild vascular congestion.", {"Edema": -1}),
)

MULTI_CLAUSE = cases(
    ("No pneumothorax, but there is a small left pleural effusion.", {"Pneumothorax": 0, "Pleural Effusion": 1}),
    ("No pneumothorax; small left effusion.", {"Pneumothorax": 0, "Pleural Effusion": 1}),
    ("No pneumothorax, small left pleural effusion.", {"Pneumothorax": 0, "Pleural Effusion": 1}),
    ("No effusion and mild bibasilar atelectasis.", {"Pleural Effusion": 0, "Atelectasis": 1}),
    ("Heart size is enlarged, mediastinum normal.", {"Cardiomegaly": 1, "Enlarged Cardiomediastinum": 0}),
    ("Normal heart size, small right effusion.", {"Cardiomegaly": 0, "Pleural Effusion": 1}),
    ("Heart size is normal and there is no pneumothorax.", {"Cardiomegaly": 0, "Pneumothorax": 0, NF: 1}),
    ("Left lower lobe opacity which may represent atelectasis.", {"Lung Opacity": 1, "Atelectasis": -1}),
    ("There is no focal consolidation; however, a small right pneumothorax is present.",
     {"Consolidation": 0, "Pneumothorax": 1}),
    ("No pleural effusion. Moderate cardiomegaly.", {"Pleural Effusion": 0, "Cardiomegaly": 1}),
    ("No pneumothorax is seen and there is a moderate left effusion.", {"Pneumothorax": 0, "Pleural Effusion": 1}),
    ("IMPRESSION: 1. No acute cardiopulmonary process. 2. Stable small right effusion.", {"Pleural Effusion": 1}),
    ("There is mild cardiomegaly, but no pulmonary edema.", {"Cardiomegaly": 1, "Edema": 0}),
    ("Increased opacity at the left base could reflect atelectasis, aspiration, or pneumonia.",
     {"Lung Opacity": 1, "Atelectasis": -1, "Pneumonia": -1}),
    ("Minimal blunting of the left costophrenic angle may reflect a trace effusion or pleural thickening.",
     {"Pleural Effusion": -1, "Pleural Other": -1}),
    ("Right upper lobe pneumonia has improved but not completely resolved.", {"Pneumonia": 1}),
    ("Lungs are clear without focal consolidation, effusion, or pneumothorax.",
     {"Lung Opacity": 0, "Consolidation": 0, "Pleural Effusion": 0, "Pneumothorax": 0, NF: 1}),
    # section headers name what follows and state nothing
    ("Heart and mediastinum: Normal heart size. Normal mediastinal contours.",
     {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0, NF: 1}),
    ("Lines and tubes: Interval removal of the endotracheal tube.", {"Support Devices": 0, NF: 1}),
    ("Lungs: Clear. Pleura: No effusion.", {"Lung Opacity": 0, "Pleural Effusion": 0, NF: 1}),
    # terse abbreviations
    ("Heart size nml. Lungs clear. No PTX or effusion.",
     {"Cardiomegaly": 0, "Lung Opacity": 0, "Pneumothorax": 0, "Pleural Effusion": 0, NF: 1}),
    ("Poss L rib fx. ? sm R effusion. ETT, NGT and CVC out.",
     {"Fracture": -1, "Pleural Effusion": -1, "Support Devices": 0}),
    ("Nodule in the right mid zone measuring 14 mm is not excluded.", {"Lung Lesion": -1}),
    ("The opacity has progressed since 6 May 2021, in keeping with pneumonia.", {"Lung Opacity": 1, "Pneumonia": 1}),
)

# Phrasings of real reports that the rules once missed (issue 11); tests/test_labeler_real_style.py has the set.
REAL_PHRASING = cases(
    ("No focal consolidation, pneumothorax, or large pleural effusion.",
     {"Consolidation": 0, "Pneumothorax": 0, "Pleural Effusion": 0, NF: 1}),
    ("No pneumothorax, moderate effusion, or focal airspace disease.",
     {"Pneumothorax": 0, "Pleural Effusion": 0, "Lung Opacity": 0, NF: 1}),
    ("No pneumothorax, small left effusion.", {"Pneumothorax": 0, "Pleural Effusion": 1}),
    ("Normal size and configuration of the cardiac silhouette.", {"Cardiomegaly": 0, NF: 1}),
    ("Normal size and contour of the mediastinum.", {"Enlarged Cardiomediastinum": 0, NF: 1}),
    ("Cardiac and mediastinal silhouettes are unremarkable.",
     {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0, NF: 1}),
    ("The lungs are well inflated and clear.", {"Lung Opacity": 0, NF: 1}),
    ("The line terminates at the cavoatrial junction.", {"Support Devices": 1, NF: 1}),
    ("Tip of the right-sided line in the SVC.", {"Support Devices": 1, NF: 1}),
    ("Surgical clips in the right axilla.", {"Support Devices": 1, NF: 1}),
    ("No pneumothorax following left chest tube placement.", {"Pneumothorax": 0, "Support Devices": 1, NF: 1}),
    ("Right mid zone airspace shadowing, likely infective.", {"Lung Opacity": 1, "Pneumonia": 1}),
    ("Upper lobe venous diversion in keeping with cardiac failure.", {"Edema": 1, "Cardiomegaly": -1}),
    ("Diffuse opacities, ARDS or pulmonary edema.", {"Lung Opacity": 1, "Edema": -1}),
)


@pytest.mark.parametrize("text, expected", NORMAL_BOILERPLATE)
def test_normal_boilerplate(text, expected):
    assert labeled(text) == expected


@pytest.mark.parametrize("text, expected", NEGATION)
def test_negation(text, expected):
    assert labeled(text) == expected


@pytest.mark.parametrize("text, expected", POSITIVE_AND_SYNONYMS)
def test_positive_mentions_synonyms_and_abbreviations(text, expected):
    assert labeled(text) == expected


@pytest.mark.parametrize("text, expected", COMPARISON)
def test_comparison_language(text, expected):
    assert labeled(text) == expected


@pytest.mark.parametrize("text, expected", UNCERTAINTY)
def test_uncertainty(text, expected):
    assert labeled(text) == expected


@pytest.mark.parametrize("text, expected", MULTI_CLAUSE)
def test_multi_clause_and_multi_sentence(text, expected):
    assert labeled(text) == expected


@pytest.mark.parametrize("text, expected", REAL_PHRASING)
def test_real_report_phrasing(text, expected):
    assert labeled(text) == expected


NORMAL_REPORT = """FINDINGS: PA and lateral views of the chest. The heart size is at the upper limits of normal.
Mediastinal and hilar contours are unremarkable. Lungs are clear. No pleural effusion or pneumothorax is present.

IMPRESSION: No acute cardiopulmonary process."""

ICU_REPORT = """Portable AP chest. Endotracheal tube tip is 5 cm above the carina. Nasogastric tube courses below the
diaphragm with tip in the stomach. Right internal jugular central venous catheter tip in the mid SVC.
Moderate cardiomegaly is unchanged. There is mild pulmonary vascular congestion and small bilateral
pleural effusions with adjacent bibasilar atelectasis. No pneumothorax.
IMPRESSION: Lines and tubes in standard position. Mild pulmonary edema, small bilateral effusions."""

COPD_REPORT = """The lungs are hyperinflated with flattening of the diaphragms, consistent with COPD. There is no
focal consolidation, pleural effusion or pneumothorax. The cardiomediastinal silhouette is normal.
Degenerative changes are seen in the thoracic spine."""


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param(NORMAL_REPORT, {"Cardiomegaly": 0, "Enlarged Cardiomediastinum": 0, "Lung Opacity": 0,
                                     "Pleural Effusion": 0, "Pneumothorax": 0, NF: 1}, id="normal"),
        pytest.param(ICU_REPORT, {"Cardiomegaly": 1, "Edema": 1, "Pleural Effusion": 1, "Atelectasis": 1,
                                  "Pneumothorax": 0, "Support Devices": 1}, id="icu"),
        # Emphysema / degenerative change are findings outside the 14: they block No Finding (CheXpert).
        pytest.param(COPD_REPORT, {"Consolidation": 0, "Pleural Effusion": 0, "Pneumothorax": 0,
                                   "Enlarged Cardiomediastinum": 0}, id="copd"),
    ],
)
def test_whole_reports(text, expected):
    assert labeled(text) == expected


# ------------------------------------------------------------------------------------------ laterality
@pytest.mark.parametrize(
    "text, observation, laterality",
    [
        ("Small left pleural effusion.", "Pleural Effusion", "left"),
        ("Right apical pneumothorax.", "Pneumothorax", "right"),
        ("Bilateral pleural effusions.", "Pleural Effusion", "bilateral"),
        ("Bibasilar atelectasis.", "Atelectasis", "bilateral"),
        ("Opacity in the left lower lobe.", "Lung Opacity", "left"),
        ("Consolidation at the right base.", "Consolidation", "right"),
        ("Pleural effusions bilaterally.", "Pleural Effusion", "bilateral"),
        ("Left-sided pleural effusion.", "Pleural Effusion", "left"),
        ("Retrocardiac opacity.", "Lung Opacity", "left"),
        ("Right IJ central venous catheter tip in the SVC.", "Support Devices", "right"),
        ("Small R PTX.", "Pneumothorax", "right"),
        ("No right pneumothorax.", "Pneumothorax", "right"),
        ("Pneumothorax.", "Pneumothorax", None),
        ("Moderate cardiomegaly.", "Cardiomegaly", None),
        ("Left and right pleural effusions.", "Pleural Effusion", "bilateral"),
        ("Small left pleural effusion with adjacent atelectasis.", "Atelectasis", "left"),
        ("RLL consolidation.", "Consolidation", "right"),
        ("Poss sm bilat effusions.", "Pleural Effusion", "bilateral"),
    ],
)
def test_laterality(text, observation, laterality):
    mentions = [m for m in extract_mentions(text) if m.observation == observation]
    assert mentions, f"no {observation} mention in {text!r}"
    assert mentions[0].laterality == laterality


def test_laterality_is_per_mention():
    mentions = extract_mentions("Bilateral pleural effusions and left lower lobe atelectasis. Right PICC in place.")
    assert [(m.observation, m.laterality) for m in mentions] == [
        ("Pleural Effusion", "bilateral"), ("Atelectasis", "left"), ("Support Devices", "right")]


def test_device_laterality_ignores_words_after_the_device():
    (ett,) = [m for m in extract_mentions("ET tube terminates 4 cm above the carina, right of midline.")
              if m.observation == "Support Devices"]
    assert ett.laterality is None


# ------------------------------------------------------------------------------------------ mentions API
def test_mention_fields_and_spans():
    text = "Heart size is normal.  Small left effusion; no pneumothorax."
    mentions = extract_mentions(text)
    assert all(isinstance(m, Mention) for m in mentions)
    assert [(m.observation, m.label) for m in mentions] == [
        ("Cardiomegaly", 0), ("Pleural Effusion", 1), ("Pneumothorax", 0)]
    for m in mentions:
        assert text[m.span[0]:m.span[1]] == m.text
        s, e = m.sentence_span
        assert s <= m.span[0] < m.span[1] <= e
    assert text[slice(*mentions[1].sentence_span)] == "Small left effusion; no pneumothorax."
    assert mentions[0].rule == "negated: normal" and mentions[1].rule == "default"
    assert mentions[1].finding == "pleural effusion"


def test_other_findings_only_on_request():
    text = "Emphysema. Calcified granuloma in the left upper lobe."
    assert extract_mentions(text) == []
    others = extract_mentions(text, include_other=True)
    assert {m.finding for m in others} >= {"emphysema", "granuloma"}
    assert all(m.observation == OTHER for m in others)


def test_label_report_is_aggregate_of_mentions():
    for text in (ICU_REPORT, NORMAL_REPORT, COPD_REPORT):
        assert label_report(text) == aggregate(extract_mentions(text, include_other=True))


def test_mentions_are_case_insensitive_and_keep_original_text():
    (m,) = extract_mentions("LARGE RIGHT PNEUMOTHORAX")
    assert (m.observation, m.label, m.laterality, m.text) == ("Pneumothorax", 1, "right", "PNEUMOTHORAX")


# ------------------------------------------------------------------------------------------ aggregation rules
def _m(observation, label):
    return Mention(observation, observation.lower(), label, None, (0, 1), (0, 1), "x", "test")


@pytest.mark.parametrize(
    "labels, expected",
    [([1, 0], 1), ([0, 1], 1), ([-1, 0], -1), ([0, -1], -1), ([-1, 1], 1), ([0, 0], 0), ([-1, -1], -1)],
)
def test_aggregation_positive_beats_uncertain_beats_negative(labels, expected):
    assert aggregate([_m("Edema", v) for v in labels])["Edema"] == expected


@pytest.mark.parametrize(
    "mentions, no_finding",
    [
        ([], 1),
        ([_m("Pneumothorax", 0), _m("Cardiomegaly", 0)], 1),
        ([_m("Support Devices", 1)], 1),  # devices do not count
        ([_m("Support Devices", 1), _m("Edema", 0)], 1),
        ([_m("Edema", -1)], None),  # uncertain counts as a finding
        ([_m("Fracture", 1)], None),
        ([_m(OTHER, 1)], None),  # findings outside the 14 count
        ([_m(OTHER, 0)], 1),
    ],
)
def test_no_finding_rule(mentions, no_finding):
    labels = aggregate(mentions)
    assert labels[NF] == no_finding
    assert set(labels) == set(OBSERVATIONS)


def test_no_finding_is_never_zero_and_parents_are_not_propagated():
    labels = label_report("Right lower lobe pneumonia. Moderate cardiomegaly.")
    assert labels[NF] is None
    assert labels["Lung Opacity"] is None  # CheXpert does not propagate to the parent
    assert labels["Enlarged Cardiomediastinum"] is None


def test_blank_text_has_no_labels():
    assert label_report("") == dict.fromkeys(OBSERVATIONS)
    assert label_report("  \n ") == dict.fromkeys(OBSERVATIONS)
    assert extract_mentions("") == []


def test_wrong_type_names_the_argument():
    with pytest.raises(TypeError, match="text must be a str"):
        label_report(None)  # type: ignore[arg-type]


def test_report_text_joins_findings_and_impression():
    sections = {"indication": "Cough, rule out pneumonia.", "comparison": None,
                "findings": "Small left effusion.", "impression": "No pneumothorax."}
    assert report_text(sections) == "Small left effusion.\n\nNo pneumothorax."
    assert report_text(None) == "" and report_text("x") == "x"
    assert labeled(report_text(sections)) == {"Pleural Effusion": 1, "Pneumothorax": 0}


# ------------------------------------------------------------------------------------------ machinery
def test_every_phrase_pattern_compiles_and_has_a_known_observation():
    assert set(P.MENTIONS) == set(OBSERVATIONS) - {NF}
    assert set(P.UNMENTIONS) <= set(P.MENTIONS)
    for group in [*P.MENTIONS.values(), P.OTHER_FINDINGS]:
        for phrase in group:
            Alternation([phrase.pattern])
            assert phrase.label in (None, 0, -1)


@pytest.mark.parametrize("group", [*P.MENTIONS, "other", "triggers"])
def test_fast_alternation_finds_what_re_finditer_finds(group):
    if group == "other":
        patterns = [p.pattern for p in P.OTHER_FINDINGS]
    elif group == "triggers":
        patterns = [t.pattern for t in T.NEGATION_FWD + T.NEGATION_BWD + T.UNCERTAINTY_BWD]
    else:
        patterns = [p.pattern for p in P.MENTIONS[group]]
    alternation = Alternation(patterns)
    corpus = [p.values[0].lower() for table in (NORMAL_BOILERPLATE, NEGATION, POSITIVE_AND_SYNONYMS, COMPARISON,
                                                UNCERTAINTY, MULTI_CLAUSE, REAL_PHRASING) for p in table]
    corpus += [NORMAL_REPORT.lower(), ICU_REPORT.lower(), COPD_REPORT.lower()]
    for text in corpus:
        fast = [(s, e) for s, e, _ in alternation.finditer(text)]
        slow = [m.span() for m in alternation.regex.finditer(text)]
        assert [e for _, e in fast] == [e for _, e in slow], text


def test_speed_thousands_of_reports_per_second():
    reports = [NORMAL_REPORT, ICU_REPORT, COPD_REPORT, "No acute process.", "Small left effusion."] * 200
    label_report(reports[0])
    start = time.perf_counter()
    for i, r in enumerate(reports):
        label_report(r + f" {i}")
    rate = len(reports) / (time.perf_counter() - start)
    # ~2,000-6,000/s on one core of the dev machine; the bound leaves room for a loaded CI machine.
    assert rate > 500, f"{rate:.0f} reports/s"


# ------------------------------------------------------------------------------------------ CLI
def test_cli_text_lines(tmp_path):
    f = tmp_path / "reports.txt"
    f.write_text("Small left effusion.\n\nNo pneumothorax.\n")
    result = CliRunner().invoke(label, [str(f)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert len(rows) == 3 and all(list(r) == list(OBSERVATIONS) for r in rows)
    assert rows[0]["Pleural Effusion"] == 1 and rows[0][NF] is None
    assert rows[1] == dict.fromkeys(OBSERVATIONS)
    assert rows[2]["Pneumothorax"] == 0 and rows[2][NF] == 1


def test_cli_csv_and_jsonl(tmp_path):
    csv_file = tmp_path / "r.csv"
    csv_file.write_text('id,text\n1,"No effusion, no pneumothorax."\n2,Possible pneumonia.\n')
    result = CliRunner().invoke(label, [str(csv_file), "--csv-column", "text"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert rows[0]["Pleural Effusion"] == 0 and rows[1]["Pneumonia"] == -1

    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text(json.dumps({"report": {"findings": "Moderate cardiomegaly.", "impression": "No edema."}}) + "\n")
    result = CliRunner().invoke(label, [str(jsonl), "--jsonl-field", "report", "--mentions"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.output)
    assert row["labels"]["Cardiomegaly"] == 1 and row["labels"]["Edema"] == 0
    assert [m["observation"] for m in row["mentions"]] == ["Cardiomegaly", "Edema"]

    result = CliRunner().invoke(label, [str(csv_file), "--csv-column", "nope"])
    assert result.exit_code != 0 and "no column 'nope'" in result.output


# ------------------------------------------------------------------------------------------ synthetic testbed
# The testbed's reports record their own ground-truth labels (unirg.trainer.synth). Conventions that differ
# by design, counted as agreement: "lungs are clear" is Lung Opacity 0 here and unmentioned there.
CONVENTIONS = {("Lung Opacity", None, 0)}


def _testbed_agreement(records: list[dict]) -> dict[str, float]:
    agree = dict.fromkeys(OBSERVATIONS, 0)
    for rec in records:
        got = label_report(report_text(rec["report"]))
        for o in OBSERVATIONS:
            want = rec["labels"][o]
            if got[o] == want or (o, want, got[o]) in CONVENTIONS:
                agree[o] += 1
    return {o: n / len(records) for o, n in agree.items()}


@pytest.fixture(scope="module")
def testbed_records(tmp_path_factory):
    from unirg.trainer.synth import generate
    out = tmp_path_factory.mktemp("testbed")
    generate.generate_testbed(out, 30, 0, 128)
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines() if line.strip()]


def test_labels_agree_with_the_synthetic_testbed(testbed_records):
    agreement = _testbed_agreement(testbed_records)
    table = "\n".join(f"{o:28s} {a:.3f}" for o, a in agreement.items())
    print(f"\nlabeler vs testbed labels, {len(testbed_records)} reports:\n{table}")
    overall = sum(agreement.values()) / len(agreement)
    assert overall >= 0.95, table
    assert min(agreement.values()) >= 0.85, table
