"""``unirg-trainer eval`` end to end (CliRunner) on a small synthetic testbed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from unirg.trainer.data import load_dataset, split_of
from unirg.trainer.eval_cli import eval_command


pytestmark = pytest.mark.testbed(patients=5, seed=11)  # the shared `testbed` fixture (conftest.py)


@pytest.fixture(scope="module")
def predictions(testbed, tmp_path_factory) -> tuple[Path, Path]:
    """(good, poor): copies of the reference at A/B and a normal report at C; a normal report everywhere."""
    out = tmp_path_factory.mktemp("preds")
    good, poor = out / "sft_rl.jsonl", out / "sft.jsonl"
    normal = {"findings": "The lungs are clear. No pleural effusion or pneumothorax.", "impression": "Normal chest."}
    with open(good, "w") as g, open(poor, "w") as p:
        for s in load_dataset(testbed.root):
            same = {"findings": s.findings, "impression": s.impression}
            g.write(json.dumps({"sample_id": s.sample_id, **(normal if s.institution == "C" else same)}) + "\n")
            p.write(json.dumps({"sample_id": s.sample_id, **normal}) + "\n")
    return good, poor


def _run(*args: str):
    result = CliRunner().invoke(eval_command, list(args), catch_exceptions=False)
    return result


def test_eval_writes_the_table_json_and_figure(testbed, predictions, tmp_path):
    good, _ = predictions
    out = tmp_path / "eval"
    r = _run("--data", str(testbed.root), "--predictions", str(good), "--out", str(out), "--n-boot", "100")
    assert r.exit_code == 0, r.output
    assert {p.name for p in out.iterdir()} >= {"eval.json", "eval.md", "eval.png"}
    data = json.loads((out / "eval.json").read_text())
    samples = load_dataset(testbed.root)
    assert data["overall"]["n"] == len(samples) and data["name"] == "sft_rl"
    assert set(data["groups"]) == {"institution", "sex", "age_band", "prior"}
    assert set(data["groups"]["institution"]) == {s.institution for s in samples}
    labels = {m["key"]: m["label"] for m in data["metrics"]}
    assert labels["semantic"] == "Embedding cosine (all-MiniLM-L6-v2)"
    assert labels["radcliq_v1"] == "RadCliQ-v1 (substitute components)"
    inst = data["groups"]["institution"]
    for site in set(inst) - {"C"}:
        assert inst[site]["metrics"]["chexpert_micro_f1_14"]["value"] == pytest.approx(1.0)
    cell = data["overall"]["metrics"]["chexpert_micro_f1_14"]
    assert cell["ci_low"] <= cell["value"] <= cell["ci_high"]
    assert "| **overall** |" in r.output and (out / "eval.png").read_bytes()[:4] == b"\x89PNG"
    # the same seed gives the same numbers
    _run("--data", str(testbed.root), "--predictions", str(good), "--out", str(tmp_path / "again"), "--n-boot", "100")
    assert json.loads((tmp_path / "again" / "eval.json").read_text())["overall"] == data["overall"]


def test_eval_held_out_institution_and_compare(testbed, predictions, tmp_path):
    good, poor = predictions
    common = ("--data", str(testbed.root), "--n-boot", "100", "--semantic", "none", "--group", "institution")
    assert _run(*common, "--predictions", str(poor), "--name", "SFT", "--out", str(tmp_path / "sft")).exit_code == 0
    r = _run(*common, "--predictions", str(good), "--name", "SFT+RL", "--out", str(tmp_path / "rl"),
             "--compare", f"SFT={tmp_path / 'sft' / 'eval.json'}")
    assert r.exit_code == 0, r.output
    cmp = json.loads((tmp_path / "rl" / "compare.json").read_text())
    assert cmp["runs"] == ["SFT", "SFT+RL"] and cmp["baseline"] == "SFT"
    assert (tmp_path / "rl" / "compare.md").is_file() and (tmp_path / "rl" / "compare.png").is_file()
    overall = cmp["blocks"][0]["metrics"]["bleu2"]["delta"]["SFT+RL"]
    assert overall["value"] > 0 and overall["ci_low"] > 0
    by_site = {b["group"]: b for b in cmp["blocks"]}
    assert by_site["institution = C"]["metrics"]["bleu2"]["delta"]["SFT+RL"]["value"] == pytest.approx(0.0)
    # compare saved runs only
    r = _run("--out", str(tmp_path / "cmp"), "--compare", f"SFT={tmp_path / 'sft' / 'eval.json'}",
             "--compare", f"RL={tmp_path / 'rl' / 'eval.json'}")
    assert r.exit_code == 0, r.output
    assert "Δ RL" in r.output
    # held-out institution only
    r = _run(*common, "--predictions", str(good), "--institution", "C", "--out", str(tmp_path / "c"))
    assert r.exit_code == 0, r.output
    data = json.loads((tmp_path / "c" / "eval.json").read_text())
    assert set(data["groups"]["institution"]) == {"C"}
    assert data["info"]["counts"]["predictions_without_sample"] > 0


def test_eval_patient_split_and_errors(testbed, predictions, tmp_path):
    good, _ = predictions
    r = _run("--data", str(testbed.root), "--predictions", str(good), "--semantic", "none", "--n-boot", "20",
             "--patient-split", "test", "--split-fractions", "train=0.5,test=0.5", "--out", str(tmp_path / "t"))
    test_patients = {s.patient_id for s in load_dataset(testbed.root)
                     if split_of(s.patient_id, seed=0, fractions={"train": 0.5, "test": 0.5}) == "test"}
    if test_patients:
        assert r.exit_code == 0, r.output
        data = json.loads((tmp_path / "t" / "eval.json").read_text())
        assert data["overall"]["n_patients"] == len(test_patients)
    else:
        assert r.exit_code == 1 and "no samples left" in r.output
    assert _run("--out", str(tmp_path / "x")).exit_code == 2
    r = _run("--predictions", str(good), "--out", str(tmp_path / "x"))
    assert r.exit_code == 2 and "--data" in r.output
    missing = tmp_path / "none.jsonl"
    missing.write_text(json.dumps({"sample_id": "nobody", "findings": "x"}) + "\n")
    r = _run("--data", str(testbed.root), "--predictions", str(missing), "--semantic", "none", "--out", str(tmp_path / "x"))
    assert r.exit_code == 1 and "nothing to evaluate" in r.output


def test_eval_drafts_with_a_model(testbed, tmp_path):
    import torch

    from unirg.trainer.tiny_models import build_tiny

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = build_tiny("qwen3_vl", tmp_path / "tiny")
        r = _run("--data", str(testbed.root), "--model", str(model), "--institution", "C", "--max-new-tokens", "8",
                 "--batch-size", "3", "--image-size", "64", "--semantic", "none", "--n-boot", "20",
                 "--device", "cpu", "--out", str(tmp_path / "out"))
    finally:
        torch.set_num_threads(threads)
    assert r.exit_code == 0, r.output
    preds = [json.loads(x) for x in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    c_studies = [s for s in load_dataset(testbed.root) if s.institution == "C"]
    assert sorted(p["sample_id"] for p in preds) == sorted(s.sample_id for s in c_studies)
    data = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert data["name"] == "tiny" and data["overall"]["n"] >= 1
