"""Watching unirg: the status page and Prometheus metrics (unirg.plugin.monitor).

Jobs are written through the real JobQueue and pairs into the real ``unirg_feedback`` table of a real
queue database (SQLite and PostgreSQL); the metrics are parsed with prometheus-client's own parser;
``unirg status --serve`` runs as a subprocess and its page is rendered by headless chromium; the Orthanc
plugin's ``/unirg/`` and ``/unirg/metrics`` are fetched from a real `unirg orthanc` (auth on).
"""

from __future__ import annotations

import base64
import doctest
import json
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from dicom_peers import PYTHON, REPO, make_cxr, service_env, wait_for
from unirg.model.chexpert import OBSERVATIONS
from unirg.model.feedback import create_schema, feedback
from unirg.plugin.monitor import snapshot as snapshot_module
from unirg.plugin.monitor.metrics import CONTENT_TYPE, metrics_text
from unirg.plugin.monitor.page import render_page
from unirg.plugin.monitor.snapshot import build_snapshot, read_snapshot
from unirg.plugin.queue import JobQueue, jobs, make_engine
from unirg.sr_writer import RESEARCH_LABEL

ARTIFACTS = REPO / "artifacts" / "monitor"
V1, V2 = "unirg-1.0", "unirg-2.0"
DAY = 86400.0


# -- a queue database with known contents ------------------------------------------------------------
def populate(engine, now: float) -> None:
    """Eight jobs and three draft/final pairs, through the real queue and the real feedback table.

    done: A (unirg-1.0, stable->stored 4 s, 5 h ago, model 0.4 s, job 1.5 s), B (unirg-1.0, 40 s, a minute
    ago, 1.5 s, 3 s), C (unirg-2.0, 400 s, 26 h ago: outside the last 24 h, 3 s, 6 s); dead: D (write-back),
    E (pipeline rejected); F failed once and waits to retry; G in flight; H queued.
    Pairs: unirg-1.0 11/14 (missed Edema, Consolidation; false Cardiomegaly) two days ago and 14/14 today;
    unirg-2.0 13/14 (uncertain Pleural Effusion) today.
    """
    q = JobQueue(engine, max_attempts=2, backoff_base_s=3600)
    q.create_schema()
    ids = {k: q.enqueue(f"1.2.826.0.1.3680043.10.1.{n}") for n, k in enumerate("ABCDEFGH", 1)}
    results = {"A": (V1, 0.4, 1.5), "B": (V1, 1.5, 3.0), "C": (V2, 3.0, 6.0)}
    for key in "ABCDEFG":
        job = q.claim("monitor-test")
        assert job.id == ids[key]
        if key in results:
            version, model_s, total_s = results[key]
            assert q.complete(job, {"sr_sop_instance_uid": f"2.25.{job.id}", "model_version": version,
                                    "pipeline_s": model_s, "total_s": total_s})
        elif key == "D":
            assert q.fail(job, "write-back failed: PACS@127.0.0.1:4242 refused the association", permanent=True) == "dead"
        elif key == "E":
            assert q.fail(job, "pipeline rejected the study: ValueError: no frontal <image>", permanent=True) == "dead"
        elif key == "F":
            assert q.fail(job, "OSError: [Errno 28] No space left on device") == "retry"
    times = {"A": (now - 5 * 3600 - 4, now - 5 * 3600), "B": (now - 100, now - 60), "C": (now - 26 * 3600 - 400, now - 26 * 3600)}
    with engine.begin() as c:
        for key, (created, done) in times.items():
            c.execute(update(jobs).where(jobs.c.id == ids[key]).values(created_at=created, updated_at=done))
    create_schema(engine)
    pairs = [  # (study, version, agreement, draft labels, final labels, discordant, paired at)
        ("1", V1, 11 / 14, {"Cardiomegaly": 1}, {"Edema": 1, "Consolidation": 1},
         {"missed": ["Edema", "Consolidation"], "false": ["Cardiomegaly"], "uncertain": []}, now - 2 * DAY),
        ("2", V1, 1.0, {"No Finding": 1}, {"No Finding": 1}, {"missed": [], "false": [], "uncertain": []}, now - 30),
        ("3", V2, 13 / 14, {"Pleural Effusion": -1}, {}, {"missed": [], "false": [], "uncertain": ["Pleural Effusion"]},
         now - 20),
    ]
    with engine.begin() as c:
        for n, version, agreement, draft_labels, final_labels, discordant, paired_at in pairs:
            scores = {"draft_labels": draft_labels, "final_labels": final_labels, "discordant": discordant,
                      "label_agreement": agreement, "bleu2": 0.5, "rouge_l": 0.25}
            c.execute(feedback.insert().values(
                study_uid=f"1.2.826.0.1.3680043.10.1.{n}", model_version=version, draft_sop_uid=f"2.25.{n}",
                final_sop_uid=f"2.25.9{n}", final_time=paired_at, source="import", draft_text="draft",
                final_text="final", scores=json.dumps(scores),
                label_agreement=agreement, images="[]", priors="[]", paired_at=paired_at))


