"""``unirg listen``, ``unirg worker`` and ``unirg status``: the DICOM listener service from the shell.

The commands are plain click commands; ``unirg.plugin.cli`` adds them to the ``unirg`` group. They also
run standalone: ``python -m unirg.plugin.listen_cli listen --config unirg.toml``.

Flags follow the DCMTK tools: ``--port``, ``--ae-title``, ``--data-dir``, ``--allow-ae AET`` (repeatable),
``--pacs AET@HOST:PORT``, ``--destination AET@HOST:PORT`` (repeatable), ``--model PATH``, ``--no-worker``.

A service that drafts refuses to start unless a model is configured (``--model``, ``[model] path``,
``$UNIRG_MODEL``), a ``[worker] pipeline`` of one's own is set, or ``--demo-model`` (``[model] demo_model``)
allows the synthetic demo model: real studies are never drafted by it silently.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from unirg.plugin.assemble import Assembler, StudyLedger
from unirg.plugin.config import (
    Config,
    ConfigError,
    LoggingConfig,
    WorkerConfig,
    apply_overrides,
    example_toml,
    load_config,
)
from unirg.plugin.priors import LocalPriors, PriorsFetcher
from unirg.plugin.queue import JobQueue, make_engine
from unirg.plugin.receive import InstanceSink, Listener
from unirg.plugin.store import SRStore
from unirg.plugin.worker import ProcessStudy, Worker, default_worker_id

__all__ = ["listen", "worker", "status", "cli", "Services", "open_services", "load_pipeline", "require_model",
           "Service", "NO_MODEL_MESSAGE"]

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
        self.queue.engine.dispose()


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
    return Services(config, queue, ledger)


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


class Service:
    """What ``unirg listen`` / ``unirg worker`` run: listener + assembler and/or worker threads."""

    def __init__(self, config: Config, *, listen: bool, workers: int,
                 process_study: ProcessStudy | None = None) -> None:
        self.config = config
        self.services = open_services(config)
        self.stop_event = threading.Event()
        self.listener: Listener | None = None
        self.assembler: Assembler | None = None
        self.threads: list[threading.Thread] = []
        if listen:
            self.assembler = Assembler(self.services.ledger, self.services.queue, config.assembly)
            sink = InstanceSink(config.data_dir, self.services.ledger, self.assembler,
                                max_instance_bytes=config.listener.max_instance_mb * 1024 * 1024)
            self.listener = Listener(config, sink)
        self.workers: list[Worker] = []
        if workers:
            process_study = process_study or load_pipeline(config)
            ae = config.listener.ae_title
            for i in range(workers):
                base = config.worker.worker_id or default_worker_id()
                self.workers.append(Worker(
                    self.services.queue, self.services.ledger, process_study,
                    SRStore(config.store, config.sr_dir, ae),
                    config.data_dir,
                    PriorsFetcher(config.priors, ae, local=LocalPriors(self.services.ledger, config.data_dir)),
                    worker_id=base if workers == 1 else f"{base}:{i}",
                    poll_interval_s=config.queue.poll_interval_s,
                    max_job_s=config.worker.max_job_s,
                ))

    def start(self) -> "Service":
        if self.assembler is not None:
            self.assembler.on_ready.extend(w.wakeup.set for w in self.workers)
        if self.listener is not None:
            self.listener.start()
        if self.assembler is not None:
            self.assembler.sweep()  # studies a previous run left collecting
            self.assembler.start()
        for w in self.workers:
            t = threading.Thread(target=w.run_forever, args=(self.stop_event,), name=f"unirg-{w.worker_id}",
                                 daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for w in self.workers:
            w.wakeup.set()
        if self.listener is not None:
            self.listener.stop()
        if self.assembler is not None:
            self.assembler.stop()
        for t in self.threads:
            t.join(timeout=60)
        self.services.close()

    def serve_until_signalled(self) -> None:
        def _signal(signum: int, _frame: Any) -> None:
            log.info("event=signal signum=%d note='stopping after the current job'", signum)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, _signal)
        signal.signal(signal.SIGINT, _signal)
        self.start()
        try:
            while not self.stop_event.wait(1.0):
                pass
        finally:
            self.stop()


def _config_from(config_path: str | None, overrides: dict[str, Any]) -> Config:
    try:
        cfg = load_config(config_path)
        return apply_overrides(cfg, {k: (list(v) if isinstance(v, tuple) else v) for k, v in overrides.items()
                                     if not (isinstance(v, tuple) and not v)})
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc


_config_opt = click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
                           help="unirg.toml (see --example-config); UNIRG_<SECTION>_<KEY> env vars override it.")
_data_dir_opt = click.option("--data-dir", help="Received instances, embedded queue, local SR copies.")
_queue_opt = click.option("--queue-url", help="Queue database URL (default: SQLite in the data dir).")
_pacs_opt = click.option("--pacs", metavar="AET@HOST:PORT", help="PACS to query/retrieve priors from.")
_dest_opt = click.option("--destination", multiple=True, metavar="AET@HOST:PORT",
                         help="Write-back destination (repeatable); replaces [store] destinations.")
_model_opt = click.option("--model", type=click.Path(), help="Report model checkpoint ([model] path).")
_demo_model_opt = click.option(
    "--demo-model", is_flag=True, default=None,
    help="No model configured: draft with the synthetic demo model var/models/unirg-demo (demo and tests only).")
_trust_remote_code_opt = click.option(
    "--trust-remote-code", is_flag=True, default=None,
    help="Run Python code shipped in the model checkpoint (MAIRA-2 needs it; [model] trust_remote_code).")


@click.command("listen")
@_config_opt
@click.option("--port", type=int, help="TCP port of the Storage SCP.")
@click.option("--ae-title", help="Our AE title.")
@click.option("--host", help="Address to listen on (0.0.0.0: all).")
@_data_dir_opt
@click.option("--allow-ae", multiple=True, metavar="AET", help="Allowed calling AE title (repeatable).")
@_pacs_opt
@_dest_opt
@_model_opt
@_demo_model_opt
@_trust_remote_code_opt
@_queue_opt
@click.option("--no-worker", is_flag=True, help="Only receive and queue; run `unirg worker` separately.")
@click.option("--example-config", is_flag=True, help="Print every setting with its default and exit.")
def listen(config_path: str | None, port: int | None, ae_title: str | None, host: str | None,
           data_dir: str | None, allow_ae: tuple[str, ...], pacs: str | None, destination: tuple[str, ...],
           model: str | None, demo_model: bool | None, trust_remote_code: bool | None, queue_url: str | None,
           no_worker: bool, example_config: bool) -> None:
    """Receive chest X-ray studies by C-STORE, queue them, and (by default) draft SRs in-process."""
    if example_config:
        click.echo(example_toml())
        return
    cfg = _config_from(config_path, {
        "listener.port": port, "listener.ae_title": ae_title, "listener.host": host,
        "listener.data_dir": data_dir, "listener.allow_ae": allow_ae, "priors.pacs": pacs,
        "store.destinations": destination, "model.path": model, "model.demo_model": demo_model,
        "model.trust_remote_code": trust_remote_code,
        "queue.url": queue_url, "worker.in_listener": False if no_worker else None,
    })
    setup_logging(cfg.logging)
    workers = cfg.worker.threads if cfg.worker.in_listener else 0
    try:
        service = Service(cfg, listen=True, workers=workers)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    service.serve_until_signalled()


@click.command("worker")
@_config_opt
@_data_dir_opt
@_queue_opt
@_pacs_opt
@_dest_opt
@_model_opt
@_demo_model_opt
@_trust_remote_code_opt
@click.option("--ae-title", help="Our AE title towards the PACS and destinations.")
@click.option("--threads", type=int, help="Worker threads in this process.")
@click.option("--worker-id", help="Name in leases and logs (default host:pid).")
@click.option("--drain", is_flag=True, help="Exit when no job is due instead of waiting for more.")
def worker(config_path: str | None, data_dir: str | None, queue_url: str | None, pacs: str | None,
           destination: tuple[str, ...], model: str | None, demo_model: bool | None,
           trust_remote_code: bool | None, ae_title: str | None,
           threads: int | None,
           worker_id: str | None, drain: bool) -> None:
    """Process queued studies (run several, on one machine or several with a PostgreSQL queue)."""
    cfg = _config_from(config_path, {
        "listener.data_dir": data_dir, "queue.url": queue_url, "priors.pacs": pacs,
        "store.destinations": destination, "model.path": model, "model.demo_model": demo_model,
        "model.trust_remote_code": trust_remote_code, "listener.ae_title": ae_title, "worker.threads": threads, "worker.worker_id": worker_id,
    })
    setup_logging(cfg.logging)
    try:
        service = Service(cfg, listen=False, workers=cfg.worker.threads)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    if drain:
        try:
            for w in service.workers:
                while w.run_once():
                    pass
        finally:
            service.services.close()
        return
    service.serve_until_signalled()


def status_report(services: Services) -> dict[str, Any]:
    """Queue and study counts with failure and skip reasons (what ``unirg status`` prints)."""
    counts = services.queue.counts()
    return {
        "queue": {
            "queued": counts.queued, "retrying": counts.retrying, "in_flight": counts.in_flight,
            "done": counts.done, "failed": counts.dead,
        },
        "failed_reasons": counts.dead_reasons,
        "failed_jobs": services.queue.failures(),
        "studies": services.ledger.state_counts(),
        "skipped": services.ledger.skipped(),
    }


@click.command("status")
@_config_opt
@_data_dir_opt
@_queue_opt
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(config_path: str | None, data_dir: str | None, queue_url: str | None, as_json: bool) -> None:
    """Queue depth, jobs in flight, done, failed (with reasons), skipped studies."""
    cfg = _config_from(config_path, {"listener.data_dir": data_dir, "queue.url": queue_url})
    services = open_services(cfg)
    try:
        report = status_report(services)
    finally:
        services.close()
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    q = report["queue"]
    click.echo(f"queue: {q['queued']} queued ({q['retrying']} retrying), {q['in_flight']} in flight, "
               f"{q['done']} done, {q['failed']} failed")
    for reason, n in report["failed_reasons"].items():
        click.echo(f"  failed x{n}: {reason}")
    studies = ", ".join(f"{n} {s}" for s, n in sorted(report["studies"].items())) or "none"
    click.echo(f"studies: {studies}")
    for s in report["skipped"]:
        what = s["sop_instance_uid"] and f"instance {s['sop_instance_uid']}" or "study"
        click.echo(f"  skipped {what} of {s['study_uid']}: {s['reason']}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """The unirg DICOM listener service (also available as `unirg listen|worker|status`)."""


cli.add_command(listen)
cli.add_command(worker)
cli.add_command(status)

if __name__ == "__main__":
    cli()
