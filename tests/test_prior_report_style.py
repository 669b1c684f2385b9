"""The prior report in the prompt as written ("text") or as the labeler reads it ("findings")."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from unirg.model.chexpert import OBSERVATIONS
from unirg.model.families import adapter_for
from unirg.model.model import manifest_prior_report_style
from unirg.model.labeler import label_report
from unirg.model.prompt import (
    NO_PRIOR_FINDINGS,
    NO_PRIOR_REPORT,
    PRIOR_FINDINGS_LABEL,
    PRIOR_REPORT_LABEL,
    build_prompt,
    prior_report_findings,
)
from unirg.model.study import StudyInput

# the same findings, written by an American and by a British radiologist
SAME_FINDINGS = [
    ("Findings: Moderate right pleural effusion. The heart is enlarged. No pneumothorax.\n"
     "Impression: Cardiomegaly with moderate right pleural effusion.",
     "The cardiac silhouette is enlarged. There is a moderate right-sided pleural effusion. "
     "No pneumothorax is seen.",
     "cardiomegaly; moderate right pleural effusion."),
    ("Left-sided PICC with tip in the SVC. Lungs are clear. No effusion.",
     "Left PICC line, tip projected over the superior vena cava. Clear lungs. Costophrenic angles are sharp.",
     "support devices."),
    ("Possible right lower lobe pneumonia. No pleural effusion or pneumothorax.",
     "Patchy shadowing at the right base, ? infective consolidation. No effusion or pneumothorax.",
     None),  # compared by observation below: the British wording names consolidation too
    ("Heart size, mediastinal contour, and pulmonary vascularity are within normal limits. No focal "
     "consolidation, pneumothorax, or large pleural effusion.",
     "Heart size normal. Lungs clear. No pleural effusion.",
     NO_PRIOR_FINDINGS),
]


@pytest.mark.parametrize("american, british, expected", SAME_FINDINGS)
def test_the_same_findings_in_two_styles_read_alike(american, british, expected):
    a, b = prior_report_findings(american), prior_report_findings(british)
    if expected is not None:
        assert a == b == expected
    else:
        assert "right pneumonia" in a and "right" in b and "pneumonia" in b


def test_findings_follow_the_labeler():
    report = ("Interval placement of an endotracheal tube. Small bilateral pleural effusions. "
              "Mild pulmonary oedema. Possible left lower lobe atelectasis. No pneumothorax.")
    summary = prior_report_findings(report)
    labels = label_report(report)
    named = [o for o in OBSERVATIONS[1:] if labels[o] in (1, -1)]
    # one item per positive or uncertain observation, in the labeler's order, nothing else
    assert [item.split()[-1] for item in summary.rstrip(".").split("; ")] == [o.lower().split()[-1] for o in named]
    assert "possible left atelectasis" in summary and "small bilateral pleural effusion" in summary
    assert "mild edema" in summary and "pneumothorax" not in summary


def test_a_size_word_belongs_to_its_own_finding():
    assert prior_report_findings("Large right pneumothorax and left pleural effusion.") == (
        "large right pneumothorax; left pleural effusion.")


def test_blank_and_normal_prior_reports():
    assert prior_report_findings("") == prior_report_findings(None) == NO_PRIOR_REPORT
    assert prior_report_findings("Normal chest radiograph.") == NO_PRIOR_FINDINGS


def _study(prior_report):
    image = Image.new("L", (32, 32))
    return StudyInput(frontal=image, prior_frontal=image, prior_report=prior_report)


def test_build_prompt_puts_the_findings_in_the_prior_report_slot():
    study = _study("Small left pleural effusion. Heart size is normal.")
    as_text = build_prompt(study).text_only()
    as_findings = build_prompt(study, prior_report_style="findings").text_only()
    assert f"{PRIOR_REPORT_LABEL} Small left pleural effusion. Heart size is normal." in as_text
    assert f"{PRIOR_FINDINGS_LABEL} small left pleural effusion." in as_findings
    assert "Heart size" not in as_findings
    # without a prior the two styles give the same prompt
    no_prior = StudyInput(frontal=Image.new("L", (32, 32)))
    assert build_prompt(no_prior).text_only() == build_prompt(no_prior, prior_report_style="findings").text_only()
    with pytest.raises(ValueError, match="prior_report_style"):
        build_prompt(study, prior_report_style="summary")


def test_the_manifest_names_the_style_and_an_adapter_manifest_wins(tmp_path):
    base, lora = tmp_path / "base", tmp_path / "lora"
    base.mkdir()
    lora.mkdir()
    assert manifest_prior_report_style(base) == "text"  # no manifest: UniRG-CXR's prompt
    (base / "unirg-model.json").write_text(json.dumps({"name": "b", "prompt": {"prior_report": "findings"}}))
    assert manifest_prior_report_style(base) == "findings"
    (lora / "unirg-model.json").write_text(json.dumps({"name": "l", "prompt": {"prior_report": "text"}}))
    assert manifest_prior_report_style(base, lora) == "text"
    assert adapter_for("qwen3_vl").prior_report_style == "text"
    with pytest.raises(ValueError, match="prior_report_style"):
        adapter_for("qwen3_vl", prior_report_style="labels")
