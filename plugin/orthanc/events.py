"""The plugin object the entry script ``orthanc/unirg_plugin.py`` talks to: callbacks in, the recorder
thread (:mod:`unirg.plugin.orthanc.recorder`), and the queue / ledger / assembler the routes need.
No ``import orthanc`` here; see the recorder's docstring for the flow.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from unirg.plugin.assemble import Assembler, StudyLedger
from unirg.plugin.config import Config, ConfigError, apply_overrides, load_config
from unirg.plugin.orthanc.recorder import ChangeRecorder, create_schema
from unirg.plugin.orthanc.rest import OrthancRest
from unirg.plugin.queue import JobQueue, make_engine

__all__ = ["OrthancPlugin", "config_from_orthanc", "STABLE_STUDY", "ORTHANC_STARTED", "ORTHANC_STOPPED"]

log = logging.getLogger(__name__)

#: Change types the plugin acts on (names of ``orthanc.ChangeType``).
STABLE_STUDY = "STABLE_STUDY"
ORTHANC_STARTED = "ORTHANC_STARTED"
ORTHANC_STOPPED = "ORTHANC_STOPPED"


def config_from_orthanc(orthanc_config: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    """unirg's :class:`Config` from Orthanc's configuration (``orthanc.GetConfiguration()``, decoded).

    Its ``"Unirg"`` section may hold ``"ConfigFile"`` (a unirg.toml, read with ``UNIRG_*`` variables
    applied) and ``"Settings"`` (``{section: {key: value}}``, applied last; ``unirg orthanc`` writes the
    whole effective configuration there). ``[orthanc] stable_age_s`` follows Orthanc's ``StableAge``.
    """
    section = orthanc_config.get("Unirg") or {}
    if not isinstance(section, Mapping):
        raise ConfigError('Orthanc configuration: "Unirg" must be an object')
    config = load_config(section.get("ConfigFile") or None, env=env)
    overrides: dict[str, Any] = {}
    for name, values in (section.get("Settings") or {}).items():
        if not isinstance(values, Mapping):
            raise ConfigError(f'Orthanc configuration: "Unirg"."Settings"."{name}" must be an object')
        overrides.update({f"{name}.{key}": value for key, value in values.items()})
    overrides["orthanc.stable_age_s"] = int(orthanc_config.get("StableAge", 60))  # 60: Orthanc's default
    overrides["orthanc.user"] = overrides["orthanc.password"] = ""  # in-process REST needs no account
    return apply_overrides(config, overrides)


class OrthancPlugin:
    """unirg inside Orthanc: callbacks in, recorder thread, and the objects the routes need.

    Build it with :meth:`from_orthanc_configuration` in the entry script; the callbacks
    (:meth:`on_stored_instance`, :meth:`on_change`) never raise and never block on the database.
    """

    def __init__(self, config: Config, rest: OrthancRest, *, poll_s: float = 1.0, quiet_s: float = 0.3,
                 max_delay_s: float = 5.0, started_at: datetime.datetime | None = None) -> None:
        self.config = config
        self.rest = rest
        self.poll_s = poll_s
        #: Ingestion first: after a wake-up the recorder waits until no instance has arrived for
        #: ``quiet_s`` (at most ``max_delay_s``), then records everything new in batches. During a burst
        #: Orthanc keeps the CPUs; a study is still queued within a fraction of a second of its last image.
        self.quiet_s = quiet_s
        self.max_delay_s = max_delay_s
        self._last_stored = 0.0
        self.engine = make_engine(config.queue_url)
        q = config.queue
        self.queue = JobQueue(self.engine, lease_s=q.lease_s, max_attempts=q.max_attempts,
                              backoff_base_s=q.backoff_base_s, backoff_max_s=q.backoff_max_s)
        self.ledger = StudyLedger(self.engine, late_policy=config.assembly.late_policy)
        stable = config.orthanc.stable_age_s
        self.assembly = replace(config.assembly,
                                inactivity_timeout_s=max(config.assembly.inactivity_timeout_s, 2.0 * stable),
                                sweep_interval_s=max(config.assembly.sweep_interval_s, 1.0))
        self.assembler = Assembler(self.ledger, self.queue, self.assembly)
        self.recorder = ChangeRecorder(self.ledger, self.assembler, rest, started_at=started_at)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._schema_ready = False
        self._schema_lock = threading.Lock()

    @classmethod
    def from_orthanc_configuration(cls, orthanc_config: Mapping[str, Any], rest: OrthancRest,
                                   **kw: Any) -> "OrthancPlugin":
        return cls(config_from_orthanc(orthanc_config), rest, **kw)

    # -- callbacks ------------------------------------------------------------------------------------
    def on_stored_instance(self, instance_id: str, calling_ae: str = "") -> None:
        """Stored-instance callback (inside Orthanc's C-STORE / REST store): note the ID and wake the
        recorder. Nothing is read or parsed here: it would slow ingestion. Never raises."""
        try:
            self.recorder.note(instance_id, calling_ae)
            self._last_stored = time.monotonic()
            self._wake.set()
        except Exception:  # pragma: no cover - the change log still has the instance
            log.exception("event=stored_callback_error id=%s", instance_id)

    def on_change(self, change_type: str, resource_id: str = "") -> None:
        """Change callback (Orthanc's single change thread): wake or start/stop. Never raises."""
        try:
            if change_type == STABLE_STUDY:
                self._wake.set()
            elif change_type == ORTHANC_STARTED:
                self.start()
            elif change_type == ORTHANC_STOPPED:
                self.stop()
        except Exception:
            log.exception("event=change_callback_error change=%s", change_type)

    # -- life cycle -----------------------------------------------------------------------------------
    def ensure_schema(self) -> None:
        """Create unirg's tables if missing (first use, from the recorder thread or a route)."""
        with self._schema_lock:
            if not self._schema_ready:
                if self.config.queue_url.startswith("sqlite"):
                    self.config.data_dir.mkdir(parents=True, exist_ok=True)
                self.queue.create_schema()
                self.ledger.create_schema()
                create_schema(self.engine)
                self._schema_ready = True

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="unirg-recorder", daemon=True)
        self._thread.start()
        log.info("event=plugin_started queue=%s expected_views=%s stable_age_s=%d backstop_s=%g",
                 self.config.queue_url.split("@")[-1], ",".join(self.assembly.expected_views),
                 self.config.orthanc.stable_age_s, self.assembly.inactivity_timeout_s)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.engine.dispose()
        log.info("event=plugin_stopped")

    def _run(self) -> None:
        next_sweep = 0.0
        failures = 0
        while not self._stop.is_set():
            try:
                self.ensure_schema()
                while self.recorder.step():
                    if self._stop.is_set():
                        return
                if time.monotonic() >= next_sweep:
                    self.assembler.sweep()
                    next_sweep = time.monotonic() + self.assembly.sweep_interval_s
                failures = 0
            except Exception as exc:  # Orthanc or the database briefly unavailable: retry, backing off
                failures += 1
                self.recorder.stats.errors += 1
                self.recorder.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("event=recorder_error failures=%d", failures)
                self._stop.wait(min(0.5 * 2 ** min(failures, 6), 30.0))
                continue
            if self._wake.wait(self.poll_s):
                self._wait_for_quiet()
            self._wake.clear()

    def _wait_for_quiet(self) -> None:
        """Let a burst of C-STOREs finish before recording it (bounded by ``max_delay_s``)."""
        deadline = time.monotonic() + self.max_delay_s
        while not self._stop.is_set():
            now = time.monotonic()
            wait = min(self._last_stored + self.quiet_s, deadline) - now
            if wait <= 0:
                return
            self._stop.wait(wait)

    def status(self) -> dict[str, Any]:
        """The recorder's state for ``GET /unirg/status``."""
        s = self.recorder.stats
        try:
            cursor = self.recorder.cursor()
        except Exception:
            cursor = None
        return {
            "running": self._thread is not None and self._thread.is_alive(),
            "change_cursor": cursor,
            "noted_not_recorded": self.recorder.backlog,
            "changes_read": s.changes,
            "instances_recorded": s.recorded,
            "own_drafts_ignored": s.ignored_own,
            "unreadable_ignored": s.unreadable,
            "headers_read": s.headers_read,
            "stable_studies": s.stable_checks,
            "errors": s.errors,
            "last_error": s.last_error,
            "expected_views": list(self.assembly.expected_views),
            "stable_age_s": self.config.orthanc.stable_age_s,
            "backstop_timeout_s": self.assembly.inactivity_timeout_s,
            "late_policy": self.assembly.late_policy,
        }
