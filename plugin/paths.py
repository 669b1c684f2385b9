"""Local paths built from DICOM attributes (UIDs), refused when they could leave their root.

A UID comes from whoever sent the instance. ``safe_component`` accepts only a DICOM UID
(PS3.5 9.1: digits and dots, at most 64 characters), which can hold no ``/``, ``..`` or
absolute path; ``path_under`` also resolves the result (symlinks included) and refuses
anything outside ``root``. Every path built from a DICOM attribute goes through here.

>>> path_under("/data/sr", safe_component("1.2.3"), safe_component("1.2.3.4") + ".dcm")
PosixPath('/data/sr/1.2.3/1.2.3.4.dcm')
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["UnsafePath", "path_under", "safe_component", "uid_path"]

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class UnsafePath(ValueError):
    """A path component from a DICOM attribute is not a UID, or the path leaves its root."""


def safe_component(uid: object, what: str = "UID") -> str:
    """``uid`` as a string when it is a valid DICOM UID, else :class:`UnsafePath`."""
    text = str(uid) if uid is not None else ""
    if len(text) > 64 or not _UID.match(text):
        raise UnsafePath(
            f"{what} {text[:80]!r} is not a DICOM UID (digits and dots, at most 64 characters): "
            "refusing to build a local path from it; fix the sender's UIDs"
        )
    return text


def path_under(root: str | os.PathLike[str], *components: str) -> Path:
    """``root / components...``; :class:`UnsafePath` when it resolves (symlinks followed) to a
    place not inside ``root``."""
    base = Path(root).resolve()
    for part in components:
        if not part or Path(part).is_absolute() or "/" in part or "\\" in part or part in (".", ".."):
            raise UnsafePath(f"path component {part[:80]!r} is not a plain file or folder name")
    target = base.joinpath(*components).resolve()
    if target == base or base not in target.parents:
        raise UnsafePath(f"{target} is outside {base}: refusing to write there")
    return Path(root).joinpath(*components)


def uid_path(root: str | os.PathLike[str], study_uid: object, sop_uid: object, suffix: str = ".dcm") -> Path:
    """``<root>/<StudyInstanceUID>/<SOPInstanceUID><suffix>``, both validated as UIDs."""
    return path_under(
        root,
        safe_component(study_uid, "StudyInstanceUID"),
        safe_component(sop_uid, "SOPInstanceUID") + suffix,
    )
