"""unirg.trainer.evaluate: metrics on hand-made cases, bootstrap CIs, grouping, outputs, compare."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from unirg.trainer.data import Prior, Sample
from unirg.trainer.evaluate import (
    RADCLIQ_V1_MEAN,
    EvalConfig,
    EvalResult,
    Prediction,
    bootstrap_weights,
    compare,
    evaluate,
    radcliq_v1,
    read_predictions,
    split_report,
    write_predictions,
)

FAST = {"semantic": "none", "n_boot": 200}

REPORTS = [
    ("Moderate cardiomegaly. Small left pleural effusion.", "Moderate cardiomegaly."),
    ("Right pneumothorax.", "No pneumothorax."),
    ("Left lower lobe atelectasis. Mild pulmonary edema.", "Mild pulmonary edema. Left basal atelectasis."),
    ("No acute cardiopulmonary process.", "No acute cardiopulmonary process."),
    ("Right lower lobe consolidation.", "Right lower lobe consolidation. Small right effusion."),
    ("Endotracheal tube in place. Lungs are clear.", "Lungs are clear."),
]


def _sample(i: int, findings: str, *, patient: str | None = None, institution: str = "A", sex: str = "F",
            age: int | None = 50, prior: bool = False) -> Sample:
    return Sample(sample_id=f"s{i}", patient_id=patient or f"p{i}", study_id=f"s{i}", findings=findings,
                  impression="", institution=institution, sex=sex, age=age,
                  prior=Prior(study_id=f"old{i}", report="Findings: Old.") if prior else None)


def _cohort(copies: int = 1) -> tuple[list[Sample], dict[str, Prediction]]:
    """The REPORTS cases repeated ``copies`` times, each copy a new set of patients (2 reports each)."""
    samples, preds = [], {}
    for c in range(copies):
        for k, (ref, cand) in enumerate(REPORTS):
            i = c * len(REPORTS) + k
            samples.append(_sample(i, ref, patient=f"p{c}-{k // 2}", institution="AB"[k % 2],
                                   sex="MF"[k % 3 == 0], age=[30, 45, 70, 85, None, 62][k], prior=k % 2 == 0))
            preds[f"s{i}"] = Prediction(f"s{i}", cand, "")
    return samples, preds


def _value(result: EvalResult, key: str) -> float:
    return result.overall["metrics"][key]["value"]


def test_perfect_predictions_score_one():
    samples, _ = _cohort()
    perfect = {s.sample_id: Prediction(s.sample_id, s.findings, "") for s in samples}
    r = evaluate(samples, perfect, EvalConfig(**FAST))
    for key in ("bleu2", "rouge_l", "semb", "radgraph", "chexpert_micro_f1_14", "chexpert_macro_f1_14",
                "chexpert_micro_f1_5", "chexpert_macro_f1_5"):
        assert _value(r, key) == pytest.approx(1.0), key
    assert "radcliq_v1" not in r.overall["metrics"]  # no semantic score, no RadCliQ-v1
    assert "RadCliQ-v1" in r.info["counts"]


def test_chexpert_f1_is_computed_over_the_whole_set():
    samples = [_sample(0, REPORTS[0][0]), _sample(1, REPORTS[1][0])]
    preds = {"s0": Prediction("s0", REPORTS[0][1]), "s1": Prediction("s1", REPORTS[1][1])}
    r = evaluate(samples, preds, EvalConfig(**FAST))
    # s0: Cardiomegaly TP, Pleural Effusion FN; s1: Pneumothorax FN, No Finding FP (the candidate is normal)
    assert _value(r, "chexpert_micro_f1_14") == pytest.approx(2 * 1 / (2 * 1 + 1 + 2))  # 0.4, not mean(2/3, 0)
    assert _value(r, "chexpert_macro_f1_14") == pytest.approx((1 + 0 + 0 + 0) / 4)  # over the 4 observations seen
    assert _value(r, "chexpert_micro_f1_5") == pytest.approx(2 / 3)  # Cardiomegaly TP, Effusion FN
    assert _value(r, "chexpert_macro_f1_5") == pytest.approx(0.5)


def test_uncertain_counts_as_positive_by_default():
    samples = [_sample(0, "Right lower lobe pneumonia.")]
    preds = {"s0": Prediction("s0", "Possible right lower lobe pneumonia.")}
    assert _value(evaluate(samples, preds, EvalConfig(**FAST)), "chexpert_micro_f1_14") == 1.0
    strict = evaluate(samples, preds, EvalConfig(uncertain="negative", **FAST))
    assert _value(strict, "chexpert_micro_f1_14") == 0.0


def test_groups_have_the_right_keys_and_sizes():
    samples, preds = _cohort(copies=2)
    r = evaluate(samples, preds, EvalConfig(**FAST))
    assert set(r.groups) == {"institution", "sex", "age_band", "prior"}
    assert {k: v["n"] for k, v in r.groups["institution"].items()} == {"A": 6, "B": 6}
    assert {k: v["n"] for k, v in r.groups["sex"].items()} == {"F": 4, "M": 8}
    assert {k: v["n"] for k, v in r.groups["age_band"].items()} == {
        "0-39": 2, "40-59": 2, "60-79": 4, "80+": 2, "unknown": 2}
    assert {k: v["n"] for k, v in r.groups["prior"].items()} == {"with prior": 6, "without prior": 6}
    assert r.overall["n"] == 12 and r.overall["n_patients"] == 6
    a_only = evaluate([s for s in samples if s.institution == "A"], preds, EvalConfig(**FAST))
    assert r.groups["institution"]["A"]["metrics"]["chexpert_micro_f1_14"]["value"] == pytest.approx(
        _value(a_only, "chexpert_micro_f1_14"))


def test_cis_contain_the_estimate_and_shrink_with_more_data():
    small = evaluate(*_cohort(copies=2), EvalConfig(**FAST))
    large = evaluate(*_cohort(copies=30), EvalConfig(**FAST))
    for key in ("bleu2", "rouge_l", "semb", "radgraph", "chexpert_micro_f1_14", "chexpert_micro_f1_5"):
        for r in (small, large):
            cell = r.overall["metrics"][key]
            assert cell["ci_low"] - 1e-9 <= cell["value"] <= cell["ci_high"] + 1e-9, (key, cell)
        width = lambda r: r.overall["metrics"][key]["ci_high"] - r.overall["metrics"][key]["ci_low"]  # noqa: E731
        assert width(large) < width(small), key
        # same per-report data repeated: the point estimate does not move
        assert _value(large, key) == pytest.approx(_value(small, key))


def test_bootstrap_is_deterministic_with_a_seed():
    samples, preds = _cohort(copies=3)
    a = evaluate(samples, preds, EvalConfig(seed=5, **FAST)).to_dict(include_reports=False)
    b = evaluate(samples, preds, EvalConfig(seed=5, **FAST)).to_dict(include_reports=False)
    c = evaluate(samples, preds, EvalConfig(seed=6, **FAST)).to_dict(include_reports=False)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert a["overall"]["metrics"]["bleu2"]["value"] == c["overall"]["metrics"]["bleu2"]["value"]
    assert a["overall"]["metrics"]["bleu2"]["ci_low"] != c["overall"]["metrics"]["bleu2"]["ci_low"]


def test_patient_bootstrap_keeps_a_patients_reports_together():
    patients = ["a", "a", "b", "c", "c", "c"]
    w = bootstrap_weights(patients, 50, np.random.default_rng(0), "patient")
    assert w.shape == (50, 6)
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 3] == w[:, 4]).all() and (w[:, 4] == w[:, 5]).all()
    assert (w[:, [0, 2, 3]].sum(1) == 3).all()  # 3 patients drawn each time
    r = bootstrap_weights(patients, 50, np.random.default_rng(0), "report")
    assert (r.sum(1) == 6).all() and not (r[:, 0] == r[:, 1]).all()
    samples, preds = _cohort(copies=2)
    by_report = evaluate(samples, preds, EvalConfig(resample="report", **FAST))
    assert "reports" in by_report.info["bootstrap"]


def test_radcliq_v1_uses_the_published_model_and_is_labelled_substitute():
    assert radcliq_v1(*(np.array([m]) for m in RADCLIQ_V1_MEAN))[0] == pytest.approx(0.0, abs=1e-9)
    worse = radcliq_v1(np.array([0.2]), np.array([0.4]), np.array([0.4]), np.array([0.1]))[0]
    assert worse == pytest.approx(0.377083683 * 1.1160 + 0.3703001 * 0.9700 + 0.252616218 * 1.4365, abs=2e-3)
    samples, preds = _cohort()
    poor = lambda cands, refs: [0.2] * len(cands)  # noqa: E731  a "real" SembScore / RadGraph scorer
    cfg = dict(semantic="embedding", n_boot=50, semb_scorer=poor, radgraph_scorer=poor)
    r = evaluate(samples, preds, EvalConfig(**cfg))
    labels = {m.key: m for m in r.metrics}
    assert labels["semantic"].label == "Embedding cosine (all-MiniLM-L6-v2)" and not labels["semantic"].real
    assert labels["semb"].label == "SembScore" and labels["semb"].real
    assert labels["radcliq_v1"].label == "RadCliQ-v1 (substitute components)"  # the cosine stands in for BERTScore
    assert not labels["radcliq_v1"].higher_is_better and labels["inv_radcliq_v1"].higher_is_better
    per_report = radcliq_v1(*(r.scores.values[k] for k in ("radgraph", "semantic", "semb", "bleu2")))
    assert np.allclose(r.scores.values["radcliq_v1"], per_report)
    mean = r.overall["metrics"]["radcliq_v1"]["value"]
    assert mean == pytest.approx(per_report.mean()) and mean > 0
    cell = r.overall["metrics"]["inv_radcliq_v1"]
    assert cell["value"] == pytest.approx(1 / mean) and cell["ci_low"] <= cell["value"] <= cell["ci_high"]
    # better than RadCliQ-v1's training mean: RadCliQ-v1 < 0 and 1/RadCliQ-v1 is undefined, not a big number
    good = lambda cands, refs: [0.95] * len(cands)  # noqa: E731
    r = evaluate(samples, preds, EvalConfig(**{**cfg, "semb_scorer": good, "radgraph_scorer": good}))
    assert r.overall["metrics"]["radcliq_v1"]["value"] < 0
    assert r.overall["metrics"]["inv_radcliq_v1"] == {"value": None, "ci_low": None, "ci_high": None}


class _CountingJudgeBackend:
    """A stand-in judge model: one significant 'false finding' per 'zqx' in the candidate."""

    judge_id = "fake-judge"

    def generate(self, conversations):
        answers = []
        for conv in conversations:
            text = conv[-1]["content"]
            candidate = text.split("CANDIDATE")[-1]
            n = candidate.count("zqx")
            answers.append(json.dumps({"significant": {c: (n if c == "A" else 0) for c in "ABCDEF"},
                                       "insignificant": {c: (1 if c == "B" else 0) for c in "ABCDEF"}}))
        return answers


def test_judge_errors_per_report_and_share_with_four_or_more():
    from unirg.trainer.rewards.judge import ClinicalErrorJudge

    judge = ClinicalErrorJudge(_CountingJudgeBackend(), answer_format="json")
    samples = [_sample(i, "Clear lungs.") for i in range(4)]
    preds = {f"s{i}": Prediction(f"s{i}", "Clear lungs." + " zqx" * k) for i, k in enumerate([0, 1, 4, 6])}
    r = evaluate(samples, preds, EvalConfig(judge=judge, **FAST))
    assert _value(r, "judge_errors") == pytest.approx((0 + 1 + 4 + 6) / 4)
    assert _value(r, "judge_ge4") == pytest.approx(0.5)
    assert _value(r, "judge_insignificant") == pytest.approx(1.0)
    assert r.info["config"]["judge"] == "fake-judge" and r.info["counts"]["judge_unparsed"] == 0
    assert {m.key: m.higher_is_better for m in r.metrics}["judge_errors"] is False


def test_missing_predictions_and_empty_references_are_counted():
    samples, preds = _cohort()
    samples.append(_sample(99, ""))
    preds["s99"] = Prediction("s99", "Clear lungs.")
    preds["ghost"] = Prediction("ghost", "Clear lungs.")
    del preds["s0"]
    r = evaluate(samples, preds, EvalConfig(**FAST))
    assert r.overall["n"] == len(REPORTS) - 1
    assert r.info["counts"]["without_prediction"] == 1 and r.info["counts"]["empty_reference"] == 1
    assert r.info["counts"]["predictions_without_sample"] == 1
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate(samples, {}, EvalConfig(**FAST))


def test_sections():
    s = Sample(sample_id="s", patient_id="p", study_id="s", findings="Clear lungs.", impression="Pneumothorax.")
    pred = {"s": Prediction("s", "Clear lungs.", "No pneumothorax.")}
    f = evaluate([s], pred, EvalConfig(section="findings", **FAST))
    i = evaluate([s], pred, EvalConfig(section="impression", **FAST))
    assert _value(f, "bleu2") == 1.0 and _value(i, "chexpert_micro_f1_14") == 0.0
    with pytest.raises(ValueError, match="section"):
        EvalConfig(section="report")


def test_outputs_are_written_and_round_trip(tmp_path):
    samples, preds = _cohort(copies=2)
    r = evaluate(samples, preds, EvalConfig(**FAST), name="run-a")
    paths = r.save(tmp_path)
    assert paths["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths["markdown"].read_text()
    assert md.startswith("# Evaluation: run-a") and "| **overall** | 12 |" in md and "institution = B" in md
    assert "RadGraph-F1 substitute" in md and "**substitute**" in md
    data = json.loads(paths["json"].read_text())
    assert data["overall"]["n"] == 12 and len(data["reports"]) == 12
    back = EvalResult.load(paths["json"])
    assert back.overall == r.overall and back.groups == r.groups
    assert back.scores.sample_ids == r.scores.sample_ids
    assert (back.scores.cand == r.scores.cand).all() and (back.scores.ref == r.scores.ref).all()
    for k, v in r.scores.values.items():
        assert np.allclose(back.scores.values[k], v, equal_nan=True)


def test_compare_pairs_runs_on_the_same_resamples(tmp_path):
    samples, preds = _cohort(copies=4)
    perfect = {s.sample_id: Prediction(s.sample_id, s.findings) for s in samples}
    cfg = EvalConfig(**FAST)
    sft, rl = evaluate(samples, preds, cfg, name="SFT"), evaluate(samples, perfect, cfg, name="SFT+RL")
    c = compare({"SFT": sft, "SFT+RL": rl})
    overall = c.blocks[0]
    assert overall["group"] == "overall" and [b["group"] for b in c.blocks[1:]] == ["institution = A", "institution = B"]
    f1 = overall["metrics"]["chexpert_micro_f1_14"]
    assert f1["runs"]["SFT"]["value"] == pytest.approx(_value(sft, "chexpert_micro_f1_14"))
    assert f1["runs"]["SFT+RL"]["value"] == pytest.approx(1.0)
    d = f1["delta"]["SFT+RL"]
    assert d["value"] == pytest.approx(1.0 - _value(sft, "chexpert_micro_f1_14"))
    assert 0 < d["ci_low"] <= d["value"] <= d["ci_high"]
    same = compare({"a": sft, "b": sft}).blocks[0]["metrics"]["bleu2"]["delta"]["b"]
    assert same == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0}  # paired: identical runs differ by exactly 0
    paths = c.save(tmp_path)
    md = paths["markdown"].read_text()
    assert "Δ SFT+RL" in md and " *" in md and paths["figure"].read_bytes()[:4] == b"\x89PNG"
    # from saved JSON too, and only on the reports both runs have
    sft.save(tmp_path / "sft")
    partial = evaluate(samples[:-3], preds, cfg, name="partial")
    c2 = compare({"SFT": EvalResult.load(tmp_path / "sft" / "eval.json"), "partial": partial})
    assert c2.info["shared_reports"] == len(samples) - 3 and c2.info["left_out"]["SFT"] == 3
    with pytest.raises(ValueError, match="two runs"):
        compare({"SFT": sft})


def test_predictions_file(tmp_path):
    path = write_predictions([Prediction("a", "Clear.", "Normal."), Prediction("b", "", "Effusion.")],
                             tmp_path / "p.jsonl")
    with open(path, "a") as f:
        f.write(json.dumps({"sample_id": "c", "report": "Findings: Left effusion.\nImpression: Effusion."}) + "\n")
    preds = read_predictions(path)
    assert preds["a"] == Prediction("a", "Clear.", "Normal.") and preds["c"].impression == "Effusion."
    assert preds["c"].findings == "Left effusion."
    with open(path, "a") as f:
        f.write(json.dumps({"sample_id": "a", "findings": "x"}) + "\n")
    with pytest.raises(ValueError, match="twice"):
        read_predictions(path)
    assert split_report("Only findings text.") == ("Only findings text.", "")


def test_config_is_checked():
    for bad in ({"resample": "study"}, {"ci": 1.5}, {"groups": ("scanner",)}, {"n_boot": -1}, {"semantic": "x"}):
        with pytest.raises(ValueError):
            EvalConfig(**bad)
    assert not math.isnan(EvalConfig().ci)