def parse(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def check_metrics(m: dict[tuple[str, tuple], float]) -> None:
    """The exact values :func:`populate` implies."""
    assert {k[1][0][1]: v for k, v in m.items() if k[0] == "unirg_queue_jobs"} == {
        "queued": 2, "retrying": 1, "in_flight": 1, "done": 3, "failed": 2}
    assert m[("unirg_drafts_total", (("model_version", V1),))] == 2
    assert m[("unirg_drafts_total", (("model_version", V2),))] == 1
    assert {k[1]: v for k, v in m.items() if k[0] == "unirg_draft_failures_total"} == {
        (("reason", "write-back failed"),): 1, (("reason", "pipeline rejected the study"),): 1}

    def hist(name, labels=()):
        buckets = {k[1]: v for k, v in m.items() if k[0] == f"{name}_bucket"
                   and all(item in k[1] for item in labels)}
        le = {dict(k)["le"]: v for k, v in buckets.items()}
        return le, m[(f"{name}_count", tuple(labels))], m[(f"{name}_sum", tuple(labels))]

    le, count, total = hist("unirg_draft_latency_seconds")  # 4, 40 and 400 s
    assert (count, le["5.0"], le["30.0"], le["60.0"], le["300.0"], le["600.0"], le["+Inf"]) == (3, 1, 1, 2, 2, 3, 3)
    assert total == pytest.approx(444.0, abs=1e-3)
    le, count, total = hist("unirg_model_seconds")  # 0.4, 1.5, 3.0 s
    assert (count, le["0.25"], le["0.5"], le["1.0"], le["2.0"], le["5.0"]) == (3, 0, 1, 1, 2, 3)
    assert total == pytest.approx(4.9)
    le, count, total = hist("unirg_job_seconds")  # 1.5, 3, 6 s
    assert (count, le["1.0"], le["2.0"], le["5.0"], le["10.0"]) == (3, 0, 1, 2, 3) and total == pytest.approx(10.5)

    assert m[("unirg_feedback_pairs_total", (("model_version", V1),))] == 2
    assert m[("unirg_feedback_pairs_total", (("model_version", V2),))] == 1
    le, count, total = hist("unirg_label_agreement", [("model_version", V1)])
    assert (count, le["0.7"], le["0.8"], le["0.9"], le["1.0"]) == (2, 0, 1, 1, 2)
    assert total == pytest.approx(11 / 14 + 1)
    assert m[("unirg_label_agreement_mean", (("model_version", V1),))] == pytest.approx(25 / 28)
    assert m[("unirg_label_agreement_mean", (("model_version", V2),))] == pytest.approx(13 / 14)
    agree = {dict(k[1])["observation"]: v for k, v in m.items() if k[0] == "unirg_observation_agreement"}
    assert set(agree) == set(OBSERVATIONS)
    assert {o: v for o, v in agree.items() if v != 1.0} == pytest.approx(
        {"Edema": 2 / 3, "Consolidation": 2 / 3, "Cardiomegaly": 2 / 3, "Pleural Effusion": 2 / 3})
    disc = {(dict(k[1])["observation"], dict(k[1])["kind"]): v for k, v in m.items()
            if k[0] == "unirg_observation_discordant_total" and v}
    assert disc == {("Edema", "missed"): 1, ("Consolidation", "missed"): 1, ("Cardiomegaly", "false"): 1,
                    ("Pleural Effusion", "uncertain"): 1}


# -- metrics and snapshot on SQLite and PostgreSQL ---------------------------------------------------------
def test_metrics_have_exact_values_from_the_queue_database(db_url):
    engine = make_engine(db_url)
    try:
        now = time.time()
        populate(engine, now)
        snap = read_snapshot(engine, now=now)
        check_metrics(parse(metrics_text(snap).decode("utf-8")))
        assert snap["drafts"]["last_24h"] == 2 and sum(h["count"] for h in snap["drafts"]["per_hour"]) == 2
        assert len(snap["drafts"]["per_hour"]) == 24
        assert snap["failures"]["retrying"][0]["reason"].startswith("OSError")
        assert [d["n"] for d in snap["agreement"]["by_day"]] == [1, 1, 1]
        v1, v2 = snap["agreement"]["by_version"][V1], snap["agreement"]["by_version"][V2]
        assert (v2["mean"], v2["ci_low"], v2["ci_high"]) == pytest.approx((13 / 14,) * 3)  # one pair
        assert 11 / 14 <= v1["ci_low"] <= v1["mean"] <= v1["ci_high"] <= 1.0 and v1["rouge_l"] == 0.25
        first_day = min(snap["agreement"]["by_observation_day"])
        assert snap["agreement"]["by_observation_day"][first_day]["Edema"] == {
            "agreement": 0.0, "missed": 1, "false": 0, "uncertain": 0}
        assert json.loads(json.dumps(snap)) == snap  # JSON-serialisable as it is (``/status.json``)
    finally:
        engine.dispose()


def test_metrics_are_read_at_scrape_time_not_counted_in_process(tmp_path):
    """Another process (here: another engine) adds a draft; the next scrape shows it."""
    url = f"sqlite:///{tmp_path / 'queue.sqlite3'}"
    scraper, worker = make_engine(url), make_engine(url)
    try:
        q = JobQueue(worker)
        q.create_schema()
        before = parse(metrics_text(read_snapshot(scraper)).decode())
        q.enqueue("1.2.826.0.1.3680043.10.1.99")
        q.complete(q.claim("other-process"), {"model_version": V2, "pipeline_s": 0.1, "total_s": 0.2})
        after = parse(metrics_text(read_snapshot(scraper)).decode())
        assert not any(k[0] == "unirg_drafts_total" for k in before)
        assert after[("unirg_drafts_total", (("model_version", V2),))] == 1
        assert (before[("unirg_model_seconds_count", ())], after[("unirg_model_seconds_count", ())]) == (0, 1)
    finally:
        scraper.dispose()
        worker.dispose()


def test_empty_database_gives_zeroes_and_a_page():
    snap = build_snapshot([], [], now=1_764_770_000.0, research_label=RESEARCH_LABEL)
    m = parse(metrics_text(snap).decode())
    assert m[("unirg_queue_jobs", (("state", "queued"),))] == 0
    assert m[("unirg_draft_latency_seconds_count", ())] == 0
    html = render_page(snap)
    assert RESEARCH_LABEL in html and "No draft has been paired" in html and html.count('class="bar"') == 24


def test_snapshot_doctests():
    assert doctest.testmod(snapshot_module).failed == 0


# -- the page: a pure function of the snapshot --------------------------------------------------------------
def test_page_shows_the_numbers_and_escapes_what_it_shows(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'queue.sqlite3'}")
    now = time.time()
    populate(engine, now)
    snap = read_snapshot(engine, now=now)
    engine.dispose()
    html = render_page(snap)
    assert html == render_page(snap)  # pure
    for key, value in (("queue-queued", 2), ("queue-retrying", 1), ("queue-in_flight", 1), ("queue-done", 3),
                       ("queue-failed", 2), ("drafts-24h", 2), ("drafts-total", 3), ("pairs", 3)):
        assert re.search(rf'data-cy="{key}">{value}<', html), key
    assert html.count('class="bar"') == 24 and html.count('class="point"') == 3  # 2 days x versions: 3 points
    assert html.count("<polyline") == 1  # unirg-1.0 on two days; unirg-2.0 on one day (a point)
    assert "no frontal &lt;image&gt;" in html and "<image>" not in html  # failure reasons are escaped
    assert RESEARCH_LABEL in html and "http://" not in html and "https://" not in html  # self-contained
    assert "89.3%" in html and "92.9%" in html  # mean agreement of unirg-1.0 (25/28) and unirg-2.0 (13/14)
    assert "92.9% - 92.9%" in html  # unirg-2.0's CI, from one pair
    assert html.count('data-cy="agreement-observation-day"') == 14  # one row per CheXpert observation


# -- `unirg status --serve` as a subprocess, its page in headless chromium ---------------------------------
class StatusServer:
    def __init__(self, tmp: Path, queue_url: str) -> None:
        self.log = tmp / "status-serve.log"
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "unirg.plugin.listen_cli", "status", "--data-dir", str(tmp / "data"),
             "--queue-url", queue_url, "--serve", "0"],
            stdout=open(self.log, "wb"), stderr=subprocess.STDOUT, cwd=str(REPO), env=service_env())

        def started():
            if self.proc.poll() is not None:
                raise AssertionError(f"unirg status --serve exited {self.proc.returncode}:\n{self.log.read_text()}")
            found = re.search(r"serving (http://\S+/) \(page\)", self.log.read_text())
            return found and found.group(1)

        self.url = wait_for(started, 60, 0.1, "unirg status --serve")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


