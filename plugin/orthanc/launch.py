"""What ``unirg orthanc`` hands Orthanc: its configuration for a unirg Config (with the plugin), the
HTTP account (given or generated) and the environment. :mod:`.server` starts and stops the process.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import sysconfig
from pathlib import Path
from typing import Any

from unirg.plugin.config import Config
from unirg.plugin.home import orthanc_file
from unirg.plugin.orthanc.server import build_orthanc_config

__all__ = ["orthanc_config_for", "orthanc_dir", "orthanc_env", "plugin_settings", "site_packages",
           "with_credentials", "PLUGIN_SCRIPT", "DEFAULT_USER"]

#: The HTTP user when ``[orthanc] user`` is empty.
DEFAULT_USER = "unirg"
#: The entry script Orthanc runs (orthanc/ of the checkout, shipped as package data of unirg.orthanc).
PLUGIN_SCRIPT = orthanc_file("unirg_plugin.py")


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
    for key in ("user", "password", "receive_user", "receive_password"):  # no DICOMweb secret in orthanc.json
        settings["dicomweb"][key] = ""
    settings["dicomweb"]["receive_port"] = 0
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
