"""The DICOMweb adapter of :class:`unirg.plugin.service.Service`: the QIDO-RS watcher is the intake,
workers read by WADO-RS, find priors by QIDO-RS and write back by STOW-RS."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from unirg.plugin.assemble import Assembler
from unirg.plugin.config import Config
from unirg.plugin.dicomweb.client import DicomWeb, client_from_config
from unirg.plugin.dicomweb.priors import DicomWebPriors
from unirg.plugin.dicomweb.source import DicomWebInstanceSource
from unirg.plugin.dicomweb.store import DicomWebSRStore
from unirg.plugin.dicomweb.watcher import DicomWebWatcher
from unirg.plugin.worker import ProcessStudy, Worker

__all__ = ["DicomWebAdapter", "make_dicomweb_watcher", "make_dicomweb_worker"]


def make_dicomweb_watcher(config: Config, client: DicomWeb, ledger: Any, queue: Any) -> DicomWebWatcher:
    """The QIDO-RS watcher feeding ``queue`` through the ledger and an :class:`Assembler`."""
    d = config.dicomweb
    assembler = Assembler(ledger, queue, config.assembly)
    return DicomWebWatcher(client, ledger, assembler, since=d.since, poll_s=d.poll_s, stable_age_s=d.stable_age_s)


def make_dicomweb_worker(config: Config, process_study: ProcessStudy, queue: Any, ledger: Any, client: DicomWeb,
                         *, worker_id: str | None = None) -> Worker:
    """A :class:`Worker` that reads by WADO-RS, finds priors by QIDO-RS and writes back by STOW-RS."""
    return Worker(
        queue, ledger, process_study,
        DicomWebSRStore(client, config.sr_dir),
        config.data_dir,
        DicomWebPriors(client, config.priors),
        source=DicomWebInstanceSource(client, config.data_dir),
        worker_id=worker_id,
        poll_interval_s=config.queue.poll_interval_s,
        max_job_s=config.worker.max_job_s,
    )


class DicomWebAdapter:
    """:class:`unirg.plugin.service.Adapter` for one archive (``config.dicomweb``)."""

    def __init__(self, config: Config, client: DicomWeb | None = None) -> None:
        self.config = config
        self.client = client or client_from_config(config.dicomweb)
        self.watcher: DicomWebWatcher | None = None
        self.receiver: Any = None  # the STOW-RS endpoint, when [dicomweb] receive_port is set

    def open(self, services: Any) -> None:
        self.watcher = make_dicomweb_watcher(self.config, self.client, services.ledger, services.queue)
        d = self.config.dicomweb
        if d.receive_port:
            from unirg.plugin.dicomweb.receiver import StowReceiver
            from unirg.plugin.receive import InstanceSink

            sink = InstanceSink(self.config.data_dir, services.ledger, self.watcher.assembler,
                                max_instance_bytes=self.config.listener.max_instance_mb * 1024 * 1024)
            self.receiver = StowReceiver(sink, user=d.receive_user, password=d.receive_password,
                                         host=d.receive_host, port=d.receive_port)

    def make_worker(self, services: Any, process_study: ProcessStudy, worker_id: str) -> Worker:
        return make_dicomweb_worker(self.config, process_study, services.queue, services.ledger, self.client,
                                    worker_id=worker_id)

    def start(self, wake_workers: list[Callable[[], None]]) -> None:
        assert self.watcher is not None, "open() first"
        self.watcher.assembler.on_ready.extend(wake_workers)
        self.watcher.start()
        if self.receiver is not None:
            self.receiver.start()
            self.watcher.assembler.start()  # the inactivity sweep, for pushed studies

    def stop_intake(self) -> None:
        if self.receiver is not None:
            self.receiver.stop()
            self.watcher.assembler.stop()
        if self.watcher is not None:
            self.watcher.stop()

    def close(self) -> None:
        self.client.close()

    def alive(self) -> bool:
        return True  # the watcher outlives a down archive (it backs off); it stops only when told
