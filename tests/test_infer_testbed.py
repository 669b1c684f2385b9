"""Select -> pixels -> prompt -> draft on the synthetic testbed's studies.

Skipped until ``unirg.trainer.synth.generate_testbed`` exists (written alongside).
Uses the manifest contract of docs/design.md.
"""

from __future__ import annotations

import pydicom
import pytest

from unirg.model import GenerationConfig, StudyInput, load_model
from unirg.model.pixels import dataset_to_array
from unirg.trainer.tiny_models import build_tiny
from unirg.plugin.select import select_views


FRONTAL, LATERAL = {"PA", "AP"}, {"LL", "LATERAL"}


pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.testbed(patients=4)]  # the shared `testbed` fixture (conftest.py)


def test_every_testbed_image_decodes(testbed):
    root, studies = testbed
    seen_syntaxes = set()
    for study in studies:
        for entry in study["images"]:
            ds = pydicom.dcmread(root / entry["path"])
            seen_syntaxes.add(str(ds.file_meta.TransferSyntaxUID))
            pixels = dataset_to_array(ds)
            assert pixels.ndim == 2 and pixels.max() > pixels.min(), entry["path"]
    assert seen_syntaxes


def test_selection_matches_manifest_views(testbed):
    root, studies = testbed
    for study in studies:
        datasets = [pydicom.dcmread(root / entry["path"]) for entry in study["images"]]
        views = {entry["sop_instance_uid"]: entry["view"] for entry in study["images"]}
        if not any(view in FRONTAL for view in views.values()):
            continue
        selection = select_views(datasets)
        assert views[selection.frontal.SOPInstanceUID] in FRONTAL
        if selection.lateral is not None:
            assert views[selection.lateral.SOPInstanceUID] in LATERAL


def test_draft_testbed_studies_with_priors(testbed, tmp_path):
    root, studies = testbed
    by_uid = {study["study_uid"]: study for study in studies}

    def frontal(study: dict):
        datasets = [pydicom.dcmread(root / entry["path"]) for entry in study["images"]]
        return select_views(datasets)

    inputs = []
    for study in studies:
        if not any(entry["view"] in FRONTAL for entry in study["images"]):
            continue
        selection = frontal(study)
        prior = by_uid.get(study.get("prior_study_uid") or "")
        prior_frontal = prior_report = None
        if prior and any(entry["view"] in FRONTAL for entry in prior["images"]):
            prior_frontal = frontal(prior).frontal
            prior_report = "Findings: {findings}\nImpression: {impression}".format(**prior["report"])
        inputs.append(
            StudyInput.from_datasets(
                selection.frontal,
                selection.lateral,
                prior_frontal=prior_frontal,
                prior_report=prior_report,
                indication=study["report"].get("indication"),
            )
        )
    assert inputs
    model = load_model(build_tiny("qwen3_vl", tmp_path / "m", hidden_size=64, image_size=64))
    drafts = model.draft(inputs, GenerationConfig(max_new_tokens=6, batch_size=4))
    assert len(drafts) == len(inputs)
    assert [d.study_uid for d in drafts] == [s.study_uid for s in inputs]
    if any(s.prior_frontal is not None for s in inputs):
        assert any("Prior report:" in d.prompt_text for d in drafts)
