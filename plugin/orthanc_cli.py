"""``unirg orthanc``: Orthanc with unirg's plugin and DICOMweb on loopback, plus the draft worker.

::

    unirg orthanc --config unirg.toml [--http-port 8042] [--dicom-port 4242] [--data-dir DIR]
                  [--model PATH] [--no-worker | --worker-only] ...

* writes ``<data_dir>/orthanc/orthanc.json`` (``build_orthanc_config``: loopback HTTP, DICOMweb,
  orthanc-python 4.0 ``"PythonScript"`` = ``orthanc/unirg_plugin.py``, and a ``"Unirg"`` section with
  the effective unirg settings and this venv's site-packages) and starts Debian's Orthanc on it;
* runs ``[worker] threads`` workers in this process (same queue, ledger, pipeline and semantics as
  ``unirg listen``; images, priors and the SR go through Orthanc's REST API);
* ``--no-worker``: Orthanc and the plugin only; run ``unirg orthanc --worker-only`` (as many as you
  like, also on other machines with a PostgreSQL queue) for the drafts;
* ``--worker-only``: only workers, for the Orthanc at ``[orthanc] url`` (``--orthanc-url``): the way
  to use an existing Orthanc (install the plugin there as orthanc/orthanc.json.template says);
* ``--write-config FILE``: write the Orthanc configuration and exit.

Orthanc's HTTP authentication is always on: the account is ``[orthanc] user`` / ``password``
(``UNIRG_ORTHANC_PASSWORD``; a password alone gets the user ``unirg``), else user ``unirg`` with a
generated password, printed once on stderr at start (not logged) and handed in-process to the workers.
It is also in ``<data_dir>/orthanc/orthanc.json`` (mode 0600), which Orthanc must read. Only the
declared modalities (``[orthanc] modalities``) may C-STORE unless ``[orthanc] accept_unknown_scu``.
Ctrl-C (SIGINT) or SIGTERM stops the workers (a job cut short is taken up again at the next start:
its lease expires) and then Orthanc.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import signal
import sysconfig
import threading
from pathlib import Path
from typing import Any

import click

from unirg.plugin.config import Config, ConfigError
from unirg.plugin.listen_cli import Services, _config_from, load_pipeline, open_services, setup_logging
from unirg.plugin.orthanc_events import create_schema
from unirg.plugin.orthanc_server import OrthancServer, OrthancStartError, build_orthanc_config
from unirg.plugin.orthanc_source import OrthancClient, make_orthanc_worker
from unirg.plugin.worker import ProcessStudy, Worker, default_worker_id
from unirg.sr_writer import RESEARCH_LABEL

__all__ = ["orthanc", "OrthancStack", "orthanc_config_for", "plugin_settings", "with_credentials", "PLUGIN_SCRIPT",
           "DEFAULT_USER"]

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The HTTP user when ``[orthanc] user`` is empty.
DEFAULT_USER = "unirg"
#: The entry script Orthanc runs (in this checkout's orthanc/ folder).
PLUGIN_SCRIPT = REPO_ROOT / "orthanc" / "unirg_plugin.py"


def site_packages() -> list[str]:
    """This interpreter's (the venv's) site-packages folders, for the plugin's sys.path."""
    out: list[str] = []
    for key in ("purelib", "platlib"):
        path = sysconfig.get_path(key)
        if path and path not in out:
            out.append(path)
    return out


