"""Configuration of the DICOM listener service (``unirg listen`` / ``unirg worker``).

Three layers, later ones win:

1. the defaults below (every field carries a ``doc`` in its metadata; ``example_toml()`` prints them all),
2. a TOML file (``unirg.toml``) with one table per section: ``[listener]``, ``[tls]``, ``[assembly]``,
   ``[queue]``, ``[priors]``, ``[store]``, ``[worker]``, ``[model]``, ``[logging]``, ``[viewer]``, ``[feedback]``,
   ``[orthanc]``, ``[dicomweb]``,
3. environment variables ``UNIRG_<SECTION>_<KEY>`` (e.g. ``UNIRG_LISTENER_PORT=11113``,
   ``UNIRG_QUEUE_URL=postgresql://...``); lists are comma-separated, booleans 1/0/true/false/yes/no.

Command-line flags (``--port``, ``--allow-ae`` ...) are applied by the CLI on top, through
:func:`apply_overrides`. A DICOM peer is written the way DCMTK users write it: ``AET@HOST:PORT``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from unirg.model.feedback import default_queue_url
from unirg.plugin.config_base import ConfigError, Peer, _check_ae_title, _doc

__all__ = [
    "Peer",
    "ListenerConfig",
    "TLSConfig",
    "AssemblyConfig",
    "QueueConfig",
    "PriorsConfig",
    "StoreConfig",
    "WorkerConfig",
    "ModelConfig",
    "LoggingConfig",
    "ViewerConfig",
    "FeedbackConfig",
    "OrthancConfig",
    "DicomWebConfig",
    "Config",
    "ConfigError",
    "load_config",
    "apply_overrides",
    "example_toml",
]


@dataclass
class ListenerConfig:
    """``[listener]``: the Storage SCP that studies arrive at."""

    ae_title: str = _doc("Our AE title, as the PACS knows us (called AE of incoming associations).", "UNIRG")
    host: str = _doc("Address to listen on; 0.0.0.0 for every interface, 127.0.0.1 for this machine only.", "0.0.0.0")
    port: int = _doc("TCP port to listen on (storescp's default is 104; 11112 needs no privileges).", 11112)
    data_dir: str = _doc(
        "Where received instances, the embedded queue and the local SR copies live. "
        "Workers on other machines need it mounted at the same path.",
        "./unirg-data",
    )
    allow_ae: list[str] = _doc(
        "Calling AE titles allowed to associate; an unknown AE is rejected. Empty: anyone may connect "
        "(a warning is logged at start).",
        factory=list,
    )
    max_pdu: int = _doc("Largest P-DATA PDU we accept, in bytes (0: unlimited).", 131072)
    max_associations: int = _doc("Concurrent associations; more are rejected (transient, local limit).", 10)
    max_instance_mb: int = _doc("Instances larger than this are refused with 0xA700 (0: no limit).", 1024)
    acse_timeout_s: float = _doc("Seconds to wait for association messages (A-ASSOCIATE, A-RELEASE).", 30.0)
    dimse_timeout_s: float = _doc("Seconds to wait for the next DIMSE message within an association.", 60.0)
    network_timeout_s: float = _doc("Seconds of network silence before an association is aborted.", 60.0)

    def __post_init__(self) -> None:
        self.ae_title = _check_ae_title(self.ae_title, "listener.ae_title")
        self.allow_ae = [_check_ae_title(a, "listener.allow_ae") for a in self.allow_ae]
        if not 0 <= self.port < 65536:
            raise ConfigError(f"listener.port: {self.port} out of range (0-65535; 0 picks a free port)")
        if self.max_pdu != 0 and self.max_pdu < 4096:
            raise ConfigError(f"listener.max_pdu: {self.max_pdu} is too small; use 0 (unlimited) or >= 4096")
        if self.max_associations < 1:
            raise ConfigError("listener.max_associations must be at least 1")


@dataclass
class TLSConfig:
    """``[tls]``: optional TLS on the listener (DICOM TLS, e.g. port 2762)."""

    enabled: bool = _doc("Wrap every accepted association in TLS.", False)
    cert_file: str = _doc("PEM certificate chain the listener presents.", "")
    key_file: str = _doc("PEM private key of cert_file.", "")
    ca_file: str = _doc("PEM CA bundle used to verify client certificates (needed with require_client_cert).", "")
    require_client_cert: bool = _doc("Reject clients that do not present a certificate signed by ca_file.", False)

    def __post_init__(self) -> None:
        if self.enabled and not (self.cert_file and self.key_file):
            raise ConfigError("tls.enabled needs tls.cert_file and tls.key_file (PEM files)")
        if self.require_client_cert and not self.ca_file:
            raise ConfigError("tls.require_client_cert needs tls.ca_file to verify client certificates against")


VIEW_NAMES = ("frontal", "lateral")
LATE_POLICIES = ("ignore", "rerun")


@dataclass
class AssemblyConfig:
    """``[assembly]``: when a study counts as complete."""

    expected_views: list[str] = _doc(
        "Views that make a study ready at once (from ViewPosition: PA/AP frontal, LL/RL/LATERAL lateral). "
        "Empty: only the inactivity timeout decides.",
        factory=lambda: ["frontal", "lateral"],
    )
    inactivity_timeout_s: float = _doc(
        "Seconds without a new instance after which a study is processed with what it has.", 5.0
    )
    late_policy: str = _doc(
        "Instances arriving after their study was queued: 'ignore' (recorded, not processed) or "
        "'rerun' (study processed again, a new SR version written).",
        "ignore",
    )
    sweep_interval_s: float = _doc("How often the inactivity timeout is checked, in seconds.", 0.5)

    def __post_init__(self) -> None:
        bad = [v for v in self.expected_views if v not in VIEW_NAMES]
        if bad:
            raise ConfigError(f"assembly.expected_views: {bad} not in {list(VIEW_NAMES)}")
        if self.late_policy not in LATE_POLICIES:
            raise ConfigError(f"assembly.late_policy: {self.late_policy!r}; use one of {list(LATE_POLICIES)}")
        if self.inactivity_timeout_s <= 0 or self.sweep_interval_s <= 0:
            raise ConfigError("assembly.inactivity_timeout_s and sweep_interval_s must be positive")


@dataclass
class QueueConfig:
    """``[queue]``: the durable job queue shared by the listener and the workers."""

    url: str = _doc(
        "SQLAlchemy URL. Empty: embedded SQLite at <data_dir>/unirg.sqlite3 (one machine). "
        "postgresql://user@host/db for workers on several machines.",
        "",
    )
    lease_s: float = _doc(
        "How long a claimed job stays reserved without a heartbeat; a crashed worker's job is claimed "
        "again after this.",
        120.0,
    )
    max_attempts: int = _doc("Attempts before a job is dead-lettered with its last reason.", 5)
    backoff_base_s: float = _doc("Delay before the first retry; doubles each attempt.", 5.0)
    backoff_max_s: float = _doc("Upper bound of the retry delay.", 300.0)
    poll_interval_s: float = _doc("How often an idle worker looks for a job.", 0.5)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigError("queue.max_attempts must be at least 1")
        if self.lease_s <= 0 or self.backoff_base_s < 0 or self.backoff_max_s < self.backoff_base_s:
            raise ConfigError("queue: lease_s > 0 and 0 <= backoff_base_s <= backoff_max_s are needed")

    def resolved_url(self, data_dir: str | Path) -> str:
        """The URL to connect to: ``url``, or the embedded SQLite file under ``data_dir``."""
        if self.url:
            return self.url
        return default_queue_url(data_dir)


@dataclass
class PriorsConfig:
    """``[priors]``: query/retrieve of the patient's earlier studies from the PACS."""

    pacs: str = _doc("PACS to query, AET@HOST:PORT. Empty: drafts are made without priors.", "")
    calling_ae_title: str = _doc("Our AE title towards the PACS. Empty: listener.ae_title.", "")
    max_priors: int = _doc("Most recent earlier CR/DX studies to retrieve (dcm4chee's priors=N).", 1)
    max_age: str = _doc(
        "Only priors at most this much older than the current study: a number and Y, M, W or D "
        "('5Y', '18M', '90D'; dcm4chee's StudyAge=-5Y). Empty: no age limit.",
        "",
    )
    skip_local: bool = _doc(
        "Do not retrieve again what is already held locally: the listener reads a prior's images from its "
        "data dir when it received them (the prior's report SRs are still asked of the PACS); the Orthanc "
        "worker uses a prior Orthanc holds without C-MOVEing it again. false: always retrieve.",
        True,
    )
    retrieve: str = _doc(
        "'get' (C-GET on the query association) or 'move' (C-MOVE to a short-lived SCP at "
        "move_ae_title/move_port, which the PACS must know).",
        "get",
    )
    move_ae_title: str = _doc("AE title of our C-MOVE destination (retrieve = 'move').", "UNIRG_PRIORS")
    move_port: int = _doc("Port of our C-MOVE destination SCP (retrieve = 'move'); one per worker.", 11113)
    move_bind_address: str = _doc(
        "Address our C-MOVE destination listens on: the interface the PACS reaches us by (it accepts only the "
        "PACS's AE title, and only instances of the series it asked for). 0.0.0.0: every interface.",
        "127.0.0.1",
    )
    connect_timeout_s: float = _doc("Seconds to open the TCP connection to the PACS.", 5.0)
    acse_timeout_s: float = _doc("Seconds to wait for the PACS to accept the association.", 10.0)
    dimse_timeout_s: float = _doc("Seconds to wait for each C-FIND/C-GET/C-MOVE response.", 30.0)
    total_timeout_s: float = _doc("Budget for all prior queries of one study; then what we have is used.", 120.0)

    def __post_init__(self) -> None:
        if self.pacs:
            Peer.parse(self.pacs, "priors.pacs")
        if self.calling_ae_title:
            _check_ae_title(self.calling_ae_title, "priors.calling_ae_title")
        _check_ae_title(self.move_ae_title, "priors.move_ae_title")
        if self.retrieve not in ("get", "move"):
            raise ConfigError(f"priors.retrieve: {self.retrieve!r}; use 'get' or 'move'")
        if self.max_priors < 0:
            raise ConfigError("priors.max_priors must be 0 or more")
        from unirg.plugin.prior_policy import parse_age

        try:
            parse_age(self.max_age)
        except ValueError as exc:
            raise ConfigError(f"priors.max_age: {exc}") from None

    @property
    def peer(self) -> Peer | None:
        return Peer.parse(self.pacs, "priors.pacs") if self.pacs else None


