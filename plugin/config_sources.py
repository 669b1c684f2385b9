"""The source sections of ``unirg.plugin.config``: ``[orthanc]`` (the Orthanc plugin path) and ``[dicomweb]``
(a DICOMweb archive). Re-exported by :mod:`unirg.plugin.config`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from unirg.plugin.config_base import ConfigError, Peer, _check_ae_title, _doc

__all__ = ["OrthancConfig", "DicomWebConfig"]


@dataclass
class OrthancConfig:
    """``[orthanc]``: the Orthanc that `unirg orthanc` starts (or an existing one) and its workers read."""

    url: str = _doc(
        "REST base URL the workers use. Empty: http://127.0.0.1:<http_port> (the Orthanc `unirg orthanc` starts).", ""
    )
    http_port: int = _doc("HTTP port (REST, DICOMweb, /unirg/ routes) of the Orthanc `unirg orthanc` starts; loopback only.",
                          8042)
    dicom_port: int = _doc("DICOM port of that Orthanc (studies in by C-STORE; all interfaces).", 4242)
    aet: str = _doc("That Orthanc's AE title (also the C-MOVE destination of priors from remote modalities).", "UNIRG")
    user: str = _doc(
        "HTTP basic-auth user of the Orthanc `unirg orthanc` starts (authentication is always on there) and "
        "of its workers. Empty: 'unirg', with a generated password printed once at start unless one is given.",
        "",
    )
    password: str = _doc("Its password; prefer the UNIRG_ORTHANC_PASSWORD variable to the file.", "")
    stable_age_s: int = _doc(
        "Seconds without a new instance after which Orthanc calls a study stable; it is then drafted with what it has.",
        10,
    )
    modalities: list[str] = _doc(
        "Remote DICOM nodes `unirg orthanc` declares in Orthanc, NAME=AET@HOST:PORT each: the only calling AE "
        "titles Orthanc accepts C-STOREs from, and the PACS to C-FIND / C-MOVE priors from.",
        factory=list,
    )
    accept_unknown_scu: bool = _doc(
        "UNSAFE: let any calling AE title C-STORE into Orthanc (DicomAlwaysAllowStore), not only the declared "
        "modalities. Only for a firewalled test set-up.",
        False,
    )
    check_modality_host: bool = _doc(
        "Also require a declared modality's C-STORE to come from its HOST (DicomCheckModalityHost; HOST must "
        "then be the IP address it connects from). Off: Orthanc checks the calling AE title only.",
        False,
    )
    priors_modalities: list[str] = _doc(
        "Names of declared modalities to query for priors (C-FIND, then C-MOVE into Orthanc, through its REST API). "
        "Priors Orthanc already holds are used as they are (see [priors] skip_local).",
        factory=list,
    )
    timeout_s: float = _doc("Seconds for one REST request of a worker to Orthanc.", 60.0)

    def __post_init__(self) -> None:
        _check_ae_title(self.aet, "orthanc.aet")
        for key in ("http_port", "dicom_port"):
            if not 0 < getattr(self, key) < 65536:
                raise ConfigError(f"orthanc.{key}: {getattr(self, key)} out of range 1-65535")
        if self.http_port == self.dicom_port:
            raise ConfigError("orthanc.http_port and orthanc.dicom_port must differ")
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"orthanc.url: {self.url!r}; expected http(s)://host:port")
        if self.user and not self.password:
            raise ConfigError(f"orthanc.user {self.user!r} needs orthanc.password (set UNIRG_ORTHANC_PASSWORD)")
        if self.stable_age_s < 1:
            raise ConfigError("orthanc.stable_age_s must be at least 1")
        if self.timeout_s <= 0:
            raise ConfigError("orthanc.timeout_s must be positive")
        self.modality_peers  # validates NAME=AET@HOST:PORT
        if any(not n.strip() for n in self.priors_modalities):
            raise ConfigError("orthanc.priors_modalities: empty name")

    @property
    def base_url(self) -> str:
        return (self.url or f"http://127.0.0.1:{self.http_port}").rstrip("/")

    @property
    def auth(self) -> tuple[str, str] | None:
        return (self.user, self.password) if self.user else None

    @property
    def modality_peers(self) -> dict[str, Peer]:
        out = {}
        for item in self.modalities:
            name, sep, peer = item.partition("=")
            if not sep or not name.strip():
                raise ConfigError(f"orthanc.modalities: expected NAME=AET@HOST:PORT, got {item!r}")
            out[name.strip()] = Peer.parse(peer, "orthanc.modalities")
        return out


@dataclass
class DicomWebConfig:
    """``[dicomweb]``: a DICOMweb archive `unirg dicomweb` polls (QIDO-RS), reads (WADO-RS) and writes to (STOW-RS)."""

    url: str = _doc("DICOMweb base URL of the archive (QIDO/WADO/STOW root), e.g. https://pacs/dicom-web.", "")
    user: str = _doc("HTTP basic-auth user. Empty: no basic auth.", "")
    password: str = _doc("Its password; prefer the UNIRG_DICOMWEB_PASSWORD variable to the file.", "")
    token_env: str = _doc("Name of an environment variable holding a bearer token (sent as Authorization: Bearer).",
                          "")
    ca_bundle: str = _doc("CA bundle (PEM) to verify the archive's TLS certificate. Empty: the system's.", "")
    since: str = _doc("Poll studies with StudyDate on or after YYYYMMDD on first start. Empty: today.", "")
    poll_s: float = _doc("Seconds between two QIDO-RS polls.", 30.0)
    stable_age_s: float = _doc(
        "A study whose CR/DX instance count has not changed for this many seconds is drafted with what it has "
        "(sooner when its expected views are in).", 60.0)
    timeout_s: float = _doc("Seconds for one HTTP request to the archive.", 60.0)
    receive_port: int = _doc(
        "Port of unirg's own STOW-RS endpoint (POST /studies) an archive may push studies to. 0: off.", 0)
    receive_host: str = _doc("Address of that endpoint; 127.0.0.1 for this machine only.", "127.0.0.1")
    receive_user: str = _doc("The account a pushing archive must present (basic auth; required with the endpoint).",
                             "")
    receive_password: str = _doc("Its password; prefer UNIRG_DICOMWEB_RECEIVE_PASSWORD to the file.", "")

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        if not 0 <= self.receive_port < 65536:
            raise ConfigError(f"dicomweb.receive_port: {self.receive_port} out of range (0-65535; 0: off)")
        if self.receive_port and not (self.receive_user and self.receive_password):
            raise ConfigError("dicomweb.receive_port needs dicomweb.receive_user and receive_password "
                              "(set UNIRG_DICOMWEB_RECEIVE_PASSWORD): no anonymous pushes")
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"dicomweb.url: {self.url!r}; expected http(s)://host[:port]/path")
        if self.user and not self.password:
            raise ConfigError(f"dicomweb.user {self.user!r} needs dicomweb.password (set UNIRG_DICOMWEB_PASSWORD)")
        if self.since and not (len(self.since) == 8 and self.since.isdigit()):
            raise ConfigError(f"dicomweb.since: {self.since!r}; expected YYYYMMDD")
        for key in ("poll_s", "stable_age_s", "timeout_s"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"dicomweb.{key} must be positive")
        if self.ca_bundle and not Path(self.ca_bundle).is_file():
            raise ConfigError(f"dicomweb.ca_bundle: {self.ca_bundle!r} is not a file")