def plugin_settings(config: Config) -> dict[str, Any]:
    """The ``"Unirg"`` section of Orthanc's configuration: the effective settings, paths absolute,
    without the Orthanc password (the plugin calls Orthanc in-process and needs none)."""
    settings = {f.name: dataclasses.asdict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    settings["listener"]["data_dir"] = str(config.data_dir)
    settings["queue"]["url"] = config.queue_url
    settings["store"]["local_dir"] = str(config.sr_dir)
    settings["orthanc"]["password"] = ""
    settings["orthanc"]["user"] = ""
    return {"Settings": settings, "SitePackages": site_packages()}


def with_credentials(config: Config) -> tuple[Config, bool]:
    """``config`` with an Orthanc HTTP account, and whether its password was generated here.

    ``[orthanc] user`` / ``password`` as given; a password without a user gets :data:`DEFAULT_USER`;
    neither: :data:`DEFAULT_USER` with ``secrets.token_urlsafe(24)``.
    """
    o = config.orthanc
    if o.user and o.password:
        return config, False
    generated = not o.password
    orthanc = dataclasses.replace(o, user=o.user or DEFAULT_USER,
                                  password=o.password or secrets.token_urlsafe(24))
    return dataclasses.replace(config, orthanc=orthanc), generated


def orthanc_env() -> dict[str, str]:
    """Orthanc's environment: ours, plus ``TCP_NODELAY=1``. Debian's DCMTK (Orthanc's DICOM stack)
    leaves Nagle's algorithm on unless that variable says otherwise, and on loopback every C-STORE then
    waits ~40 ms for a delayed ACK (22 instances/s instead of thousands; bench/bench_ingest.py)."""
    return {**os.environ, "TCP_NODELAY": os.environ.get("TCP_NODELAY", "1")}


def orthanc_dir(config: Config) -> Path:
    return config.data_dir / "orthanc"


def orthanc_config_for(config: Config, *, plugin: bool = True, verbose: bool = False) -> dict[str, Any]:
    """Orthanc's configuration for ``config`` (with unirg's plugin unless ``plugin=False``)."""
    o = config.orthanc
    return build_orthanc_config(
        data_dir=orthanc_dir(config),
        http_port=o.http_port,
        dicom_port=o.dicom_port,
        aet=o.aet,
        name="unirg",
        python_script=PLUGIN_SCRIPT if plugin else None,
        stable_age=o.stable_age_s,
        users={o.user: o.password} if o.user else None,
        modalities={name: [p.ae_title, p.host, p.port] for name, p in o.modality_peers.items()},
        accept_unknown_scu=o.accept_unknown_scu,
        check_modality_host=o.check_modality_host,
        python_verbose=verbose,
        extra={"Unirg": plugin_settings(config)} if plugin else None,
    )


class OrthancStack:
    """Orthanc (with the plugin) and/or worker threads in this process; ``start()`` / ``stop()``.

    Parameters
    ----------
    config : Config
    run_orthanc : bool
        Start Orthanc here (False: workers for the Orthanc at ``config.orthanc.base_url``).
    workers : int
        Worker threads (0: none).
    process_study : ProcessStudy | None
        The pipeline; default ``load_pipeline(config)`` (``[worker] pipeline``, ``[model] path``).
    plugin : bool
        Load unirg's plugin into Orthanc (False only for benchmarks: Orthanc as it is).
    worker_nice : int
        OS niceness of the worker threads (and of the threads they start, e.g. a model's): with
        Orthanc on the same machine, a CPU-hungry model then yields the CPUs to Orthanc's ingestion
        instead of slowing it. 0: same priority as Orthanc.

    With ``run_orthanc``, Orthanc's HTTP authentication is on (:func:`with_credentials`): ``config``
    then carries the account, and ``generated_password`` is the password made here (else None).
    """

    def __init__(self, config: Config, *, run_orthanc: bool = True, workers: int = 1,
                 process_study: ProcessStudy | None = None, plugin: bool = True, worker_nice: int = 10) -> None:
        self.generated_password: str | None = None
        if run_orthanc:
            config, generated = with_credentials(config)
            self.generated_password = config.orthanc.password if generated else None
        self.config = config
        self.stop_event = threading.Event()
        self.server: OrthancServer | None = None
        if run_orthanc:
            self.server = OrthancServer(orthanc_config_for(config, plugin=plugin), work_dir=orthanc_dir(config),
                                        env=orthanc_env())
        self.services: Services | None = None
        self.workers: list[Worker] = []
        self.threads: list[threading.Thread] = []
        self._n_workers = workers
        self._process_study = process_study
        self.worker_nice = worker_nice

    @property
    def url(self) -> str:
        return self.config.orthanc.base_url

    @property
    def auth(self) -> tuple[str, str] | None:
        return self.config.orthanc.auth

    def client(self) -> OrthancClient:
        return OrthancClient(self.url, self.auth, self.config.orthanc.timeout_s)

    def start(self) -> "OrthancStack":
        process_study = None
        if self._n_workers:  # load the pipeline (and model) first: fail before starting anything
            process_study = self._process_study or load_pipeline(self.config)
        self.services = open_services(self.config)
        create_schema(self.services.queue.engine)
        if self.server is not None:
            self.server.start(timeout=120)
        base = self.config.worker.worker_id or default_worker_id()
        for i in range(self._n_workers):
            assert process_study is not None
            w = make_orthanc_worker(self.config, process_study, self.services.queue, self.services.ledger,
                                    worker_id=base if self._n_workers == 1 else f"{base}:{i}")
            self.workers.append(w)
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

    def stop(self, worker_grace_s: float = 10.0) -> None:
        """Stop the workers (a job still running after ``worker_grace_s`` is abandoned: its lease
        expires and it is claimed again later), then Orthanc."""
        self.stop_event.set()
        for w in self.workers:
            w.wakeup.set()
        for t in self.threads:
            t.join(timeout=worker_grace_s)
            if t.is_alive():
                log.warning("event=worker_abandoned thread=%s note='job resumes after its lease expires'", t.name)
        if self.server is not None:
            self.server.stop()
        if self.services is not None:
            self.services.close()

    def __enter__(self) -> "OrthancStack":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_until_signalled(self) -> None:
        """Block until SIGINT / SIGTERM (or Orthanc exits on its own)."""
        def _signal(signum: int, _frame: Any) -> None:
            log.info("event=signal signum=%d note='stopping'", signum)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, _signal)
        signal.signal(signal.SIGINT, _signal)
        while not self.stop_event.wait(1.0):
            if self.server is not None and not self.server.is_running():
                log.error("event=orthanc_exited log=%s", self.server.log_path)
                break


