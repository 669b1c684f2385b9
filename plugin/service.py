"""The one unirg service: queue, ledger, one intake adapter and a worker pool, built from a Config.

An adapter is where studies come in and how workers read images, priors and write SRs back:

* :class:`ListenerAdapter`: the DICOM listener (C-STORE in, files in the data dir, DIMSE priors and
  write-back) for ``unirg listen`` / ``unirg worker``;
* :class:`unirg.plugin.orthanc.adapter.OrthancAdapter`: Orthanc with unirg's plugin (or an Orthanc elsewhere),
  images / priors / SR through its REST API, for ``unirg orthanc`` and ``unirg demo``.

A new adapter (the DICOMweb watcher) implements :class:`Adapter` and is handed to :class:`Service`;
the commands only parse options, build a Config (:func:`config_from`) and call this module.

A service that drafts refuses to start unless a model is configured (:func:`require_model`).
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import click

from unirg.plugin.assemble import Assembler, StudyLedger
from unirg.plugin.config import Config, ConfigError, LoggingConfig, WorkerConfig, apply_overrides, load_config
from unirg.plugin.feedback.capture import FeedbackPairer
from unirg.plugin.feedback.capture import create_schema as create_feedback_schema
from unirg.plugin.priors.dimse import LocalPriors, PriorsFetcher
from unirg.plugin.queue import JobQueue, make_engine
from unirg.plugin.receive import InstanceSink, Listener
from unirg.plugin.signals import stop_on_signals, wait_for_stop
from unirg.plugin.store import SRStore
from unirg.plugin.worker import ProcessStudy, Worker, default_worker_id

__all__ = ["Adapter", "Service", "ListenerAdapter", "ListenerService", "Services", "open_services",
           "feedback_pairer", "load_pipeline", "require_model", "config_from", "setup_logging", "JsonLogFormatter",
           "NO_MODEL_MESSAGE", "viewer_link"]

log = logging.getLogger(__name__)

_KV = re.compile(r"(\w+)=('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|\S+)")


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line; ``key=value`` pairs of our messages become fields."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        out: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
        }
        for key, value in _KV.findall(msg):
            out[key] = value[1:-1] if value[:1] in "'\"" else value
        out["msg"] = msg
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(cfg: LoggingConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if cfg.format == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(cfg.level)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # its INFO is per-message chatter


@dataclass
class Services:
    """The database-backed pieces every command needs."""

    config: Config
    queue: JobQueue
    ledger: StudyLedger

    def close(self) -> None:
        self.queue.close()


def open_services(config: Config) -> Services:
    """Engine, queue and ledger on ``config.queue_url``; tables created if missing."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(config.queue_url)
    q = config.queue
    queue = JobQueue(engine, lease_s=q.lease_s, max_attempts=q.max_attempts,
                     backoff_base_s=q.backoff_base_s, backoff_max_s=q.backoff_max_s)
    queue.create_schema()
    ledger = StudyLedger(engine, late_policy=config.assembly.late_policy)
    ledger.create_schema()
    create_feedback_schema(engine)  # report arrivals noted by the intakes, draft/final pairs
    return Services(config, queue, ledger)


def feedback_pairer(config: Config, services: Services, source: Any) -> FeedbackPairer | None:
    """A worker's feedback pairer as ``[feedback]`` says: ``None`` when ``enabled`` is off (the worker pairs
    nothing); ``embedding`` off: pairs get no embedding similarity and no sentence model is loaded."""
    if not config.feedback.enabled:
        return None
    return FeedbackPairer(services.queue, services.ledger, source, config.data_dir,
                          embedding=config.feedback.embedding)


NO_MODEL_MESSAGE = (
    "no report model configured: pass --model PATH, set [model] path in unirg.toml or $UNIRG_MODEL to a "
    "checkpoint, or pass --demo-model ([model] demo_model = true) to draft with the synthetic demo model "
    "(trained on synthetic data only; never for real studies)"
)


def require_model(config: Config) -> bool:
    """Check that the drafting pipeline has a model; ``True`` when the synthetic demo model will be used.

    Configured: ``[model] path`` (``--model``, ``UNIRG_MODEL_PATH``), ``$UNIRG_MODEL``, or a ``[worker]
    pipeline`` other than the default (it brings its own model). Otherwise ``[model] demo_model``
    (``--demo-model``) must allow the demo model, else :class:`ConfigError` with :data:`NO_MODEL_MESSAGE`.
    """
    from unirg.plugin.pipeline import DEFAULT_MODEL_ENV

    if config.model.path:
        _require_published(Path(config.model.path), config.model.demo_model)
        return False
    if os.environ.get(DEFAULT_MODEL_ENV):
        return False
    if config.worker.pipeline != WorkerConfig().pipeline:
        return False
    if not config.model.demo_model:
        raise ConfigError(NO_MODEL_MESSAGE)
    return True