@pytest.fixture
def served(tmp_path):
    url = f"sqlite:///{tmp_path / 'queue.sqlite3'}"
    engine = make_engine(url)
    populate(engine, time.time())
    engine.dispose()
    server = StatusServer(tmp_path, url)
    yield server
    server.stop()


def test_status_serve_answers_metrics_page_and_json_over_http(served):
    r = requests.get(served.url + "metrics", timeout=30)
    assert r.status_code == 200 and r.headers["Content-Type"] == CONTENT_TYPE
    check_metrics(parse(r.text))
    page = requests.get(served.url, timeout=30)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert RESEARCH_LABEL in page.text and 'data-cy="queue-done">3<' in page.text
    assert requests.get(served.url + "unirg/", timeout=30).text.count('class="bar"') == 24
    assert requests.get(served.url + "status.json", timeout=30).json()["queue"]["failed"] == 2
    assert requests.get(served.url + "nothing", timeout=30).status_code == 404
    assert served.stop() == 0  # SIGTERM: a clean exit


def test_status_page_renders_in_headless_chromium(served):
    from test_viewer import CHROMIUM, Browser

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: run scripts/install-viewer.sh")
    with Browser(served.log.parent / "chromium-profile") as browser:
        browser.size(1300, 1800)
        browser.goto(served.url)
        seen = browser.wait("""(() => {
            if (document.readyState !== 'complete') return null;
            const q = k => document.querySelector(`[data-cy="${k}"]`);
            const box = e => { const r = e.getBoundingClientRect(); return [r.width, r.height]; };
            const bars = [...document.querySelectorAll('svg[data-cy="chart-drafts"] rect.bar')];
            const points = [...document.querySelectorAll('svg[data-cy="chart-agreement"] circle.point')];
            return {done: q('queue-done').innerText, failed: q('queue-failed').innerText,
                    queued: q('queue-queued').innerText, last24: q('drafts-24h').innerText,
                    label: q('research-label').innerText, text: document.body.innerText,
                    drafts_chart: box(q('chart-drafts')), agreement_chart: box(q('chart-agreement')),
                    bars: bars.length, tall_bars: bars.filter(b => box(b)[1] > 1).length,
                    points: points.length, visible_points: points.filter(p => box(p)[0] > 0).length};
        })()""", timeout=60)
        browser.screenshot(ARTIFACTS / "status-serve.png")
    assert seen, "the status page did not load"
    assert (seen["done"], seen["failed"], seen["queued"], seen["last24"]) == ("3", "2", "2", "2")
    assert seen["label"] == RESEARCH_LABEL
    assert seen["drafts_chart"][0] > 300 and seen["drafts_chart"][1] > 100
    assert seen["agreement_chart"][0] > 300 and seen["agreement_chart"][1] > 100
    assert (seen["bars"], seen["tall_bars"]) == (24, 2)  # A 5 h ago and B a minute ago (C: 26 h ago)
    assert (seen["points"], seen["visible_points"]) == (3, 3)
    for shown in ("write-back failed", "pipeline rejected the study", "No space left on device",
                  "89.3%", "92.9%", "Pleural Effusion", V1, V2):
        assert shown in seen["text"], shown


