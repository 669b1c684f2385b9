"""Shared test fixtures: paths and the independent SR validators."""

import os
import subprocess
from pathlib import Path
from typing import NoReturn

import pytest

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
