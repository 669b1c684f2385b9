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

import json
import os
from pathlib import Path

import click

from unirg.plugin.config import Config, ConfigError
from unirg.plugin.orthanc.adapter import OrthancStack
from unirg.plugin.orthanc.launch import DEFAULT_USER, orthanc_config_for, with_credentials
from unirg.plugin.orthanc.server import OrthancStartError
from unirg.plugin.service import config_from, setup_logging
from unirg.sr_writer import RESEARCH_LABEL

__all__ = ["orthanc"]


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
    cfg = config_from(config_path, {
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