@dataclass
class StoreConfig:
    """``[store]``: where draft SRs go."""

    destinations: list[str] = _doc(
        "Allow-list of write-back destinations, AET@HOST:PORT (C-STORE) or dicomweb+http(s)://HOST/PATH "
        "(STOW-RS, with the [dicomweb] credentials) each; every SR goes to all of them and to nothing else. "
        "Empty: the SR is only kept locally.",
        factory=list,
    )
    calling_ae_title: str = _doc("Our AE title towards the destinations. Empty: listener.ae_title.", "")
    local_dir: str = _doc("Local copy of every SR, written before sending. Empty: <data_dir>/sr.", "")
    connect_timeout_s: float = _doc("Seconds to open the TCP connection to a destination.", 5.0)
    acse_timeout_s: float = _doc("Seconds to wait for a destination to accept the association.", 10.0)
    dimse_timeout_s: float = _doc("Seconds to wait for the C-STORE response.", 30.0)

    def __post_init__(self) -> None:
        for d in self.destinations:
            if d.startswith(DICOMWEB_SCHEME):
                _check_dicomweb_destination(d)
            else:
                Peer.parse(d, "store.destinations")
        if self.calling_ae_title:
            _check_ae_title(self.calling_ae_title, "store.calling_ae_title")

    @property
    def peers(self) -> list[Peer]:
        """The C-STORE destinations."""
        return [Peer.parse(d, "store.destinations") for d in self.destinations if not d.startswith(DICOMWEB_SCHEME)]

    @property
    def dicomweb_destinations(self) -> list[str]:
        """The STOW-RS destinations, as written (``dicomweb+https://...``)."""
        return [d for d in self.destinations if d.startswith(DICOMWEB_SCHEME)]