@click.command("orthanc")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="unirg.toml ([orthanc] section and the rest); UNIRG_<SECTION>_<KEY> env vars override it.")
@click.option("--http-port", type=int, help="Orthanc's HTTP port (REST, DICOMweb, /unirg/), loopback only.")
@click.option("--dicom-port", type=int, help="Orthanc's DICOM port (C-STORE in).")
@click.option("--aet", help="Orthanc's AE title.")
@click.option("--data-dir", help="Orthanc's storage (<dir>/orthanc), the queue, local SR copies.")
@click.option("--model", type=click.Path(), help="Report model checkpoint ([model] path).")
@click.option("--demo-model", is_flag=True, default=None,
              help="No model configured: draft with the synthetic demo model var/models/unirg-demo (demo, tests).")
@click.option("--trust-remote-code", is_flag=True, default=None,
              help="Run Python code shipped in the model checkpoint (MAIRA-2 needs it; [model] trust_remote_code).")
@click.option("--queue-url", help="Queue database URL (default: SQLite in the data dir).")
@click.option("--user", help="Orthanc HTTP user (password from $UNIRG_ORTHANC_PASSWORD). Default: "
              f"'{DEFAULT_USER}' with a generated password, printed once at start.")
@click.option("--stable-age", type=int, help="Seconds after the last instance before a study is stable.")
@click.option("--modality", "modalities", multiple=True, metavar="NAME=AET@HOST:PORT",
              help="Remote DICOM node to declare in Orthanc (repeatable): only declared AE titles may "
                   "C-STORE ([orthanc] accept_unknown_scu lifts that, unsafely); also a priors source.")
@click.option("--priors-modality", "priors_modalities", multiple=True, metavar="NAME",
              help="Declared modality to C-FIND / C-MOVE priors from (repeatable).")
@click.option("--orthanc-url", help="With --worker-only: the Orthanc to work for ([orthanc] url).")
@click.option("--threads", type=int, help="Worker threads ([worker] threads).")
@click.option("--worker-nice", type=click.IntRange(0, 19), default=10, show_default=True,
              help="OS niceness of the workers: a CPU-hungry model yields to Orthanc's ingestion (0: off).")
@click.option("--no-worker", is_flag=True, help="Orthanc and the plugin only; run workers with --worker-only.")
@click.option("--worker-only", is_flag=True, help="Workers only, for an Orthanc running elsewhere.")
@click.option("--write-config", type=click.Path(dir_okay=False, writable=True),
              help="Write Orthanc's JSON configuration to this file and exit.")
