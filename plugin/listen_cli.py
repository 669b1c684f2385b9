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

import json
from typing import Any

import click

from unirg.plugin.config import ConfigError, example_toml
from unirg.plugin.service import (  # noqa: F401 - load_pipeline: still imported from here by dicomweb_cli
    ListenerService, Services, config_from, load_pipeline, open_services, setup_logging, viewer_link,
)

__all__ = ["listen", "worker", "status", "cli", "status_report"]



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
    cfg = config_from(config_path, {
        "listener.port": port, "listener.ae_title": ae_title, "listener.host": host,
        "listener.data_dir": data_dir, "listener.allow_ae": allow_ae, "priors.pacs": pacs,
        "store.destinations": destination, "model.path": model, "model.demo_model": demo_model,
        "model.trust_remote_code": trust_remote_code,
        "queue.url": queue_url, "worker.in_listener": False if no_worker else None,
    })
    setup_logging(cfg.logging)
    workers = cfg.worker.threads if cfg.worker.in_listener else 0
    try:
        service = ListenerService(cfg, listen=True, workers=workers).prepare()
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
    cfg = config_from(config_path, {
        "listener.data_dir": data_dir, "queue.url": queue_url, "priors.pacs": pacs,
        "store.destinations": destination, "model.path": model, "model.demo_model": demo_model,
        "model.trust_remote_code": trust_remote_code, "listener.ae_title": ae_title, "worker.threads": threads, "worker.worker_id": worker_id,
    })
    setup_logging(cfg.logging)
    try:
        service = ListenerService(cfg, listen=False, workers=cfg.worker.threads).prepare()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    if drain:
        try:
            for w in service.workers:
                while w.run_once():
                    pass
        finally:
            service.stop()
        return
    service.serve_until_signalled()


def status_report(services: Services) -> dict[str, Any]:
    """Queue and study counts with failure and skip reasons (what ``unirg status`` prints)."""
    counts = services.queue.counts()
    return {
        "queue": counts.as_dict(),
        "failed_reasons": counts.dead_reasons,
        "failed_jobs": services.queue.failures(),
        "studies": services.ledger.state_counts(),
        "skipped": services.ledger.skipped(),
        **({"drafts": recent_drafts(services)} if services.config.viewer.url else {}),
    }


def recent_drafts(services: Services, limit: int = 10) -> list[dict[str, Any]]:
    """The latest drafts with their link in the viewer (``[viewer] url``)."""
    link = viewer_link(services.config)
    return [{"study_uid": j["study_uid"], "revision": j["revision"],
             "sr": (j.get("result") or {}).get("sr_sop_instance_uid"),
             "viewer": link(j["study_uid"], (j.get("result") or {}).get("sr_series_uid"))}
            for j in services.queue.list_jobs(state="done", limit=limit)]


def serve_status(services: Services, host: str, port: int) -> None:
    """``unirg status --serve``: the status page and /metrics until SIGINT/SIGTERM."""
    from unirg.plugin.monitor.server import MonitorServer
    from unirg.plugin.monitor.snapshot import read_snapshot
    from unirg.plugin.signals import stop_on_signals, wait_for_stop

    server = MonitorServer(lambda: read_snapshot(services.queue.engine), host, port).start()
    stop = stop_on_signals()
    click.echo(f"unirg status: serving {server.url} (page), {server.url}metrics (Prometheus)")
    try:
        wait_for_stop(stop)
    finally:
        server.stop()
        services.close()


@click.command("status")
@_config_opt
@_data_dir_opt
@_queue_opt
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--serve", "serve_port", type=click.IntRange(0, 65535), metavar="PORT",
              help="Serve the status page (/) and Prometheus metrics (/metrics) on PORT (0: a free one) "
                   "until SIGINT/SIGTERM, instead of printing.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address for --serve (no authentication: keep it on loopback or behind a proxy).")
def status(config_path: str | None, data_dir: str | None, queue_url: str | None, as_json: bool,
           serve_port: int | None, host: str) -> None:
    """Queue depth, jobs in flight, done, failed (with reasons), skipped studies."""
    cfg = config_from(config_path, {"listener.data_dir": data_dir, "queue.url": queue_url})
    services = open_services(cfg)
    if serve_port is not None:
        serve_status(services, host, serve_port)
        return
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
    for d in report.get("drafts", []):
        click.echo(f"draft of {d['study_uid']} (revision {d['revision']}): {d['viewer']}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """The unirg DICOM listener service (also available as `unirg listen|worker|status`)."""


cli.add_command(listen)
cli.add_command(worker)
cli.add_command(status)

if __name__ == "__main__":
    cli()
