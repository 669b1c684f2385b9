"""Hot reload: serve the model most recently published into a directory.

Layout of a publish directory (written by ``unirg-trainer publish``,
:mod:`unirg.trainer.publish`)::

    PUBLISH_DIR/
      current.json                 {"version", "path", "weights_sha256", "published"}
      versions/<version>/          a complete model directory, unirg-model.json included

``current.json`` is replaced by an atomic rename only once ``versions/<version>`` is
complete, so a reader sees the old version or the new one, never a half-written one.

What is served from a publish directory: only a version folder that resolves (symlinks
followed) to a direct child of ``PUBLISH_DIR/versions``, with a manifest whose
``weights_sha256`` equals the pointer's and the hash of its weight files, computed
once per load. Anything else is refused, logged, and the old model keeps serving.
Remote code runs only with the operator's opt-in (``trust_remote_code=True``), passed
to every load, the fallback's and each new version's.

:class:`ModelWatcher` holds the loaded model. A worker asks for it once per job and keeps
that reference for the whole job; between jobs it calls :meth:`ModelWatcher.maybe_reload`,
which loads a newly published version *completely* (and checks its weights hash) before
swapping the reference. A job that started on version 1 therefore finishes on version 1,
even when version 2 is published (or swapped in by another thread) meanwhile; the next
job gets version 2. The SR names the version through ``Draft.model_info``.

>>> watcher = ModelWatcher("/srv/unirg/models", fallback="var/models/unirg-demo")  # doctest: +SKIP
>>> while True:                                                                  # doctest: +SKIP
...     watcher.maybe_reload()
...     with watcher.job() as model:
...         draft, sr = draft_study(model, current, priors)
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CURRENT",
    "WEIGHT_SUFFIXES",
    "directories_weights_sha256",
    "VERSIONS",
    "ModelWatcher",
    "NoPublishedModel",
    "Published",
    "model_weights_sha256",
    "read_current",
]

log = logging.getLogger(__name__)

CURRENT = "current.json"
"""The pointer file in a publish directory."""
VERSIONS = "versions"
"""The folder of published versions."""
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


class NoPublishedModel(FileNotFoundError):
    """Nothing is published in the directory and no fallback model was given."""


@dataclass(frozen=True)
class Published:
    """What ``current.json`` points to."""

    version: str
    path: Path
    weights_sha256: str
    published: str | None = None


def read_current(publish_dir: str | Path) -> Published | None:
    """The published version ``current.json`` points to, or ``None`` when there is none.

    Raises ``ValueError`` for a pointer that is not valid (it is never half-written:
    publish replaces it with an atomic rename) or names a folder that is not a direct child
    of ``PUBLISH_DIR/versions`` once resolved (``../``, an absolute path, a symlink out).
    """
    publish_dir = Path(publish_dir)
    pointer = publish_dir / CURRENT
    try:
        text = pointer.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
        path = Path(data["path"])
        published = Published(
            version=str(data["version"]),
            path=path if path.is_absolute() else publish_dir / path,
            weights_sha256=str(data.get("weights_sha256") or ""),
            published=data.get("published"),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{pointer} is not a valid publish pointer: {exc}") from None
    versions = (publish_dir / VERSIONS).resolve()
    if published.path.resolve().parent != versions:
        raise ValueError(
            f"{pointer} points to {data['path']!r}, which resolves to {published.path.resolve()}, not a folder "
            f"directly in {versions}: only versions published there are served; re-publish with "
            "`unirg-trainer publish`"
        )
    return published


def _default_loader(path: Path, **kwargs: Any) -> Any:
    from unirg.model.model import load_model

    return load_model(path, **kwargs)


class ModelWatcher:
    """The model of a publish directory, reloaded between jobs when a new version appears.

    Parameters
    ----------
    publish_dir : path
        Directory written by ``unirg-trainer publish``.
    fallback : path, optional
        Model to serve while nothing is published (e.g. the demo model).
    loader : callable, optional
        ``loader(path, **load_kwargs) -> model``; default :func:`load_model`.
    trust_remote_code : bool
        The operator's opt-in to remote code (MAIRA-2), passed to every load.
    load_kwargs
        Passed to the loader (``device``, ``dtype``, ...).
    """

    def __init__(
        self,
        publish_dir: str | Path,
        *,
        fallback: str | Path | None = None,
        loader: Callable[..., Any] | None = None,
        trust_remote_code: bool = False,
        **load_kwargs: Any,
    ) -> None:
        self.publish_dir = Path(publish_dir)
        self.fallback = Path(fallback) if fallback is not None else None
        self.loader = loader or _default_loader
        self.trust_remote_code = bool(trust_remote_code)
        self.load_kwargs = dict(load_kwargs)
        if self.trust_remote_code or self.loader is _default_loader:
            self.load_kwargs["trust_remote_code"] = self.trust_remote_code
        self._model: Any = None
        self._version: str | None = None  # published version loaded (None: fallback or nothing)
        self._failed: str | None = None  # a version that failed to load; not retried until the pointer changes
        self._swap = threading.Lock()  # guards _model / _version
        self._reload = threading.Lock()  # one load at a time
        self._active = 0
        self._active_lock = threading.Lock()

    # -- state ----------------------------------------------------------------------------
    @property
    def version(self) -> str | None:
        """The published version being served (``None`` for the fallback or before loading)."""
        return self._version

    @property
    def active_jobs(self) -> int:
        """Jobs inside :meth:`job` right now."""
        return self._active

    def current(self) -> Any:
        """The model to use for the next job (loads one on first use).

        Keep the returned reference for the whole job: a reload swaps the watcher's
        reference, never the model a job already holds.
        """
        model = self._model
        if model is None:
            self.maybe_reload()
            model = self._model
        if model is None:
            raise NoPublishedModel(
                f"no model published in {self.publish_dir} ({CURRENT} missing) and no fallback; "
                "publish one with `unirg-trainer publish --model DIR --to "
                f"{self.publish_dir}`"
            )
        return model

    @contextmanager
    def job(self) -> Iterator[Any]:
        """``with watcher.job() as model:`` the model for one job, held until the block ends."""
        model = self.current()
        with self._active_lock:
            self._active += 1
        try:
            yield model
        finally:
            with self._active_lock:
                self._active -= 1

    # -- reload ---------------------------------------------------------------------------
    def maybe_reload(self) -> bool:
        """Load and swap in the published version if it changed; ``True`` when swapped.

        Call it between jobs. The new model is loaded completely before the swap; on any
        error the current model stays and the error is logged (that version is not
        retried until the pointer changes again).
        """
        with self._reload:
            try:
                published = read_current(self.publish_dir)
            except (ValueError, OSError) as exc:
                log.error("cannot read the publish pointer in %s: %s", self.publish_dir, exc)
                published = None
                if self._model is not None:
                    return False
            if published is None:
                if self._model is None and self.fallback is not None:
                    log.info("nothing published in %s; serving the fallback %s", self.publish_dir, self.fallback)
                    model = self.loader(self.fallback, **self.load_kwargs)
                    with self._swap:
                        self._model, self._version = model, None
                    return True
                return False
            if published.version == self._version or published.version == self._failed:
                return False
            try:
                model = self._load(published)
            except Exception as exc:  # keep serving the model we have
                self._failed = published.version
                log.error("published version %s not loaded (%s: %s); keeping %s",
                             published.version, type(exc).__name__, exc, self._version or "the current model")
                if self._model is None and self.fallback is None:
                    raise
                if self._model is None:  # nothing served yet: the fallback, not nothing
                    model = self.loader(self.fallback, **self.load_kwargs)
                    with self._swap:
                        self._model, self._version = model, None
                return False
            with self._swap:
                old = self._version
                self._model, self._version, self._failed = model, published.version, None
            log.info("model version %s swapped in (was %s)", published.version, old or "none/fallback")
            return True

    def _load(self, published: Published) -> Any:
        from unirg.model.model import MANIFEST, WeightsMismatch

        if not published.path.is_dir():
            raise FileNotFoundError(f"{published.path} (named by {CURRENT}) is not a directory")
        manifest_file = published.path / MANIFEST
        try:
            manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
            expected = str(manifest["weights_sha256"]).lower()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise WeightsMismatch(
                f"{manifest_file} is missing or has no weights_sha256 ({type(exc).__name__}: {exc}); "
                "only versions written by `unirg-trainer publish` are served"
            ) from None
        if published.weights_sha256 and published.weights_sha256.lower() != expected:
            raise WeightsMismatch(
                f"{manifest_file} has weights_sha256 {expected}, the pointer {published.weights_sha256}"
            )
        if self.loader is _default_loader:  # load_model hashes the files once and checks them
            model = self.loader(published.path, expected_sha256=expected, **self.load_kwargs)
        else:
            actual = model_weights_sha256(published.path)
            if actual != expected:
                raise WeightsMismatch(f"weights of {published.path} hash to {actual}, not the published {expected}")
            model = self.loader(published.path, **self.load_kwargs)
        info = getattr(model, "info", None)
        loaded_sha = getattr(info, "weights_sha256", expected)
        if loaded_sha != expected:
            raise WeightsMismatch(f"the model loaded from {published.path} reports weights {loaded_sha}, "
                                  f"the manifest {expected}")
        if info is not None and getattr(info, "version", published.version) != published.version:
            log.warning("model in %s reports version %s, the pointer %s",
                           published.path, info.version, published.version)
        return model


def _weight_files(directory: Path) -> list[Path]:
    return sorted(
        path
        for path in directory.iterdir()
        if path.is_file() and path.suffix in WEIGHT_SUFFIXES and "optimizer" not in path.name
    )


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def directories_weights_sha256(directories: list[Path], memo: dict[Path, str] | None = None) -> str:
    """SHA-256 of the top-level weight files of ``directories`` (one file: its own hash;
    several: the hash of the ``sha256sum``-style listing ``"<hex>  <index>/<name>\\n"``).
    ``memo`` (per-file hashes) lets one load hash each file once."""
    memo = {} if memo is None else memo

    def sha(path: Path) -> str:
        if path not in memo:
            memo[path] = _file_sha256(path)
        return memo[path]

    files: list[tuple[str, Path]] = []
    for index, directory in enumerate(directories):
        files += [(f"{index}/{path.name}", path) for path in _weight_files(directory)]
    if not files:
        raise FileNotFoundError(f"no weight files ({', '.join(WEIGHT_SUFFIXES)}) in {', '.join(map(str, directories))}")
    if len(files) == 1:
        return sha(files[0][1])
    listing = "".join(f"{sha(path)}  {name}\n" for name, path in files)
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()


def model_weights_sha256(model_dir: str | Path) -> str:
    """SHA-256 of a saved model's weights: :func:`directories_weights_sha256`, the hash
    ``load_model`` computes and the SR carries (top-level weight files only, so
    ``checkpoints/`` and a kept ``base/`` are not counted). A LoRA adapter directory counts
    its base model first, as ``load_model`` does.
    """
    model_dir = Path(model_dir)
    directories = [model_dir]
    adapter_config = model_dir / "adapter_config.json"
    if adapter_config.is_file() and not (model_dir / "config.json").is_file():
        base = json.loads(adapter_config.read_text(encoding="utf-8")).get("base_model_name_or_path") or ""
        base_path = Path(base) if Path(base).is_absolute() else model_dir / base
        directories = [base_path, model_dir]
    return directories_weights_sha256(directories)
