"""Shared test fixtures: paths, the independent SR validators, the synthetic testbed, and Orthanc."""

import io
import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import pytest
import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
VALIDATE_SR = REPO_ROOT.parent / "shared" / "tools" / "validate-sr"


def run_validate_sr(*paths: Path) -> str:
    """Run ../shared/tools/validate-sr; fail the test on any error or warning."""
    assert VALIDATE_SR.exists(), f"validator not found at {VALIDATE_SR}"
    proc = subprocess.run(
        [str(VALIDATE_SR), *map(str, paths)], capture_output=True, text=True, timeout=600
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"validate-sr reported problems:\n{output}"
    return output


def skip_or_fail(reason: str) -> NoReturn:
    """Something the set-up provides (PostgreSQL, a package from requirements) is missing: skip on a
    developer machine, fail with ``CI=true``, where scripts/bootstrap.sh provides it, so missing is a bug."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true, where scripts/bootstrap.sh provides it, so this fails instead of skipping")
    pytest.skip(reason)


def require_postgres() -> None:
    """Skip (locally) or fail (``CI=true``) unless the test PostgreSQL server answers."""
    from dicom_peers import PG_ADMIN, postgres_available

    if not postgres_available():
        where = PG_ADMIN.rsplit("@", 1)[-1]  # no credentials in the message
        skip_or_fail(f"PostgreSQL not reachable at {where} (start it, or point UNIRG_TEST_PG at one)")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> Iterator[str]:
    """A fresh queue database URL: SQLite in ``tmp_path``, then a PostgreSQL database of its own."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'queue.sqlite3'}"
        return
    from dicom_peers import postgres_database

    require_postgres()
    with postgres_database() as url:
        yield url


class Testbed(NamedTuple):
    """A synthetic testbed (``unirg.trainer.synth.generate_testbed``): its folder and manifest records."""

    root: Path
    records: list[dict]


TESTBED_DEFAULTS = dict(patients=3, seed=0, size=128)


@pytest.fixture(scope="session")
def testbed_cache(tmp_path_factory) -> dict[tuple, Testbed]:
    """Testbeds built this session, by their ``generate_testbed`` arguments (read-only: don't write into them)."""
    return {}


@pytest.fixture(scope="module")
def testbed(request, testbed_cache, tmp_path_factory) -> Testbed:
    """The synthetic testbed, ``(root, records)``: 3 patients, seed 0, 128 px unless the module sets
    ``pytestmark = pytest.mark.testbed(patients=..., seed=..., size=...)``. Built once per session for each
    set of arguments and shared by the modules that ask for the same one, so treat it as read-only."""
    from unirg.trainer.synth import generate_testbed

    marker = request.node.get_closest_marker("testbed")
    settings = {**TESTBED_DEFAULTS, **(marker.kwargs if marker else {})}
    key = tuple(sorted(settings.items()))
    if key not in testbed_cache:
        root = tmp_path_factory.mktemp("testbed")
        testbed_cache[key] = Testbed(root, generate_testbed(root, **settings))
    return testbed_cache[key]


@pytest.fixture
def validate_sr():
    """``validate_sr(path, ...)`` asserts dciodvfy, dsrdump and PixelMed all pass clean."""
    return run_validate_sr


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads; on shared CPUs two threads are far slower.

    Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train_tiny_sft(data: Path, out: Path, **overrides) -> Path:
    """Train a tiny Qwen3-VL with ``unirg-trainer sft`` on the testbed ``data`` for a few steps."""
    from unirg.trainer.sft import load_config, train_sft

    settings = dict(
        init="tiny-qwen3-vl", institutions="all", tiny_image_size=64, tiny_hidden_size=64, tiny_layers=2,
        tiny_vision_hidden_size=32, batch_size=4, lr=5e-3, max_steps=20, eval_fraction=0, save_steps=0,
        threads=1,
    )
    settings.update(overrides)
    train_sft(load_config(None, data=str(data), out=str(out), **settings))
    return out


def tiny_greedy_rl_config(testbed, tmp_path: Path, **overrides):
    """A self-critical (greedy-baseline) RL config for a tiny Qwen3-VL built in ``tmp_path``: 4 studies of the
    testbed, 2 prompts x 4 rollouts per step, 12-token drafts."""
    from unirg.trainer.rl_config import load_rl_config
    from unirg.trainer.tiny_models import build_tiny_qwen3_vl

    tiny = build_tiny_qwen3_vl(tmp_path / "tiny", hidden_size=64, num_layers=2, vision_hidden_size=32, image_size=64)
    settings = dict(
        sft=str(tiny), data=str(testbed.root), output_dir=str(tmp_path / "out"), advantage_baseline="greedy",
        max_train_samples=4, num_generations=4, per_device_train_batch_size=8, max_completion_length=12,
        save_steps=10, logging_steps=1, gradient_checkpointing=False, image_size=64, lora_r=4, lora_alpha=8,
        lora_dropout=0.0, scaling_pairs=32, seed=0)
    settings.update(overrides)
    return load_rl_config(preset="unirg-step1", overrides=settings)


# -- Orthanc: one launcher (unirg.plugin.orthanc.server.OrthancServer on free loopback ports) ------------
ORTHANC_USER = "unirg-test"


def orthanc_available() -> bool:
    from unirg.plugin.orthanc.server import ORTHANC_BINARY

    return Path(ORTHANC_BINARY).exists()


def start_orthanc(folder: Path, *, attempts: int = 3, **config_kwargs: Any):
    """A started ``OrthancServer`` (Debian's Orthanc 1.10) with its files in ``folder`` and
    ``build_orthanc_config(**config_kwargs)`` on fresh free ports, retried on a port clash. Skips
    (fails with ``CI=true``) when Orthanc is not installed."""
    from dicom_peers import free_port
    from unirg.plugin.orthanc.server import ORTHANC_BINARY, OrthancServer, OrthancStartError, build_orthanc_config

    if not orthanc_available():
        skip_or_fail(f"Orthanc not installed at {ORTHANC_BINARY} (scripts/bootstrap.sh installs it)")
    last: Exception | None = None
    for attempt in range(attempts):
        work = folder / f"orthanc-{attempt}"
        config = build_orthanc_config(
            data_dir=work / "data", http_port=free_port(), dicom_port=free_port(), **config_kwargs
        )
        server = OrthancServer(config, work_dir=work)
        try:
            return server.start(timeout=60)
        except OrthancStartError as exc:  # most likely a port taken between free_port() and bind
            last = exc
    raise AssertionError(f"Orthanc did not start in {attempts} attempts: {last}")


class ReconnectingSession(requests.Session):
    """A ``requests.Session`` that, like unirg's ``OrthancClient``, sends a request once more on a
    fresh connection when Orthanc dropped the kept-alive one (Orthanc 1.10 closes idle keep-alive
    connections after 1 s, and a restart drops them all); only requests that are safe to repeat."""

    def __init__(self, auth: tuple[str, str] | None = None) -> None:
        super().__init__()
        self.auth = auth
        self.trust_env = False  # never go through a proxy to loopback

    def request(self, method, url, *args, **kw):
        from unirg.plugin.orthanc.source import OrthancClient

        try:
            return super().request(method, url, *args, **kw)
        except requests.ConnectionError as exc:
            path = requests.utils.urlparse(url).path
            if OrthancClient.retry_reason(exc, OrthancClient.retry_safe(method, path)) is None:
                raise
            self.close()
            return super().request(method, url, *args, **kw)


class Orthanc:
    """The test PACS: a plain Orthanc (no plugins, no authentication, any AE may query and store)
    started by :func:`start_orthanc`, with REST helpers. ``restart()`` brings the same PACS (same
    storage and ports) back after ``stop()``, for "PACS down" tests.

    ``modalities``: ``{name: (aet, host, port)}``, the DICOM peers it knows (C-MOVE destinations).
    """

    def __init__(self, workdir: Path, aet: str = "ORTHANC",
                 modalities: dict[str, tuple[str, str, int]] | None = None) -> None:
        self.workdir = Path(workdir)
        self.aet = aet
        self.modalities = dict(modalities or {})
        self.server = None
        self.session = ReconnectingSession()

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def dicom_port(self) -> int:
        return self.server.dicom_port

    @property
    def peer(self) -> str:
        """``AET@HOST:PORT`` for our config."""
        return f"{self.aet}@127.0.0.1:{self.dicom_port}"

    def start(self, timeout: float = 60) -> "Orthanc":
        if self.server is not None:
            self.server.start(timeout=timeout)
            return self
        peers = {name: {"AET": aet, "Host": host, "Port": port, "AllowEcho": True, "AllowFind": True,
                        "AllowGet": True, "AllowMove": True, "AllowStore": True}
                 for name, (aet, host, port) in self.modalities.items()}
        self.server = start_orthanc(
            self.workdir, aet=self.aet, name="unirg-test-pacs", stable_age=1, accept_unknown_scu=True,
            extra={"Plugins": [], "DicomModalities": peers, "DicomAlwaysAllowFind": True,
                   "DicomAlwaysAllowGet": True, "DicomAlwaysAllowMove": True, "DicomScuTimeout": 10,
                   "SaveJobs": False, "ConcurrentJobs": 2, "HttpThreadsCount": 8},
        )
        return self

    def stop(self, timeout: float = 60) -> None:
        if self.server is not None:
            self.server.stop(timeout=timeout)

    def restart(self) -> "Orthanc":
        self.stop()
        return self.start()

    # -- REST helpers -----------------------------------------------------------------------------
    def get(self, path: str) -> Any:
        r = self.session.get(f"{self.url}{path}", timeout=30)
        r.raise_for_status()
        return r.json()

    def post(self, path: str, body: Any) -> Any:
        data = body if isinstance(body, (bytes, bytearray)) else json.dumps(body)
        r = self.session.post(f"{self.url}{path}", data=data, timeout=60)
        r.raise_for_status()
        return r.json()

    def upload(self, *paths: Path) -> None:
        for p in paths:
            self.post("/instances", Path(p).read_bytes())

    def find_instances(self, **query: str) -> list[dict[str, Any]]:
        """``/tools/find`` at instance level; each answer has MainDicomTags and ParentSeries."""
        return self.post("/tools/find", {"Level": "Instance", "Query": query, "Expand": True})

    def sr_instances(self, study_uid: str) -> list[str]:
        """SOPInstanceUIDs of the SR instances Orthanc holds in ``study_uid``."""
        series = self.post("/tools/find", {"Level": "Series", "Expand": True,
                                           "Query": {"StudyInstanceUID": study_uid, "Modality": "SR"}})
        out = []
        for s in series:
            for inst in s["Instances"]:
                out.append(self.get(f"/instances/{inst}")["MainDicomTags"]["SOPInstanceUID"])
        return out

    def file(self, sop_uid: str) -> bytes:
        ids = self.post("/tools/lookup", sop_uid.encode())
        inst = [i for i in ids if i["Type"] == "Instance"][0]["ID"]
        r = self.session.get(f"{self.url}/instances/{inst}/file", timeout=30)
        r.raise_for_status()
        return r.content

    def instance_count(self) -> int:
        return int(self.get("/statistics")["CountInstances"])


@pytest.fixture
def orthanc_factory(tmp_path: Path) -> Iterator[Any]:
    """``orthanc_factory(modalities=..., aet=...)`` -> a started test PACS (:class:`Orthanc`); all
    stopped at teardown."""
    started: list[Orthanc] = []

    def make(**kw: Any) -> Orthanc:
        o = Orthanc(tmp_path / f"orthanc{len(started)}", **kw)
        started.append(o)
        return o.start()

    yield make
    for o in started:
        o.stop()


@pytest.fixture(scope="module")
def orthanc_server(tmp_path_factory):
    """One Orthanc (with DICOMweb) per test module, authentication on (user ``unirg-test``, random password)."""
    server = start_orthanc(
        tmp_path_factory.mktemp("orthanc"), users={ORTHANC_USER: secrets.token_urlsafe(12)}, stable_age=2
    )
    try:
        yield server
    finally:
        server.stop()


def upload(orthanc, ds) -> dict:
    """POST one pydicom dataset to an ``OrthancServer``'s ``/instances``; return Orthanc's answer."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    with orthanc.session() as s:
        r = s.post(orthanc.url + "/instances", data=buf.getvalue(),
                   headers={"Content-Type": "application/dicom"}, timeout=30)
    r.raise_for_status()
    return r.json()
