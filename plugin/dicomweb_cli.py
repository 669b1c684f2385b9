"""``unirg dicomweb``: draft chest X-ray studies of a DICOMweb archive (QIDO-RS / WADO-RS / STOW-RS).

The watcher (:mod:`unirg.plugin.dicomweb.watcher`) polls the archive into the durable queue; worker
threads (unless ``--no-worker``) draft each ready study and store the SR back by STOW-RS, all wired by
:class:`unirg.plugin.service.Service` with :class:`unirg.plugin.dicomweb.adapter.DicomWebAdapter`.
The password comes from ``$UNIRG_DICOMWEB_PASSWORD`` (or ``[dicomweb] password``), a bearer token from
the variable named by ``--token-env``. Refused credentials stop the command at once with a clear error.
"""

from __future__ import annotations

import logging

import click

from unirg.plugin.config import ConfigError
from unirg.plugin.dicomweb.adapter import DicomWebAdapter
from unirg.plugin.dicomweb.client import DicomWebAuthError, DicomWebError
from unirg.plugin.service import Service, config_from, setup_logging

__all__ = ["dicomweb"]

log = logging.getLogger(__name__)


@click.command("dicomweb")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="unirg.toml; UNIRG_<SECTION>_<KEY> env vars override it.")
@click.option("--url", help="DICOMweb base URL of the archive ([dicomweb] url).")
@click.option("--data-dir", help="Embedded queue and local SR copies.")
@click.option("--since", metavar="YYYYMMDD", help="Poll studies from this StudyDate on (first start; default today).")
@click.option("--poll-s", type=float, help="Seconds between QIDO-RS polls.")
@click.option("--stable-age", type=float, help="Seconds a study's CR/DX count must stay unchanged before drafting.")
@click.option("--user", help="HTTP basic-auth user (password: $UNIRG_DICOMWEB_PASSWORD).")
@click.option("--token-env", metavar="VAR", help="Environment variable holding a bearer token.")
@click.option("--ca-bundle", type=click.Path(exists=True, dir_okay=False), help="CA bundle (PEM) for TLS.")
@click.option("--model", type=click.Path(), help="Report model checkpoint ([model] path).")
@click.option("--demo-model", is_flag=True, default=None, help="Draft with the synthetic demo model (demo/tests).")
@click.option("--trust-remote-code", is_flag=True, default=None,
              help="Run Python code shipped in the model checkpoint (MAIRA-2 needs it; [model] trust_remote_code).")
@click.option("--queue-url", help="Queue database URL (default: SQLite in the data dir).")
@click.option("--receive-port", type=int, help="Also accept pushed studies by STOW-RS on this port "
              "(account: [dicomweb] receive_user / UNIRG_DICOMWEB_RECEIVE_PASSWORD).")
@click.option("--no-worker", is_flag=True, help="Only watch and queue.")
@click.option("--once", is_flag=True, help="Poll once, draft what is ready, exit (scripts, tests).")
def dicomweb(config_path: str | None, url: str | None, data_dir: str | None, since: str | None,
             poll_s: float | None, stable_age: float | None, user: str | None, token_env: str | None,
             ca_bundle: str | None, model: str | None, demo_model: bool | None, trust_remote_code: bool | None,
             queue_url: str | None, receive_port: int | None, no_worker: bool, once: bool) -> None:
    """Watch a DICOMweb archive by QIDO-RS; draft its chest CR/DX studies; store the SR by STOW-RS."""
    cfg = config_from(config_path, {
        "dicomweb.url": url, "listener.data_dir": data_dir, "dicomweb.since": since, "dicomweb.poll_s": poll_s,
        "dicomweb.stable_age_s": stable_age, "dicomweb.user": user, "dicomweb.token_env": token_env,
        "dicomweb.ca_bundle": ca_bundle, "model.path": model, "model.demo_model": demo_model,
        "model.trust_remote_code": trust_remote_code, "queue.url": queue_url, "dicomweb.receive_port": receive_port,
    })
    setup_logging(cfg.logging)
    if not cfg.dicomweb.url:
        raise click.UsageError("no archive: pass --url or set [dicomweb] url / UNIRG_DICOMWEB_URL")
    try:
        adapter = DicomWebAdapter(cfg)
        service = Service(adapter, workers=0 if no_worker else cfg.worker.threads)
    except ValueError as exc:  # ConfigError included
        raise click.UsageError(str(exc)) from exc
    try:
        adapter.client.probe()
    except DicomWebAuthError as exc:
        adapter.close()
        raise click.ClickException(str(exc)) from exc
    except DicomWebError as exc:
        log.warning("event=dicomweb_unavailable_at_start archive=%s reason=%r note='watching anyway'",
                    adapter.client.url, str(exc))
    try:
        service.prepare()
    except ConfigError as exc:
        adapter.close()
        raise click.UsageError(str(exc)) from exc
    if not once:
        service.serve_until_signalled()
        return
    try:
        assert adapter.watcher is not None
        adapter.watcher.poll_once()
        for w in service.workers:
            while w.run_once():
                pass
    finally:
        service.stop()
