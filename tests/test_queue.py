"""Job queue semantics on embedded SQLite (WAL) and on a real PostgreSQL database made for the test:
claim / lease / renew / lease expiry / retry with backoff / dead-letter / counts, several consumer
processes, kill -9 of a consumer holding a lease."""

import os
import signal
import sqlite3
import time
from collections import Counter

import pytest

from dicom_peers import start_queue_consumer, wait_for
from unirg.plugin.queue import JobQueue, make_engine


@pytest.fixture
def queue_url(db_url):
    return db_url


@pytest.fixture
def make_queue(queue_url):
    engines = []

    def make(**kw):
        kw.setdefault("lease_s", 30)
        kw.setdefault("max_attempts", 3)
        kw.setdefault("backoff_base_s", 0.2)
        kw.setdefault("backoff_max_s", 1.0)
        engine = make_engine(queue_url)
        engines.append(engine)
        q = JobQueue(engine, **kw)
        q.create_schema()
        return q

    yield make
    for e in engines:
        e.dispose()


def test_enqueue_is_idempotent_and_claims_are_exclusive(make_queue):
    q = make_queue()
    a = q.enqueue("1.2.3", 0)
    assert q.enqueue("1.2.3", 0) == a
    b = q.enqueue("1.2.3", 1)
    assert a != b
    j1, j2 = q.claim("w1"), q.claim("w2")
    assert {j1.id, j2.id} == {a, b} and j1.id == a  # oldest first
    assert q.claim("w3") is None
    counts = q.counts()
    assert (counts.queued, counts.in_flight, counts.done) == (0, 2, 0)
    assert q.complete(j1, {"ok": 1})
    assert q.get(a)["result"] == {"ok": 1}
    assert q.counts().done == 1


def test_expired_lease_is_reclaimed_and_the_old_owner_cannot_finish(make_queue):
    q = make_queue()
    jid = q.enqueue("1.2.4")
    old = q.claim("crashed", lease_s=0.3)
    assert q.claim("other") is None  # still leased
    time.sleep(0.5)
    new = q.claim("other")
    assert new.id == jid and new.attempts == 2
    assert "lease expired" in new.last_error
    assert not q.complete(old) and q.fail(old, "late") == "lost" and not q.renew(old)
    assert q.renew(new, lease_s=60) and q.still_owned(new)
    assert q.complete(new)
    assert q.get(jid)["state"] == "done"


def test_retry_with_backoff_then_dead_letter_with_reason(make_queue):
    q = make_queue(max_attempts=3, backoff_base_s=0.3, backoff_max_s=10)
    jid = q.enqueue("1.2.5")
    assert [q.backoff_s(n) for n in (1, 2, 3)] == [0.3, 0.6, 1.2]
    job = q.claim("w")
    assert q.fail(job, "PACS down") == "retry"
    assert q.claim("w") is None, "claimable before its backoff passed"
    c = q.counts()
    assert (c.queued, c.retrying) == (1, 1)
    job = wait_for(lambda: q.claim("w"), 5, 0.05)
    assert job.attempts == 2 and job.last_error == "PACS down"
    assert q.fail(job, "PACS down") == "retry"
    job = wait_for(lambda: q.claim("w"), 5, 0.05)
    assert q.fail(job, "PACS still down") == "dead"
    c = q.counts()
    assert (c.queued, c.in_flight, c.dead) == (0, 0, 1)
    assert c.dead_reasons == {"PACS still down": 1}
    assert q.failures()[0]["last_error"] == "PACS still down"
    assert q.requeue(jid) and q.claim("w").attempts == 1


def test_permanent_failure_and_expired_leases_dead_letter(make_queue):
    q = make_queue(max_attempts=2)
    q.enqueue("1.2.6")
    assert q.fail(q.claim("w"), "bad input", permanent=True) == "dead"
    jid = q.enqueue("1.2.7")
    q.claim("w", lease_s=0.1)
    time.sleep(0.2)
    q.claim("w", lease_s=0.1)  # attempt 2
    time.sleep(0.2)
    assert q.claim("w") is None  # attempt budget spent: dead-lettered, not handed out
    job = q.get(jid)
    assert job["state"] == "dead" and "lease expired" in job["last_error"]


def test_release_gives_the_attempt_back(make_queue):
    q = make_queue()
    q.enqueue("1.2.8")
    job = q.claim("w")
    assert q.release(job)
    again = q.claim("w")
    assert again.attempts == 1


def test_two_consumer_processes_process_20_jobs_each_once(make_queue, queue_url, tmp_path):
    q = make_queue()
    ids = [q.enqueue(f"1.2.9.{i}") for i in range(20)]
    out = tmp_path / "claims.txt"
    procs = [start_queue_consumer(queue_url, out, f"w{i}", work_s=0.05) for i in range(2)]
    for p in procs:
        assert p.wait(120) == 0
    lines = [line.split() for line in out.read_text().splitlines()]
    claimed = Counter(int(job) for job, _, what in lines if what == "claimed")
    assert sorted(claimed) == sorted(ids) and set(claimed.values()) == {1}
    assert q.counts().done == 20
    assert {w for _, w, _ in lines} == {"w0", "w1"}, "both processes should have taken jobs"


def test_kill9_consumer_mid_job_then_another_process_takes_it(make_queue, queue_url, tmp_path):
    q = make_queue()
    jid = q.enqueue("1.2.10")
    out = tmp_path / "claims.txt"
    victim = start_queue_consumer(queue_url, out, "victim", work_s=60, lease_s=1.0, idle_exit_s=60)
    wait_for(lambda: out.exists() and "claimed" in out.read_text(), 60, 0.05, "victim claim")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(10)
    rescuer = start_queue_consumer(queue_url, out, "rescuer", work_s=0.01, lease_s=30, idle_exit_s=3)
    assert rescuer.wait(60) == 0
    job = q.get(jid)
    assert job["state"] == "done" and job["attempts"] == 2 and job["result"] == {"by": "rescuer"}


def test_sqlite_is_in_wal_mode(tmp_path):
    q = JobQueue(make_engine(f"sqlite:///{tmp_path / 'q.sqlite3'}"))
    q.create_schema()
    q.enqueue("1.2.11")
    assert sqlite3.connect(tmp_path / "q.sqlite3").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_unirg_status_prints_depth_in_flight_done_and_failed_with_reasons(tmp_path):
    from click.testing import CliRunner

    from unirg.plugin.listen_cli import cli

    q = JobQueue(make_engine(f"sqlite:///{tmp_path / 'unirg.sqlite3'}"), max_attempts=1)
    q.create_schema()
    for i in range(4):
        q.enqueue(f"1.2.12.{i}")
    q.complete(q.claim("w"))
    q.fail(q.claim("w"), "destination ORTHANC@10.0.0.1:4242 unreachable or not answering")
    q.claim("w")
    out = CliRunner().invoke(cli, ["status", "--data-dir", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert "queue: 1 queued (0 retrying), 1 in flight, 1 done, 1 failed" in out.output
    assert "failed x1: destination ORTHANC@10.0.0.1:4242 unreachable or not answering" in out.output
