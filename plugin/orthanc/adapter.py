"""The Orthanc adapter of :mod:`unirg.plugin.service`: Orthanc with unirg's plugin as the intake (or an
Orthanc elsewhere), and workers that read images, fetch priors and store SRs through its REST API.

:class:`OrthancStack` is the service with this adapter (``unirg orthanc``, ``unirg demo``, the benchmarks).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from unirg.plugin.config import Config
from unirg.plugin.orthanc.launch import orthanc_config_for, orthanc_dir, orthanc_env, with_credentials
from unirg.plugin.orthanc.recorder import create_schema
from unirg.plugin.orthanc.server import OrthancServer
from unirg.plugin.orthanc.source import OrthancClient, OrthancInstanceSource, OrthancSRStore
from unirg.plugin.priors.orthanc import OrthancPriors
from unirg.plugin.service import Service, Services, viewer_link
from unirg.plugin.worker import ProcessStudy, Worker

__all__ = ["OrthancAdapter", "OrthancStack", "make_orthanc_worker"]

log = logging.getLogger(__name__)


def make_orthanc_worker(config: Config, process_study: ProcessStudy, queue: Any, ledger: Any, *,
                        worker_id: str | None = None, client: OrthancClient | None = None) -> Worker:
    """A :class:`Worker` on unirg's queue that reads from and writes to the Orthanc of ``config.orthanc``."""
    o = config.orthanc
    client = client or OrthancClient(o.base_url, o.auth, o.timeout_s)
    return Worker(
        queue, ledger, process_study,
        OrthancSRStore(client, config.sr_dir),
        config.data_dir,
        OrthancPriors(client, config.priors, o.priors_modalities, ledger.engine),
        source=OrthancInstanceSource(client),
        worker_id=worker_id,
        poll_interval_s=config.queue.poll_interval_s,
        max_job_s=config.worker.max_job_s,
        viewer_link=viewer_link(config),
    )


class OrthancAdapter:
    """Orthanc (with the plugin unless ``plugin=False``) started here when ``run_orthanc``, else the
    Orthanc at ``config.orthanc.base_url``; workers talk to it over REST.

    With ``run_orthanc``, Orthanc's HTTP authentication is on (:func:`with_credentials`): ``config``
    then carries the account, and ``generated_password`` is the password made here (else None).
    """

    def __init__(self, config: Config, *, run_orthanc: bool = True, plugin: bool = True) -> None:
        self.generated_password: str | None = None
        if run_orthanc:
            config, generated = with_credentials(config)
            self.generated_password = config.orthanc.password if generated else None
        self.config = config
        self.server: OrthancServer | None = None
        if run_orthanc:
            self.server = OrthancServer(orthanc_config_for(config, plugin=plugin), work_dir=orthanc_dir(config),
                                        env=orthanc_env())

    def open(self, services: Services) -> None:
        create_schema(services.ledger.engine)  # the plugin's own tables (priors pulled in are marked there)

    def make_worker(self, services: Services, process_study: ProcessStudy, worker_id: str) -> Worker:
        return make_orthanc_worker(self.config, process_study, services.queue, services.ledger, worker_id=worker_id)

    def start(self, wake_workers: list[Callable[[], None]]) -> None:
        if self.server is not None:  # the plugin inside enqueues; workers poll the shared queue
            self.server.start(timeout=120)

    def stop_intake(self) -> None:
        pass  # Orthanc keeps running until the workers are done with it

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()

    def alive(self) -> bool:
        if self.server is not None and not self.server.is_running():
            log.error("event=orthanc_exited log=%s", self.server.log_path)
            return False
        return True


class OrthancStack(Service):
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
    """

    def __init__(self, config: Config, *, run_orthanc: bool = True, workers: int = 1,
                 process_study: ProcessStudy | None = None, plugin: bool = True, worker_nice: int = 10) -> None:
        super().__init__(OrthancAdapter(config, run_orthanc=run_orthanc, plugin=plugin), workers=workers,
                         process_study=process_study, worker_nice=worker_nice, worker_grace_s=10.0)

    @property
    def server(self) -> OrthancServer | None:
        return self.adapter.server  # type: ignore[attr-defined]

    @property
    def generated_password(self) -> str | None:
        return self.adapter.generated_password  # type: ignore[attr-defined]

    @property
    def url(self) -> str:
        return self.config.orthanc.base_url

    @property
    def auth(self) -> tuple[str, str] | None:
        return self.config.orthanc.auth

    def client(self) -> OrthancClient:
        return OrthancClient(self.url, self.auth, self.config.orthanc.timeout_s)
