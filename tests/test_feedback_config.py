"""``[feedback]``: ``enabled`` (the workers pair finals at all) and ``embedding`` (the sentence model that
costs ~0.5 GB and ~8 s per worker process): the config section, the scores, the service's wiring, and the
real listener end to end (``unirg listen`` subprocesses, DCMTK storescu, the stub pipeline).
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import time

import pytest
from click.testing import CliRunner

from dicom_peers import dcmtk_available, make_stub_pipeline, wait_for
from prior_reports import human_report
from test_feedback import DRAFT, FINAL, FINAL_FINDINGS, drafted_study, feedback_json, paired, send_final
from unirg.model.feedback import EMBEDDING_DISABLED, score_pair
from unirg.plugin.cli import main
from unirg.plugin.config import ConfigError, apply_overrides, example_toml, load_config
from unirg.plugin.service import ListenerService


def refuse_embed(a: str, b: str) -> float:
    raise AssertionError("the embedding model was asked for with [feedback] embedding = false")


def test_feedback_section_defaults_toml_env_and_errors(tmp_path):
    cfg = load_config(None, env={})
    assert (cfg.feedback.enabled, cfg.feedback.embedding) == (True, True)
    assert "[feedback]\n" in example_toml() and "embedding = true" in example_toml()
    path = tmp_path / "unirg.toml"
    path.write_text("[feedback]\nembedding = false\n")
    cfg = load_config(path, env={"UNIRG_FEEDBACK_ENABLED": "no"})
    assert (cfg.feedback.enabled, cfg.feedback.embedding) == (False, False)
    path.write_text('[feedback]\nembedding = "sometimes"\n')
    with pytest.raises(ConfigError, match="feedback.embedding: expected a boolean"):
        load_config(path, env={})
    path.write_text("[feedback]\nembeddings = false\n")
    with pytest.raises(ConfigError, match=r"\[feedback\]: unknown key\(s\) \['embeddings'\]"):
        load_config(path, env={})


def test_embedding_off_scores_everything_else_and_says_why():
    on = score_pair(DRAFT, FINAL, embed=lambda a, b: 0.25)
    off = score_pair(DRAFT, FINAL, embed=refuse_embed, embedding=False)
    assert on["embedding_similarity"] == 0.25 and on["embedding_skipped"] is None
    assert off["embedding_similarity"] is None and off["embedding_skipped"] == EMBEDDING_DISABLED
    drop = ("embedding_similarity", "embedding_skipped")
    assert {k: v for k, v in off.items() if k not in drop} == {k: v for k, v in on.items() if k not in drop}
    assert score_pair(DRAFT, FINAL, embed=lambda a, b: (_ for _ in ()).throw(OSError("no model")))[
        "embedding_skipped"] == "unavailable"


def test_service_gives_workers_the_pairer_the_config_asks_for(tmp_path):
    def workers(**feedback):
        cfg = apply_overrides(load_config(None, env={}), {"listener.data_dir": str(tmp_path),
                                                          **{f"feedback.{k}": v for k, v in feedback.items()}})
        service = ListenerService(cfg, listen=False, workers=2, process_study=make_stub_pipeline()).prepare()
        try:
            assert all(w.feedback is None or w.feedback.source is w.source for w in service.workers)
            return [w.feedback for w in service.workers]
        finally:
            service.stop(worker_grace_s=1)

    default = workers()
    assert len(default) == 2 and all(p is not None and p.embedding for p in default)
    assert all(p is not None and not p.embedding for p in workers(embedding=False))
    assert workers(enabled=False, embedding=False) == [None, None]


# -- the real listener ----------------------------------------------------------------------------------
@pytest.fixture
def run(tmp_path):
    from test_listener_e2e import Run

    r = Run(tmp_path)
    yield r
    r.stop()


def _pending(data) -> list[str]:
    con = sqlite3.connect(f"file:{data / 'unirg.sqlite3'}?mode=ro", uri=True, timeout=30)
    try:
        return [r[0] for r in con.execute("SELECT study_uid FROM unirg_feedback_pending")]
    finally:
        con.close()


@pytest.mark.slow
@pytest.mark.skipif(not dcmtk_available(), reason="needs DCMTK (scripts/bootstrap.sh)")
def test_listener_pairs_nothing_when_disabled_then_pairs_without_embedding(run, tmp_path):
    from test_listener_e2e import jobs_of

    # enabled = false: the draft is made, the final is noted, nothing is paired
    off = run.config(feedback={"enabled": False})
    run.listen(off)
    study_uid, images = drafted_study(run, tmp_path, "cfg", 70)
    wait_for(lambda: [j for j in jobs_of(run.data, study_uid) if j["state"] == "done"], 90, 0.2, "draft done")
    final = human_report(images, FINAL_FINDINGS, dt.datetime(2024, 1, 5, 16, 0), tag="cfg")
    send_final(tmp_path, run.port, final, "cfg")
    time.sleep(3)  # 15 idle polls of the worker (poll_interval_s 0.2)
    assert feedback_json("--config", str(off))[0] == [] and _pending(run.data) == [study_uid]
    text = CliRunner().invoke(main, ["feedback", "--config", str(off)])
    assert "[feedback] enabled = false: the workers pair no new finals." in text.output
    run.stop()

    # enabled again, embedding = false: the noted final is paired, scored without the sentence model
    no_embedding = run.config(feedback={"embedding": False})
    run.listen(no_embedding)
    args = ["--config", str(no_embedding)]
    row = paired(args, study_uid)
    assert row["final_sop_uid"] == str(final.SOPInstanceUID) and row["label_agreement"] == 11 / 14
    assert row["embedding_similarity"] is None and row["embedding_skipped"] == EMBEDDING_DISABLED
    assert row["bleu2"] is not None and row["rouge_l"] is not None
    assert _pending(run.data) == []
    assert "event=feedback_paired study=" + study_uid in run.log_text()
    assert "event=sentence_model_loaded" not in run.log_text()  # no worker loaded it
    out = CliRunner().invoke(main, ["feedback", "--json", *args])
    assert json.loads(out.stdout.splitlines()[-1])["embedding"] == {
        "enabled": True, "embedding": False, "disabled": 1, "unavailable": 0}
    text = CliRunner().invoke(main, ["feedback", *args])
    assert text.exit_code == 0, text.output
    assert "Embedding similarity: not computed for 1 of 1 pairs ([feedback] embedding = false" in text.output
    assert "[feedback] embedding = false: new pairs get no embedding similarity (stored as null)." in text.output
