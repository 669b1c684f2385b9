"""unirg installed from a wheel (not the editable checkout) works from a folder outside the checkout.

The wheel is built from a copy of the sources and installed into a fresh venv; that venv sees the project
venv's third-party packages through a plain ``.pth`` line placed after its own site-packages (plain path
lines run no other ``.pth`` file, so the editable install's finder stays out).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from pydicom import dcmread

from conftest import REPO_ROOT, skip_or_fail
from unirg.plugin.home import HOME_ENV, unirg_home

SOURCES = ("setup.cfg", "setup.py", "pyproject.toml", "README.md", "plugin", "model", "sr_writer", "trainer",
           "orthanc")
DEMO_MODEL = REPO_ROOT / "var" / "models" / "unirg-demo"


def test_unirg_home_is_the_environment_else_the_checkouts_var_else_cwd_var(tmp_path, monkeypatch):
    monkeypatch.delenv(HOME_ENV, raising=False)
    monkeypatch.chdir(REPO_ROOT / "tests")
    assert unirg_home() == REPO_ROOT.resolve() / "var"  # anywhere inside the checkout
    monkeypatch.chdir(tmp_path)
    assert unirg_home() == tmp_path.resolve() / "var"
    monkeypatch.setenv(HOME_ENV, str(tmp_path / "home"))
    assert unirg_home() == tmp_path.resolve() / "home"


def _env() -> dict[str, str]:
    """This environment less anything that would point the installed package back at the checkout."""
    drop = {"UNIRG_HOME", "UNIRG_MODEL", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def _run(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with unirg installed from its wheel; returns the venv folder."""
    work = tmp_path_factory.mktemp("install")
    src = work / "src"
    for name in SOURCES:
        if (REPO_ROOT / name).is_dir():
            shutil.copytree(REPO_ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(REPO_ROOT / name, src / name)
    wheels = work / "wheels"
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                  str(src), "-w", str(wheels)], cwd=work)
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = wheels.glob("unirg-*.whl")

    venv = work / "venv"
    made = _run([sys.executable, "-m", "venv", str(venv)], cwd=work)
    assert made.returncode == 0, made.stdout + made.stderr
    site = Path(_run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                     cwd=work).stdout.strip())
    # After the venv's own site-packages; a plain path line, so the project's .pth files do not run.
    (site / "zz_unirg_test_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    pip = _run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "--no-index", str(wheel)], cwd=work)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    return venv


@pytest.mark.slow
def test_the_wheel_ships_the_orthanc_files_and_imports_from_the_venv(installed, tmp_path):
    code = (
        "import unirg.plugin, unirg.model, unirg.sr_writer, unirg.trainer\n"
        "from unirg.plugin.home import orthanc_file\n"
        "from unirg.plugin.viewer import build_app_config\n"
        "print(unirg.plugin.__file__)\n"
        "print(orthanc_file('unirg_plugin.py'))\n"
        "print(orthanc_file('orthanc.json.template'))\n"
        "print(len(build_app_config()))\n"
    )
    result = _run([str(installed / "bin" / "python"), "-c", code], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    package, script, template, app_config = result.stdout.split()
    for path in (package, script, template):
        assert Path(path).is_relative_to(installed), f"{path} is not from the installed wheel"
        assert Path(path).is_file()
    assert "import orthanc" in Path(script).read_text()  # the entry script Orthanc's interpreter runs
    assert "@PYTHON_SCRIPT@" in Path(template).read_text()
    assert int(app_config) > 0  # the viewer's app-config is built from the installed package


@pytest.mark.slow
def test_the_wheel_ships_every_package_of_the_checkout(installed, tmp_path):
    """A new subpackage (plugin/feedback, plugin/monitor, model/labeler ...) is found by setup.py, not listed."""
    names = sorted(
        "unirg." + ".".join(init.parent.relative_to(REPO_ROOT).parts)
        for top in ("plugin", "model", "sr_writer", "trainer", "orthanc")
        for init in (REPO_ROOT / top).rglob("__init__.py") if "__pycache__" not in init.parts
    )
    assert {"unirg.plugin.feedback", "unirg.plugin.monitor", "unirg.model.labeler"} <= set(names)
    code = ("import importlib.util, sys\n"
            "for name in sys.argv[1:]:\n"
            "    spec = importlib.util.find_spec(name)\n"
            "    print(name, spec.origin if spec else None)\n")
    result = _run([str(installed / "bin" / "python"), "-c", code, *names], cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    found = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    missing = [n for n in names if found.get(n) in (None, "None") or not Path(found[n]).is_relative_to(installed)]
    assert not missing, f"not in the installed wheel: {missing}"


@pytest.mark.slow
def test_installed_unirg_drafts_a_study_outside_the_checkout(installed, testbed, tmp_path, validate_sr):
    if not (DEMO_MODEL / "config.json").is_file():
        skip_or_fail(f"demo model missing at {DEMO_MODEL}: run scripts/build-demo-model.sh")
    root, records = testbed
    record = next(r for r in records if any(i["view"] in ("PA", "AP") for i in r["images"]))
    study = (root / record["report_sr"]).parent
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    unirg = str(installed / "bin" / "unirg")

    helped = _run([unirg, "--help"], cwd=outside)
    assert helped.returncode == 0, helped.stdout + helped.stderr
    assert "draft" in helped.stdout

    out = tmp_path / "out"
    drafted = _run([unirg, "draft", str(study), "--model", str(DEMO_MODEL), "--out", str(out),
                    "--max-new-tokens", "32", "--device", "cpu"], cwd=outside)
    assert drafted.returncode == 0, drafted.stdout + drafted.stderr
    assert "Findings:" in drafted.stdout
    [sr_line] = [line for line in drafted.stdout.splitlines() if line.startswith("SR: ")]
    sr_path = Path(sr_line[4:])
    assert sr_path.parent == out and sr_path.is_file()
    validate_sr(sr_path)
    assert dcmread(sr_path).StudyInstanceUID == record["study_uid"]