#: Prefix of a STOW-RS destination in ``[store] destinations``.
DICOMWEB_SCHEME = "dicomweb+"


def _check_dicomweb_destination(text: str) -> str:
    """The http(s) URL of a ``dicomweb+http(s)://host[:port]/path`` destination, else :class:`ConfigError`."""
    from urllib.parse import urlsplit

    url = text[len(DICOMWEB_SCHEME):]
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        raise ConfigError(f"store.destinations: expected dicomweb+http(s)://HOST[:PORT]/PATH without credentials "
                          f"(they come from [dicomweb]), got {text!r}")
    return url


@dataclass
class WorkerConfig:
    """``[worker]``: the loop that turns queued studies into stored SRs."""

    in_listener: bool = _doc("Run worker threads inside `unirg listen` (--no-worker turns it off).", True)
    threads: int = _doc("Worker threads inside `unirg listen` or `unirg worker`.", 1)
    worker_id: str = _doc("Name in leases and logs. Empty: <hostname>:<pid>.", "")
    max_job_s: float = _doc(
        "A job still running after this many seconds stops renewing its lease, so another worker "
        "takes it over once the lease expires (a hung pipeline does not hold a study forever).",
        3600.0,
    )
    pipeline: str = _doc(
        "'module:factory' of the study pipeline; factory(config) returns "
        "process_study(current, priors) -> SR Dataset.",
        "unirg.plugin.pipeline:make_process_study",
    )

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ConfigError("worker.threads must be at least 1")
        if self.max_job_s <= 0:
            raise ConfigError("worker.max_job_s must be positive")
        if ":" not in self.pipeline:
            raise ConfigError(f"worker.pipeline: {self.pipeline!r}; expected 'package.module:factory'")