def _require_published(path: Path, demo_model: bool) -> None:
    """A publish directory with nothing published yet would serve no model: refuse to start,
    unless ``--demo-model`` lets the synthetic demo model stand in until the first publish."""
    from unirg.model.reload import read_current

    if (path / "config.json").is_file() or demo_model:
        return
    try:
        published = read_current(path) if path.is_dir() else None
    except ValueError as exc:  # a broken pointer: the watcher logs it and refuses it at load time
        log.warning("event=publish_pointer_invalid path=%s reason=%r", path, str(exc))
        return
    if published is None:
        raise ConfigError(
            f"[model] path {path} is neither a checkpoint (no config.json) nor a publish directory with a "
            f"published version; publish one (unirg-trainer publish --model DIR --to {path}), point --model "
            "at a checkpoint, or pass --demo-model to draft with the synthetic demo model until the first publish"
        )


def load_pipeline(config: Config) -> ProcessStudy:
    """Import ``[worker] pipeline`` ('module:factory') and call ``factory(config)``.

    Raises :class:`ConfigError` when no model is configured and the demo model is not allowed
    (:func:`require_model`).
    """
    if require_model(config):
        log.warning("event=demo_model note='no model configured; --demo-model: drafting with the synthetic "
                    "demo model, trained on synthetic data only'")
    module_name, _, attr = config.worker.pipeline.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"worker.pipeline: cannot load {config.worker.pipeline!r} ({exc}); set it to "
            "'package.module:factory' where factory(config) returns process_study(current, priors)"
        ) from exc
    return factory(config)


def config_from(config_path: str | None, overrides: dict[str, Any]) -> Config:
    """``load_config(config_path)`` with a command's options applied (unset ones and empty repeats dropped);
    a bad value is a :class:`click.UsageError`."""
    try:
        cfg = load_config(config_path)
        return apply_overrides(cfg, {k: (list(v) if isinstance(v, tuple) else v) for k, v in overrides.items()
                                     if not (isinstance(v, tuple) and not v)})
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc


def viewer_link(config: Config) -> Callable[..., str | None]:
    """``(study_uid, sr_series_uid, prior_study_uid=None) -> OHIF draft-review link`` when ``[viewer] url``
    is set, else a function that returns None."""
    base = config.viewer.url
    if not base:
        return lambda *_a, **_k: None
    from unirg.plugin.viewer import study_viewer_url

    def link(study_uid: str, sr_series_uid: str | None = None, prior_study_uid: str | None = None) -> str:
        return study_viewer_url(base, study_uid, sr_series_uid, prior_study_uid=prior_study_uid)

    return link


class Adapter(Protocol):
    """Where studies come in and how workers reach images, priors and the SR destination."""

    #: The Config the service runs with (an adapter may complete it, e.g. with credentials).
    config: Config

    def open(self, services: "Services") -> None:
        """The database is open: create own tables, build the intake (nothing started yet)."""

    def make_worker(self, services: "Services", process_study: ProcessStudy, worker_id: str) -> Worker:
        """A worker wired to this adapter's image source, priors and SR store."""

    def start(self, wake_workers: list[Callable[[], None]]) -> None:
        """Start the intake (if any); call ``wake_workers`` when a study is queued here."""

    def stop_intake(self) -> None:
        """Stop taking studies in (before the workers are joined)."""

    def close(self) -> None:
        """After the workers: stop what they needed (e.g. Orthanc)."""

    def alive(self) -> bool:
        """False when the intake died on its own (the service then stops)."""


