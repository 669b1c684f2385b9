"""Where unirg keeps its local data (demo model, OHIF build, demo PACS), and its shipped files.

``$UNIRG_HOME`` names that folder. Unset, it is the ``var/`` folder of the checkout the working
directory is in (found by its ``scripts/build-demo-model.sh``), else ``./var``. Nothing here walks up
from ``__file__``, so an installed wheel behaves like a checkout run from its root.

The Orthanc entry script and config template ship as package data of ``unirg.orthanc``.
"""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path

__all__ = ["HOME_ENV", "BUILD_MODEL_SCRIPT_NAME", "checkout_root", "orthanc_file", "unirg_home"]

HOME_ENV = "UNIRG_HOME"
BUILD_MODEL_SCRIPT_NAME = "build-demo-model.sh"


def checkout_root(start: Path | None = None) -> Path | None:
    """The unirg checkout holding ``start`` (default: the working directory), or None."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "scripts" / BUILD_MODEL_SCRIPT_NAME).is_file() and (folder / "setup.cfg").is_file():
            return folder
    return None


def unirg_home() -> Path:
    """``$UNIRG_HOME``, else the working directory's checkout's ``var/``, else ``./var`` (absolute)."""
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser().resolve()
    root = checkout_root()
    return (root / "var") if root else (Path.cwd() / "var").resolve()


def orthanc_file(name: str) -> Path:
    """A file shipped in ``unirg.orthanc`` (``unirg_plugin.py``, ``orthanc.json.template``) as a path
    Orthanc can open (the package is installed as plain files, editable or from a wheel)."""
    return Path(str(files("unirg.orthanc").joinpath(name)))
