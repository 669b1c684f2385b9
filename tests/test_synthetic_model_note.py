"""A draft by a model trained on synthetic data only says so in its disclaimer.

The marker is the model manifest's ``"training_data": "synthetic"`` (``unirg-model.json``): ``unirg-trainer
sft`` writes it when it trains on the synthetic testbed (the shipped demo model has it, see
tests/test_demo_model.py), the loader carries it as ``ModelInfo.synthetic_training_data`` and the SR writer adds
"Model trained on synthetic data only." to the disclaimer.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from conftest import train_tiny_sft
from dicom_factories import make_chest_image
from unirg.model.model import MANIFEST, TRAINING_DATA, model_info
from unirg.sr_writer import ModelInfo, ReportSections, build_draft_sr, check_research_labels, read_report, \
    write_dataset_atomic
from unirg.sr_writer.build import SYNTHETIC_DATA_NOTE

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPORT = ReportSections("No focal consolidation.", "No acute cardiopulmonary process.")
SHA = hashlib.sha256(b"synthetic note test").hexdigest()


def test_disclaimer_says_synthetic_data_only_when_the_model_was(tmp_path, validate_sr):
    current = [make_chest_image(study="SYN")]
    synthetic = build_draft_sr(REPORT, ModelInfo("unirg-demo", "1", SHA, synthetic_training_data=True), current)
    real = build_draft_sr(REPORT, ModelInfo("unirg-cxr", "1", SHA), current)
    assert SYNTHETIC_DATA_NOTE == "Model trained on synthetic data only."
    assert SYNTHETIC_DATA_NOTE in read_report(synthetic).disclaimer
    assert "synthetic" not in read_report(real).disclaimer
    for sr in (synthetic, real):
        check_research_labels(sr)
        assert "not for clinical use" in read_report(sr).disclaimer.lower()
    validate_sr(write_dataset_atomic(synthetic, tmp_path / "synthetic.dcm"))


def test_model_info_reads_the_manifest_marker(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"not really weights")
    (tmp_path / MANIFEST).write_text(json.dumps({"name": "m", "version": "1"}))
    assert model_info(tmp_path).synthetic_training_data is False
    (tmp_path / MANIFEST).write_text(json.dumps({"name": "m", "version": "1", TRAINING_DATA: "synthetic"}))
    assert model_info(tmp_path).synthetic_training_data is True


def test_sft_on_the_testbed_marks_the_model_synthetic(tmp_path):
    from unirg.trainer.synth import generate_testbed

    data = tmp_path / "testbed"
    generate_testbed(data, patients=3, seed=0, size=128)
    out = train_tiny_sft(data, tmp_path / "model", max_steps=2)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest[TRAINING_DATA] == "synthetic"
    assert model_info(out).synthetic_training_data is True
