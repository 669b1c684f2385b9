"""The feedback loop's capture: scores of a draft against its signed final, the pair table's upsert rules,
the final chosen by the prior-report policy, and the real listener end to end (``unirg listen`` /
``unirg worker`` subprocesses, DCMTK storescu, the stub pipeline), on SQLite and PostgreSQL, plus
``unirg feedback`` and ``unirg feedback import``.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydicom import dcmread

from dicom_peers import STUB_FINDINGS, STUB_IMPRESSION, dcmtk_available, postgres_database, save, storescu, \
    storescu_successes, wait_for, write_study
from prior_reports import human_report, other_ai_report, our_draft
from conftest import require_postgres
from unirg.model.chexpert import OBSERVATIONS
from unirg.model.feedback import read_pairs, record_pair, score_pair
from unirg.plugin.cli import main
from unirg.plugin.feedback.capture import choose_final, content_time
from unirg.plugin.feedback.summary import summarize
from unirg.plugin.queue import make_engine

DRAFT = ("Findings: Small left pleural effusion. Heart size is normal. No pneumothorax.\n"
         "Impression: Small left effusion.")
FINAL = ("Findings: Small left pleural effusion. The heart is enlarged. Possible right lower lobe pneumonia.\n"
         "Impression: Effusion, cardiomegaly, possible pneumonia.")
FINAL_FINDINGS = "Small left pleural effusion. The heart is enlarged."


def fixed_embed(a: str, b: str) -> float:
    return 0.25


# -- scoring --------------------------------------------------------------------------------------------
def test_score_pair_exact_numbers_on_crafted_texts():
    s = score_pair(DRAFT, FINAL, embed=fixed_embed)
    assert s["draft_labels"]["Cardiomegaly"] == 0 and s["final_labels"]["Cardiomegaly"] == 1
    assert s["draft_labels"]["Pneumonia"] is None and s["final_labels"]["Pneumonia"] == -1
    assert s["draft_labels"]["Pneumothorax"] == 0 and s["final_labels"]["Pneumothorax"] is None  # both negative
    assert s["label_agreement"] == 12 / 14  # Cardiomegaly (0 vs 1) and Pneumonia (- vs -1) differ
    assert s["discordant"] == {"missed": ["Cardiomegaly"], "false": [], "uncertain": ["Pneumonia"]}
    # ROUGE-L by hand: stemmed tokens 15 (draft) and 19 (final), LCS 9 -> F = 2*9 / (15+19)
    assert s["rouge_l"] == pytest.approx(18 / 34, abs=1e-12)
    assert s["bleu2"] == pytest.approx(0.40168, abs=1e-5)  # sacrebleu sentence BLEU-2
    assert s["embedding_similarity"] == 0.25 and s["judge_errors"] is None

    swapped = score_pair(FINAL, DRAFT, embed=fixed_embed)  # draft says it, final does not: "false"
    assert swapped["discordant"] == {"missed": [], "false": ["Cardiomegaly"], "uncertain": ["Pneumonia"]}

    same = score_pair(DRAFT, DRAFT, judge=lambda d, f: {"clinically_significant": 0, "seen": [d == f]})
    assert (same["label_agreement"], same["bleu2"], same["rouge_l"]) == (1.0, 1.0, 1.0)
    assert same["embedding_similarity"] == pytest.approx(1.0, abs=1e-5)  # the shipped MiniLM, same text
    assert same["judge_errors"] == {"clinically_significant": 0, "seen": [True]}

    apart = score_pair("Findings: Large right pneumothorax.\nImpression: Pneumothorax.",
                       "Findings: Endotracheal tube in place.\nImpression: Support device.", embed=fixed_embed)
    # Pneumothorax false; Support Devices missed, and "No Finding" (a device alone is no finding)
    assert apart["label_agreement"] == 11 / 14
    assert apart["discordant"] == {"missed": ["No Finding", "Support Devices"], "false": ["Pneumothorax"],
                                   "uncertain": []}


def test_summary_by_version_observation_and_day():
    def rec(version, agreement, day, missed=()):
        scores = {"draft_labels": {}, "final_labels": {o: 1 for o in missed}, "label_agreement": agreement,
                  "discordant": {"missed": list(missed), "false": [], "uncertain": []},
                  "bleu2": 0.5, "rouge_l": 0.25, "embedding_similarity": None}
        return {"model_version": version, "label_agreement": agreement, "scores": scores,
                "paired_at": dt.datetime(2026, 12, day, 12, tzinfo=dt.timezone.utc).timestamp()}

    records = [rec("m 1", 1.0, 1), rec("m 1", 13 / 14, 2, ["Edema"]), rec("m 2", 1.0, 2)]
    s = summarize(records)
    assert s["n"] == 3 and list(s["by_version"]) == ["m 1", "m 2"]
    v1 = s["by_version"]["m 1"]
    assert v1["n"] == 2 and v1["agreement"]["mean"] == pytest.approx(27 / 28)
    assert 13 / 14 <= v1["agreement"]["ci_low"] <= v1["agreement"]["ci_high"] <= 1.0
    assert (v1["bleu2"], v1["rouge_l"], v1["embedding_similarity"]) == (0.5, 0.25, None)
    assert s["by_observation"]["Edema"] == {"agreement": 2 / 3, "missed": 1, "false": 0, "uncertain": 0}
    assert list(s["by_observation"]) == list(OBSERVATIONS)
    assert s["by_day"]["m 1"] == [{"day": "2026-12-01", "n": 1, "agreement": 1.0},
                                  {"day": "2026-12-02", "n": 1, "agreement": 13 / 14}]
    assert summarize(records) == s  # the bootstrap is seeded


# -- the pair table -------------------------------------------------------------------------------------
def _pair(engine, final_text, final_time, final_sop="1.2.3.9", **kw):
    return record_pair(engine, study_uid="1.2.3", model_version="m 1", draft_sop_uid="1.2.3.1",
                       final_sop_uid=final_sop, final_time=final_time, source="listener", draft_text=DRAFT,
                       final_text=final_text, images=[{"path": "/x.dcm", "view": "frontal"}], priors=["1.2.0"],
                       embed=fixed_embed, **kw)


def test_newer_final_replaces_and_recomputes_older_final_changes_nothing(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'q.sqlite3'}")
    assert _pair(engine, FINAL, 1000.0, now=5.0) == "inserted"
    (row,) = read_pairs(engine)
    assert row.label_agreement == 12 / 14 and row.final_sop_uid == "1.2.3.9" and row.paired_at == 5.0
    assert row.images == [{"path": "/x.dcm", "view": "frontal"}] and row.priors == ["1.2.0"]

    assert _pair(engine, FINAL, 1000.0, now=6.0) == "kept"  # the same pair again: nothing recomputed
    assert read_pairs(engine)[0].paired_at == 5.0

    assert _pair(engine, DRAFT, 2000.0, final_sop="1.2.3.10", now=7.0) == "replaced"  # an addendum
    (row,) = read_pairs(engine)
    assert (row.final_sop_uid, row.final_time, row.final_text) == ("1.2.3.10", 2000.0, DRAFT)
    assert row.label_agreement == 1.0 and row.scores["discordant"]["missed"] == []  # recomputed
    assert row.scores["rouge_l"] == 1.0

    assert _pair(engine, FINAL, 1500.0, final_sop="1.2.3.11", now=8.0) == "kept"  # older than the stored one
    (row,) = read_pairs(engine)
    assert (row.final_sop_uid, row.label_agreement, row.paired_at) == ("1.2.3.10", 1.0, 7.0)
    assert read_pairs(engine, since=7.5) == [] and read_pairs(engine, model_version="other") == []


# -- the final: the prior-report policy -----------------------------------------------------------------
def test_final_is_the_verified_human_report_never_ours_nor_another_ai(tmp_path):
    images = [dcmread(p) for p in write_study(tmp_path / "s", patient_id="FB-0", seed=3)]
    when = dt.datetime(2024, 1, 5, 14, 30)
    ai = other_ai_report(images, "Cardiomegaly.", when + dt.timedelta(hours=2))
    ai_equipment = other_ai_report(images, "Cardiomegaly.", when + dt.timedelta(hours=3), how="equipment")
    ours = our_draft(images, "Lungs clear.", when + dt.timedelta(hours=4))
    assert choose_final([ai, ai_equipment, ours]) is None  # refused: no human report

    preliminary = human_report(images, "Preliminary read.", when + dt.timedelta(hours=5), verified=False)
    signed = human_report(images, FINAL_FINDINGS, when)
    final = choose_final([ai, ours, preliminary, signed, ai_equipment])
    assert final.sop_uid == str(signed.SOPInstanceUID)  # VERIFIED before the newer unverified one
    assert final.text == f"Findings: {FINAL_FINDINGS}\nImpression: See findings."
    assert final.final_time == content_time(signed) == dt.datetime(2024, 1, 5, 14, 30,
                                                                   tzinfo=dt.timezone.utc).timestamp()


# -- the real listener ----------------------------------------------------------------------------------
needs_dcmtk = pytest.mark.skipif(not dcmtk_available(), reason="needs DCMTK (scripts/bootstrap.sh)")


def feedback_json(*args: str) -> tuple[list[dict], dict]:
    out = CliRunner().invoke(main, ["feedback", "--json", *args], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    return lines[:-1], lines[-1]["summary"]


def send_final(tmp_path: Path, port: int, sr, name: str) -> None:
    path = save(sr, tmp_path / "finals" / f"{name}.dcm")
    sent = storescu([path], port)
    assert sent.returncode == 0 and storescu_successes(sent.stdout + sent.stderr) == 1, sent.stdout + sent.stderr


def paired(args: list[str], study_uid: str, timeout: float = 90) -> dict:
    return wait_for(lambda: next((r for r in feedback_json(*args)[0] if r["study_uid"] == study_uid), None),
                    timeout, 0.5, f"pair of {study_uid}")


@pytest.fixture
def run(tmp_path):
    from test_listener_e2e import Run

    r = Run(tmp_path)
    yield r
    r.stop()


def drafted_study(run, tmp_path: Path, name: str, seed: int) -> tuple[str, list]:
    paths = write_study(tmp_path / name, patient_id=f"FB-{name}", study_date="20240105", seed=seed)
    sent = storescu(paths, run.port)
    assert sent.returncode == 0 and storescu_successes(sent.stdout + sent.stderr) == 2
    return str(dcmread(paths[0]).StudyInstanceUID), [dcmread(p) for p in paths]


@pytest.mark.slow
@needs_dcmtk
def test_listener_pairs_signed_finals_before_and_after_the_draft_refuses_ai_and_imports(run, tmp_path,
                                                                                        validate_sr):
    cfg = run.config()
    run.listen(cfg, "--no-worker")
    args = ["--config", str(cfg)]
    when = dt.datetime(2024, 1, 5, 16, 0)

    # B: the signed final arrives before the draft exists (no worker yet) -> paired when the job completes
    early_uid, early_images = drafted_study(run, tmp_path, "early", 40)
    early_final = human_report(early_images, FINAL_FINDINGS, when)
    validate_sr(save(early_final, tmp_path / "validated" / "early-final.dcm"))
    send_final(tmp_path, run.port, early_final, "early")
    assert feedback_json(*args)[0] == []
    run.start("worker", "--config", str(cfg))
    row = paired(args, early_uid)
    assert row["final_sop_uid"] == str(early_final.SOPInstanceUID) and row["source"] == "listener"
    assert row["model_version"] == "unirg-stub-pipeline 0"

    # A: drafted first; another AI's SR is refused, the human final is paired
    study_uid, images = drafted_study(run, tmp_path, "late", 50)
    from test_listener_e2e import jobs_of

    (job,) = wait_for(lambda: [j for j in jobs_of(run.data, study_uid) if j["state"] == "done"], 90, 0.2)
    result = json.loads(job["result"])
    assert result["model_version"] == "unirg-stub-pipeline 0"
    send_final(tmp_path, run.port, other_ai_report(images, "Cardiomegaly.", when), "ai")
    wait_for(lambda: "event=feedback_refused study=" + study_uid in run.log_text(), 60, 0.3, "AI SR refused")
    assert study_uid not in {r["study_uid"] for r in feedback_json(*args)[0]}
    final = human_report(images, FINAL_FINDINGS, when, tag="late")
    send_final(tmp_path, run.port, final, "late")
    row = paired(args, study_uid)
    assert row["draft_sop_uid"] == result["sr_sop_instance_uid"]
    assert row["final_sop_uid"] == str(final.SOPInstanceUID)
    # stub draft: "lungs clear, heart size normal"; final: effusion + enlarged heart
    assert row["discordant"] == {"missed": ["Cardiomegaly", "Pleural Effusion"], "false": ["No Finding"],
                                 "uncertain": []}
    assert row["label_agreement"] == 11 / 14
    engine = make_engine(f"sqlite:///{run.data / 'unirg.sqlite3'}")
    record = next(r for r in read_pairs(engine) if r.study_uid == study_uid)
    engine.dispose()
    assert record.draft_text == f"Findings: {STUB_FINDINGS}\nImpression: {STUB_IMPRESSION}"
    assert record.final_text == f"Findings: {FINAL_FINDINGS}\nImpression: See findings."
    assert record.patient_id == "FB-late" and record.study_date == "20240105"
    assert record.priors == [] and sorted(i["view"] for i in record.images) == ["frontal", "lateral"]
    assert all(Path(i["path"]).is_file() and str(run.data) in i["path"] for i in record.images)
    assert record.scores["embedding_similarity"] is not None

    rows, summary = feedback_json(*args)
    assert {r["study_uid"] for r in rows} == {early_uid, study_uid}
    v = summary["by_version"]["unirg-stub-pipeline 0"]
    assert v["n"] == 2 and v["agreement"]["mean"] == pytest.approx(11 / 14)
    assert summary["by_observation"]["Cardiomegaly"]["missed"] == 2
    assert feedback_json(*args, "--model-version", "other")[0] == []
    assert feedback_json(*args, "--since", "2999-01-01")[0] == []
    text = CliRunner().invoke(main, ["feedback", *args])
    assert text.exit_code == 0 and f"{study_uid}  unirg-stub-pipeline 0  agreement 0.786" in text.output
    assert "By model version (2 paired studies)" in text.output and "Pleural Effusion" in text.output

    # `unirg feedback import`: a RIS addendum, newer than the SR -> replaces the pair, recomputed
    addendum = tmp_path / "addendum.txt"
    addendum.write_text(f"Findings: {STUB_FINDINGS}\nImpression: {STUB_IMPRESSION}\n")
    out = CliRunner().invoke(main, ["feedback", "import", *args, "--study", study_uid, "--text", str(addendum)])
    assert out.exit_code == 0 and out.stdout.strip() == f"{study_uid}: replaced", out.output
    row = next(r for r in feedback_json(*args)[0] if r["study_uid"] == study_uid)
    assert row["source"] == "import" and row["final_sop_uid"].startswith("import:")
    assert row["label_agreement"] == 1.0 and row["final_time"] > time.time() - 300
    # the SR final, older than the import, arriving again changes nothing
    send_final(tmp_path, run.port, final, "late-again")
    time.sleep(3)
    assert next(r for r in feedback_json(*args)[0] if r["study_uid"] == study_uid)["source"] == "import"
    out = CliRunner().invoke(main, ["feedback", "import", *args, "--study", "1.2.3.4.5", "--text", str(addendum)])
    assert out.exit_code != 0 and "no done draft" in out.output


@pytest.mark.slow
@needs_dcmtk
def test_listener_on_postgresql_pairs_and_feedback_reads_queue_url(run, tmp_path):
    require_postgres()
    with postgres_database() as url:
        cfg = run.config(queue={"url": url})
        run.listen(cfg)
        study_uid, images = drafted_study(run, tmp_path, "pg", 60)
        final = human_report(images, FINAL_FINDINGS, dt.datetime(2024, 1, 5, 16, 0), tag="pg")
        send_final(tmp_path, run.port, final, "pg")
        args = ["--data-dir", str(run.data), "--queue-url", url]
        row = paired(args, study_uid)
        assert row["final_sop_uid"] == str(final.SOPInstanceUID) and row["label_agreement"] == 11 / 14
        assert not (run.data / "unirg.sqlite3").exists()  # it was PostgreSQL
        run.stop()