def orthanc(config_path: str | None, http_port: int | None, dicom_port: int | None, aet: str | None,
            data_dir: str | None, model: str | None, demo_model: bool | None, trust_remote_code: bool | None,
            queue_url: str | None, user: str | None, stable_age: int | None, modalities: tuple[str, ...], priors_modalities: tuple[str, ...],
            orthanc_url: str | None, threads: int | None, worker_nice: int, no_worker: bool, worker_only: bool,
            write_config: str | None) -> None:
    """Orthanc + unirg plugin + DICOMweb on loopback, and the draft worker.

    \b
    Examples:
      unirg orthanc --data-dir /srv/unirg --model var/models/unirg-demo
      UNIRG_ORTHANC_PASSWORD=... unirg orthanc --config unirg.toml --user unirg --no-worker
      unirg orthanc --config unirg.toml --worker-only --orthanc-url http://127.0.0.1:8042
    RESEARCH ONLY - NOT FOR CLINICAL USE: every SR written is an unverified AI draft.
    """
    if no_worker and worker_only:
        raise click.UsageError("--no-worker and --worker-only exclude each other")
    cfg = _config_from(config_path, {
        "orthanc.http_port": http_port, "orthanc.dicom_port": dicom_port, "orthanc.aet": aet,
        "listener.data_dir": data_dir, "model.path": model, "model.demo_model": demo_model, "queue.url": queue_url,
        "model.trust_remote_code": trust_remote_code, "orthanc.user": user,
        "orthanc.stable_age_s": stable_age, "orthanc.modalities": modalities,
        "orthanc.priors_modalities": priors_modalities, "orthanc.url": orthanc_url, "worker.threads": threads,
    })
    setup_logging(cfg.logging)
    if write_config:
        cfg, generated = with_credentials(cfg)
        path = Path(write_config)
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # it holds the password
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(orthanc_config_for(cfg), indent=2) + "\n")
        click.echo(f"wrote {write_config} (mode 0600: it holds the HTTP password)")
        if generated:
            _echo_password(cfg, cfg.orthanc.password)
        return
    workers = 0 if no_worker else cfg.worker.threads
    if worker_only and cfg.orthanc.auth is None:
        click.echo(f"unirg orthanc: warning: no Orthanc credentials for {cfg.orthanc.base_url}; set "
                   "UNIRG_ORTHANC_USER and UNIRG_ORTHANC_PASSWORD (printed by the `unirg orthanc` that started it)",
                   err=True)
    try:
        stack = OrthancStack(cfg, run_orthanc=not worker_only, workers=workers, worker_nice=worker_nice).start()
    except (ConfigError, OrthancStartError) as exc:
        raise click.ClickException(str(exc)) from exc
    if stack.generated_password:
        _echo_password(stack.config, stack.generated_password)
    cfg = stack.config
    o = cfg.orthanc
    if stack.server is not None:
        click.echo(f"unirg orthanc: Orthanc pid {stack.server.pid} at {stack.url} (REST, {stack.url}/dicom-web/, "
                   f"{stack.url}/unirg/status), DICOM {o.aet}@<this host>:{o.dicom_port}; log {stack.server.log_path}")
    if workers:
        model_name = (cfg.model.path or os.environ.get("UNIRG_MODEL")
                      or ("the synthetic demo model" if cfg.model.demo_model else "(the pipeline's own)"))
        click.echo(f"unirg orthanc: {workers} worker(s) for {stack.url}, model {model_name}")
    click.echo(f"{RESEARCH_LABEL}. Ctrl-C stops.", nl=True)
    try:
        stack.wait_until_signalled()
    finally:
        stack.stop()


def _echo_password(cfg: Config, password: str) -> None:
    """The generated password, once, on stderr (never logged)."""
    user = cfg.orthanc.user
    click.echo(f"unirg orthanc: HTTP authentication on: user {user!r}, generated password {password} "
               f"(shown once; set UNIRG_ORTHANC_PASSWORD to choose it). Workers elsewhere: "
               f"UNIRG_ORTHANC_USER={user} UNIRG_ORTHANC_PASSWORD=... unirg orthanc --worker-only", err=True)


if __name__ == "__main__":
    orthanc()
