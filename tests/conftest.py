"""Shared test fixtures: paths and the independent SR validators."""

import subprocess
from pathlib import Path

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


@pytest.fixture
def validate_sr():
    """``validate_sr(path, ...)`` asserts dciodvfy, dsrdump and PixelMed all pass clean."""
    return run_validate_sr
