"""``unirg-trainer publish``: hand new weights to running workers, atomically.

:func:`publish_model` copies a model directory (what ``unirg-trainer sft`` / ``rl``
wrote) into ``PUBLISH_DIR/versions/<version>/``, recomputes the weights hash, writes the
manifest (``unirg-model.json``: name, version, weights hash, metrics), and only then
flips ``PUBLISH_DIR/current.json`` with an atomic rename. The plugin's
:class:`unirg.model.reload.ModelWatcher` reads only ``current.json``, so it sees
the previous version or the complete new one, never a half-copied directory; the next
job after the flip drafts with the new version and its SR names it.

Steps, each safe to interrupt:

1. copy into ``PUBLISH_DIR/.staging-<version>-<random>/`` (training checkpoints left out),
   fsync every file;
2. hash the copy, compare with the source manifest's ``weights_sha256`` (a copy that
   differs is refused), write the manifest;
3. rename the staging directory to ``versions/<version>`` (one ``rename``);
4. write ``current.json`` to a temporary file, fsync, ``os.replace`` it over the old one,
   fsync the directory.

An interrupted publish leaves a ``.staging-*`` directory behind (removed by the next
publish) and the old pointer in place. Publishes into one directory are serialised with
a lock file (``.publish.lock``, ``flock``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from unirg.model.model import MANIFEST
from unirg.model.reload import CURRENT, VERSIONS, Published, model_weights_sha256, read_current

__all__ = ["PublishError", "model_weights_sha256", "publish_model", "read_current"]

_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
_SKIP = {"checkpoints", "__pycache__"}


class PublishError(RuntimeError):
    """The model cannot be published as asked; the message says what to change."""


@dataclass(frozen=True)
class PublishResult:
    version: str
    path: Path
    weights_sha256: str
    previous: str | None
    manifest: dict


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_tree(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` (skipping checkpoints), fsyncing every file."""
    target.mkdir(parents=True)
    for entry in sorted(source.iterdir()):
        if entry.name in _SKIP or entry.name.startswith("."):
            continue
        destination = target / entry.name
        if entry.is_dir():
            _copy_tree(entry, destination)
        else:
            # copyfile, not copy2: the copy gets default permissions (safetensors writes 0600
            # files, which a worker running as another user could not read)
            shutil.copyfile(entry, destination)
            with destination.open("rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(target)


def _write_json_atomic(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(data, indent=2) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _adapter_base_outside(model_dir: Path) -> str | None:
    """An adapter's absolute base path (it stays where it is; the copy refers to it)."""
    config = model_dir / "adapter_config.json"
    if not config.is_file() or (model_dir / "config.json").is_file():
        return None
    base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path") or ""
    return base if Path(base).is_absolute() else None


def publish_model(
    model_dir: str | Path,
    publish_dir: str | Path,
    *,
    version: str | None = None,
    metrics: dict[str, Any] | None = None,
) -> PublishResult:
    """Publish ``model_dir`` as ``version`` into ``publish_dir`` and make it current.

    ``version`` defaults to the version in the model's ``unirg-model.json``. Publishing
    a version that already exists with the same weights just makes it current again;
    with other weights it is refused. ``metrics`` (and the source manifest's
    ``metrics``) are written into the published manifest.
    """
    source = Path(model_dir)
    target_root = Path(publish_dir)
    if not (source / "config.json").is_file() and not (source / "adapter_config.json").is_file():
        raise PublishError(f"{source} is not a model directory (no config.json or adapter_config.json)")
    source_manifest: dict[str, Any] = {}
    if (source / MANIFEST).is_file():
        source_manifest = json.loads((source / MANIFEST).read_text(encoding="utf-8"))
    version = version or source_manifest.get("version")
    if not version:
        raise PublishError(f"{source} has no {MANIFEST} version; pass --version V")
    if not _VERSION.match(version):
        raise PublishError(
            f"version {version!r} must be 1-64 letters, digits, '.', '_', '+' or '-', starting with a letter or digit"
        )
    versions = target_root / VERSIONS
    versions.mkdir(parents=True, exist_ok=True)
    with _publish_lock(target_root):  # one publish at a time per directory
        return _publish_locked(source, target_root, versions, version, source_manifest, metrics)


@contextlib.contextmanager
def _publish_lock(root: Path) -> Iterator[None]:
    with (root / ".publish.lock").open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _publish_locked(
    source: Path,
    target_root: Path,
    versions: Path,
    version: str,
    source_manifest: dict[str, Any],
    metrics: dict[str, Any] | None,
) -> PublishResult:
    for stale in target_root.glob(".staging-*"):  # what an interrupted publish left
        shutil.rmtree(stale, ignore_errors=True)
    try:
        previous = read_current(target_root)
    except ValueError:  # a broken or outside-pointing current.json: this publish replaces it
        previous = None
    final = versions / version
    source_sha = model_weights_sha256(source)
    if source_manifest.get("weights_sha256") and source_manifest["weights_sha256"] != source_sha:
        raise PublishError(
            f"{source}/{MANIFEST} records weights_sha256 {source_manifest['weights_sha256']} but the weights "
            f"hash to {source_sha}: the directory changed after it was saved"
        )
    if final.exists():
        existing = json.loads((final / MANIFEST).read_text(encoding="utf-8"))
        if existing.get("weights_sha256") != source_sha:
            raise PublishError(
                f"version {version} is already published in {final} with other weights; choose another --version"
            )
        manifest = existing
    else:
        staging = Path(tempfile.mkdtemp(dir=target_root, prefix=f".staging-{version}-"))
        staging.rmdir()
        try:
            _copy_tree(source, staging)
            sha = model_weights_sha256(staging)
            if sha != source_sha:
                raise PublishError(f"the copy in {staging} hashes to {sha}, the source to {source_sha}")
            now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            manifest = {
                **source_manifest,
                "name": source_manifest.get("name") or source.resolve().name,
                "version": version,
                "weights_sha256": sha,
                "published": now,
                "published_from": str(source.resolve()),
            }
            if _adapter_base_outside(source):
                manifest["base_model"] = _adapter_base_outside(source)
            if metrics or source_manifest.get("metrics"):
                manifest["metrics"] = {**(source_manifest.get("metrics") or {}), **(metrics or {})}
            _write_json_atomic(staging / MANIFEST, manifest)
            os.rename(staging, final)  # the whole version appears at once
            _fsync_dir(versions)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    pointer = {
        "version": version,
        "path": f"{VERSIONS}/{version}",
        "weights_sha256": source_sha,
        "published": manifest.get("published"),
        "previous": previous.version if previous else None,
    }
    _write_json_atomic(target_root / CURRENT, pointer)
    return PublishResult(version, final, source_sha, previous.version if previous else None, manifest)


def list_versions(publish_dir: str | Path) -> list[Published]:
    """Every complete published version (staging directories excluded), oldest first."""
    root = Path(publish_dir) / VERSIONS
    found = []
    for directory in sorted(root.iterdir()) if root.is_dir() else []:
        manifest = directory / MANIFEST
        if directory.is_dir() and manifest.is_file():
            data = json.loads(manifest.read_text(encoding="utf-8"))
            found.append(Published(directory.name, directory, data.get("weights_sha256", ""), data.get("published")))
    return sorted(found, key=lambda p: (p.published or "", p.version))