class Service:
    """Queue + ledger + ``adapter`` + ``workers`` worker threads; ``prepare()``, ``start()``, ``stop()``.

    ``prepare()`` loads the pipeline first (a missing model fails before anything starts: ConfigError),
    opens the database and builds the workers; ``start()`` prepares if needed, starts the intake, then
    the workers. ``worker_nice``: OS niceness of the worker threads (0: unchanged).
    """

    def __init__(self, adapter: Adapter, *, workers: int = 1, process_study: ProcessStudy | None = None,
                 worker_nice: int = 0, worker_grace_s: float = 60.0) -> None:
        self.adapter = adapter
        self.stop_event = threading.Event()
        self.services: Services | None = None
        self.workers: list[Worker] = []
        self.threads: list[threading.Thread] = []
        self.worker_nice = worker_nice
        self.worker_grace_s = worker_grace_s
        self._n_workers = workers
        self._process_study = process_study

    @property
    def config(self) -> Config:
        return self.adapter.config

    def prepare(self) -> "Service":
        if self.services is not None:
            return self
        process_study = None
        if self._n_workers:
            process_study = self._process_study or load_pipeline(self.config)
        self.services = open_services(self.config)
        self.adapter.open(self.services)
        base = self.config.worker.worker_id or default_worker_id()
        for i in range(self._n_workers):
            assert process_study is not None
            self.workers.append(self.adapter.make_worker(
                self.services, process_study, base if self._n_workers == 1 else f"{base}:{i}"))
        for w in self.workers:  # the feedback loop: pair signed finals with drafts between jobs ([feedback])
            w.feedback = feedback_pairer(self.config, self.services, w.source)
        return self

    def start(self) -> "Service":
        self.prepare()
        self.adapter.start([w.wakeup.set for w in self.workers])
        for w in self.workers:
            t = threading.Thread(target=self._run_worker, args=(w,), name=f"unirg-{w.worker_id}", daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def _run_worker(self, worker: Worker) -> None:
        if self.worker_nice:
            try:  # Linux: per thread, inherited by the threads this one starts
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.worker_nice)
            except (OSError, AttributeError) as exc:
                log.warning("event=worker_nice_failed nice=%d error=%r", self.worker_nice, str(exc))
        worker.run_forever(self.stop_event)

    def stop(self, worker_grace_s: float | None = None) -> None:
        """Stop the intake, then the workers (a job still running after ``worker_grace_s`` is abandoned:
        its lease expires and it is claimed again later), then what they needed, then the database."""
        self.stop_event.set()
        for w in self.workers:
            w.wakeup.set()
        self.adapter.stop_intake()
        grace = self.worker_grace_s if worker_grace_s is None else worker_grace_s
        for t in self.threads:
            t.join(timeout=grace)
            if t.is_alive():
                log.warning("event=worker_abandoned thread=%s note='job resumes after its lease expires'", t.name)
        self.adapter.close()
        if self.services is not None:
            self.services.close()

    def __enter__(self) -> "Service":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_until_signalled(self) -> None:
        """Block until SIGINT / SIGTERM (or the intake dies on its own)."""
        stop_on_signals(self.stop_event, on_signal=lambda signum: log.info(
            "event=signal signum=%d note='stopping after the current job'", signum))
        wait_for_stop(self.stop_event, alive=self.adapter.alive)

    def serve_until_signalled(self) -> None:
        self.start()
        try:
            self.wait_until_signalled()
        finally:
            self.stop()


class ListenerAdapter:
    """The DICOM listener: C-STORE in (``listen``), files in the data dir, DIMSE priors, SRStore write-back."""

    def __init__(self, config: Config, *, listen: bool = True) -> None:
        self.config = config
        self.listen = listen
        self.listener: Listener | None = None
        self.assembler: Assembler | None = None

    def open(self, services: Services) -> None:
        if self.listen:
            self.assembler = Assembler(services.ledger, services.queue, self.config.assembly)
            sink = InstanceSink(self.config.data_dir, services.ledger, self.assembler,
                                max_instance_bytes=self.config.listener.max_instance_mb * 1024 * 1024)
            self.listener = Listener(self.config, sink)

    def make_worker(self, services: Services, process_study: ProcessStudy, worker_id: str) -> Worker:
        config = self.config
        ae = config.listener.ae_title
        return Worker(
            services.queue, services.ledger, process_study,
            SRStore(config.store, config.sr_dir, ae, dicomweb=config.dicomweb),
            config.data_dir,
            PriorsFetcher(config.priors, ae, local=LocalPriors(services.ledger, config.data_dir)),
            worker_id=worker_id,
            poll_interval_s=config.queue.poll_interval_s,
            max_job_s=config.worker.max_job_s,
            viewer_link=viewer_link(config),
        )

    def start(self, wake_workers: list[Callable[[], None]]) -> None:
        if self.assembler is not None:
            self.assembler.on_ready.extend(wake_workers)
        if self.listener is not None:
            self.listener.start()
        if self.assembler is not None:
            self.assembler.sweep()  # studies a previous run left collecting
            self.assembler.start()

    def stop_intake(self) -> None:
        if self.listener is not None:
            self.listener.stop()
        if self.assembler is not None:
            self.assembler.stop()

    def close(self) -> None:
        pass

    def alive(self) -> bool:
        return True


class ListenerService(Service):
    """What ``unirg listen`` / ``unirg worker`` run: listener + assembler and/or worker threads."""

    def __init__(self, config: Config, *, listen: bool, workers: int,
                 process_study: ProcessStudy | None = None) -> None:
        super().__init__(ListenerAdapter(config, listen=listen), workers=workers, process_study=process_study)

    @property
    def listener(self) -> Listener | None:
        return self.adapter.listener  # type: ignore[attr-defined]

    @property
    def assembler(self) -> Assembler | None:
        return self.adapter.assembler  # type: ignore[attr-defined]