@dataclass
class ModelConfig:
    """``[model]``: the report model the pipeline loads."""

    path: str = _doc("Checkpoint directory of the report model (read by the pipeline factory).", "")
    trust_remote_code: bool = _doc(
        "Run Python code shipped inside the checkpoint (MAIRA-2 needs it; also --trust-remote-code). Read the "
        "checkpoint's *.py files first. Off: such a checkpoint is refused; other families never run remote code.",
        False,
    )
    demo_model: bool = _doc(
        "Allow the synthetic demo model (var/models/unirg-demo, trained on synthetic data only) when no "
        "model is configured (--demo-model). Off: `unirg listen|worker|orthanc` refuse to start without "
        "[model] path, $UNIRG_MODEL, --model or a [worker] pipeline of your own.",
        False,
    )


@dataclass
class LoggingConfig:
    """``[logging]``: log output. Logs carry UIDs and job IDs, never patient names."""

    level: str = _doc("DEBUG, INFO, WARNING or ERROR.", "INFO")
    format: str = _doc("'text' (key=value) or 'json' (one object per line).", "text")

    def __post_init__(self) -> None:
        self.level = self.level.upper()
        if self.level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"logging.level: {self.level!r}; use DEBUG, INFO, WARNING or ERROR")
        if self.format not in ("text", "json"):
            raise ConfigError(f"logging.format: {self.format!r}; use 'text' or 'json'")


@dataclass
class ViewerConfig:
    """``[viewer]``: where drafts can be reviewed (the OHIF viewer of ``unirg viewer`` / ``unirg demo``)."""

    url: str = _doc("Base URL of the viewer, e.g. http://127.0.0.1:3000; set: the worker's sr_written log, "
                    "`unirg status` and the draft route carry each draft's OHIF link. Empty: no links.", "")

    def __post_init__(self) -> None:
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"viewer.url: {self.url!r}; use an http:// or https:// URL")


@dataclass
class FeedbackConfig:
    """``[feedback]``: the feedback loop, signed final reports paired with drafts (``unirg feedback``)."""

    enabled: bool = _doc(
        "Workers pair each signed final report SR that arrives with the study's draft, between jobs. Off: "
        "nothing is paired (arrivals are still noted, and paired once it is turned back on).",
        True,
    )
    embedding: bool = _doc(
        "Score each pair's embedding similarity with the shipped sentence model (all-MiniLM-L6-v2: ~0.5 GB "
        "and ~8 s to load in every worker process, on its first pair). Off: embedding_similarity is stored "
        "as null, and `unirg feedback` says so; labels, BLEU-2 and ROUGE-L are still computed.",
        True,
    )


from unirg.plugin.config_sources import DicomWebConfig, OrthancConfig  # noqa: E402