# -- the Orthanc plugin: /unirg/ and /unirg/metrics behind Orthanc's authentication ---------------------------
def test_orthanc_plugin_serves_page_and_metrics_behind_auth(tmp_path):
    from test_orthanc_plugin_e2e import ORTHANC_BINARY, PASSWORD, USER, OrthancRun
    from test_viewer import CHROMIUM, Browser

    if not Path(ORTHANC_BINARY).exists():
        pytest.fail(f"{ORTHANC_BINARY} not found: run scripts/bootstrap.sh")
    run = OrthancRun(tmp_path / "orthanc")
    try:
        run.start()
        images = [make_cxr(patient_id="MON-1", view=v, instance_number=i, seed=700 + i)
                  for i, v in enumerate(("PA", "LL"), 1)]
        run.upload(*images)
        study_uid = str(images[0].StudyInstanceUID)
        run.wait_draft(study_uid)
        (job,) = run.jobs(study_uid)
        version = job["result"].get("model_version") or "unknown"  # what the worker recorded
        from unirg.plugin.config import QueueConfig

        engine = make_engine(QueueConfig().resolved_url(run.data))  # the plugin's own (default) queue database
        create_schema(engine)
        with engine.begin() as c:
            c.execute(feedback.insert().values(
                study_uid=study_uid, model_version=version, draft_sop_uid=job["result"]["sr_sop_instance_uid"],
                final_sop_uid="2.25.2", final_time=time.time(), source="orthanc", draft_text="d",
                final_text="f", scores=json.dumps({"draft_labels": {}, "final_labels": {"Edema": 1},
                                                   "discordant": {"missed": ["Edema"], "false": [], "uncertain": []}}),
                label_agreement=13 / 14, images="[]", priors="[]", paired_at=time.time()))
        engine.dispose()

        for path in ("/unirg/", "/unirg/metrics", "/unirg/index.json"):
            assert requests.get(run.url + path, timeout=10).status_code == 401, path
        r = run.get("/unirg/metrics")
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain"), r.text
        m = parse(r.text)
        assert {k: v for k, v in m.items() if k[0] == "unirg_drafts_total"} == {
            ("unirg_drafts_total", (("model_version", version),)): 1}
        assert m[("unirg_queue_jobs", (("state", "done"),))] == 1
        assert m[("unirg_draft_latency_seconds_count", ())] == 1
        assert m[("unirg_label_agreement_mean", (("model_version", version),))] == pytest.approx(13 / 14)
        assert m[("unirg_feedback_pairs_total", (("model_version", version),))] == 1
        assert m[("unirg_observation_agreement", (("observation", "Edema"),))] == 0.0

        page = run.get("/unirg/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
        assert page.headers["Content-Type"].startswith("text/html") and 'data-cy="queue-done">1<' in page.text
        for path, headers in (("/unirg", {}), ("/unirg/", {"Accept": "*/*"}), ("/unirg/index.json",
                                                                              {"Accept": "text/html"})):
            answer = run.get(path, headers=headers)
            assert answer.headers["Content-Type"].startswith("application/json"), path
            assert "GET /unirg/metrics" in answer.json()["routes"], path
        assert 'data-cy="pairs">1<' in run.get("/unirg?format=html").text

        with Browser(tmp_path / "chromium-profile") as browser:  # the way a browser with credentials sees it
            token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            browser.call("Network.enable")
            browser.call("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})
            browser.size(1300, 1800)
            browser.goto(run.url + "/unirg/")
            seen = browser.wait("""(() => document.readyState === 'complete' &&
                document.querySelector('[data-cy="queue-done"]') && {
                    done: document.querySelector('[data-cy="queue-done"]').innerText,
                    points: document.querySelectorAll('svg[data-cy="chart-agreement"] circle.point').length,
                    title: document.title})()""", timeout=60)
            browser.screenshot(ARTIFACTS / "orthanc-plugin.png")
        assert seen == {"done": "1", "points": 1, "title": "unirg status (Orthanc plugin)"}, seen
    finally:
        run.stop_all()
