"""The building blocks every ``unirg.plugin.config`` section uses: :class:`ConfigError`, documented fields
and DICOM peers (``AET@HOST:PORT``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ConfigError", "Peer"]


class ConfigError(ValueError):
    """A configuration value is missing or wrong; the message says which key and how to fix it."""


def _doc(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING) -> Any:
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


def _check_ae_title(value: str, key: str) -> str:
    value = value.strip()
    if not value or len(value) > 16 or "\\" in value or not value.isprintable():
        raise ConfigError(f"{key}: {value!r} is not a valid AE title (1-16 printable characters, no backslash)")
    return value


@dataclass(frozen=True)
class Peer:
    """A DICOM application entity on the network, parsed from ``AET@HOST:PORT``."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, key: str = "peer") -> "Peer":
        """Parse ``AET@HOST:PORT`` (IPv6 hosts in brackets: ``AET@[::1]:104``).

        >>> Peer.parse("ORTHANC@127.0.0.1:4242")
        Peer(ae_title='ORTHANC', host='127.0.0.1', port=4242)
        """
        aet, sep, hostport = str(text).partition("@")
        host, sep2, port = hostport.rpartition(":")
        if not sep or not sep2 or not host or not port.isdigit():
            raise ConfigError(f"{key}: expected AET@HOST:PORT (e.g. ORTHANC@127.0.0.1:4242), got {text!r}")
        port_no = int(port)
        if not 0 < port_no < 65536:
            raise ConfigError(f"{key}: port {port_no} out of range 1-65535 in {text!r}")
        return cls(_check_ae_title(aet, key), host.strip("[]"), port_no)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"