_SECTIONS: dict[str, type] = {
    "listener": ListenerConfig,
    "tls": TLSConfig,
    "assembly": AssemblyConfig,
    "queue": QueueConfig,
    "priors": PriorsConfig,
    "store": StoreConfig,
    "worker": WorkerConfig,
    "model": ModelConfig,
    "logging": LoggingConfig,
    "viewer": ViewerConfig,
    "feedback": FeedbackConfig,
    "orthanc": OrthancConfig,
    "dicomweb": DicomWebConfig,
}


@dataclass
class Config:
    """The whole service configuration, one attribute per TOML table."""

    listener: ListenerConfig = field(default_factory=ListenerConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    assembly: AssemblyConfig = field(default_factory=AssemblyConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    priors: PriorsConfig = field(default_factory=PriorsConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    viewer: ViewerConfig = field(default_factory=ViewerConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    orthanc: OrthancConfig = field(default_factory=OrthancConfig)
    dicomweb: DicomWebConfig = field(default_factory=DicomWebConfig)

    @property
    def data_dir(self) -> Path:
        """``listener.data_dir`` as an absolute path (relative ones are taken from the working directory)."""
        return Path(self.listener.data_dir).expanduser().resolve()

    @property
    def queue_url(self) -> str:
        return self.queue.resolved_url(self.data_dir)

    @property
    def sr_dir(self) -> Path:
        return Path(self.store.local_dir) if self.store.local_dir else self.data_dir / "sr"


def _convert(value: Any, typ: Any, key: str) -> Any:
    """Convert a TOML or environment value to the field type ``typ``."""
    origin = get_origin(typ)
    if origin is list:
        (item,) = get_args(typ)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_convert(v, item, key) for v in value]
    if typ is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{key}: expected a boolean (true/false), got {value!r}")
    if typ in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return typ(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected {'an integer' if typ is int else 'a number'}, got {value!r}")
    if typ is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {typ}")  # pragma: no cover


def _section_values(cls: type, raw: Mapping[str, Any], section: str) -> dict[str, Any]:
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"[{section}]: unknown key(s) {unknown}; known: {sorted(names)}")
    return {k: _convert(v, hints[k], f"{section}.{k}") for k, v in raw.items()}


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (TOML; optional) and apply ``UNIRG_<SECTION>_<KEY>`` variables from ``env``.

    Raises :class:`ConfigError` naming the key on any unknown key or bad value.
    """
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"{path}: unknown table(s) {unknown}; known: {sorted(_SECTIONS)}")
    values: dict[str, dict[str, Any]] = {}
    for section, cls in _SECTIONS.items():
        table = raw.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] must be a table")
        values[section] = _section_values(cls, table, section)
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            var = f"UNIRG_{section.upper()}_{f.name.upper()}"
            if var in env:
                values[section][f.name] = _convert(env[var], hints[f.name], var)
    return Config(**{s: cls(**values[s]) for s, cls in _SECTIONS.items()})


def apply_overrides(config: Config, overrides: Mapping[str, Any]) -> Config:
    """Return a copy of ``config`` with ``{"section.key": value}`` overrides applied and re-validated.

    ``None`` values are skipped, so CLI options that were not given can be passed straight through.
    """
    sections = {s: dataclasses.asdict(getattr(config, s)) for s in _SECTIONS}
    for dotted, value in overrides.items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        if section not in sections or key not in sections[section]:
            raise ConfigError(f"override {dotted!r}: no such setting")
        hints = get_type_hints(_SECTIONS[section])
        sections[section][key] = _convert(value, hints[key], dotted)
    return Config(**{s: cls(**sections[s]) for s, cls in _SECTIONS.items()})


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def example_toml() -> str:
    """Every setting with its default and its documentation, as a commented ``unirg.toml``."""
    defaults = Config()
    lines = ["# unirg.toml: every setting with its default. Env: UNIRG_<SECTION>_<KEY>.", ""]
    for section, cls in _SECTIONS.items():
        lines.append("# " + (cls.__doc__ or "").strip().replace("``", ""))
        lines.append(f"[{section}]")
        obj = getattr(defaults, section)
        for f in dataclasses.fields(cls):
            lines.append(f"# {f.metadata['doc']}")
            lines.append(f"{f.name} = {_toml_value(getattr(obj, f.name))}")
        lines.append("")
    return "\n".join(lines)
