"""Model trust from the operator's side: ``unirg draft`` refuses remote code without
``--trust-remote-code`` and tampered weights, and ``[model] trust_remote_code`` reaches hot reload."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from unirg.plugin.config import apply_overrides, load_config
from unirg.plugin.draft_cli import draft
from unirg.model.model import MANIFEST
from unirg.trainer.tiny_models import build_tiny
from unirg.plugin.pipeline import model_source
from unirg.trainer import synth

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("testbed")
    records = synth.generate_testbed(out, patients=1, seed=0, size=128)
    record = next(r for r in records if any(i["view"] in ("PA", "AP") for i in r["images"]))
    return (out / record["report_sr"]).parent


def test_draft_refuses_remote_code_without_the_flag(study_dir, tmp_path):
    maira = build_tiny("maira2", tmp_path / "maira2_cli")
    marker = tmp_path / "remote-code-ran"
    with (maira / "modeling_maira2.py").open("a") as handle:
        handle.write(f"\nimport pathlib; pathlib.Path({str(marker)!r}).write_text('ran')\n")
    result = CliRunner().invoke(draft, [str(study_dir), "--model", str(maira), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "--trust-remote-code" in result.output, result.output
    assert not marker.exists() and not (tmp_path / "out").exists()
    env = {"UNIRG_MODEL_TRUST_REMOTE_CODE": "1"}  # the flag's variable: opted in, the code runs
    opted = CliRunner().invoke(draft, [str(study_dir), "--model", str(maira), "--out", str(tmp_path / "out")], env=env)
    assert "--trust-remote-code" not in opted.output and marker.exists(), opted.output


def test_draft_refuses_weights_that_do_not_match_their_manifest(study_dir, tmp_path):
    model = build_tiny("qwen3_vl", tmp_path / "qwen", hidden_size=64, image_size=64)
    manifest = {"name": "m", "version": "1", "weights_sha256": "ab" * 32}  # not these weights
    (model / MANIFEST).write_text(json.dumps(manifest))
    result = CliRunner().invoke(draft, [str(study_dir), "--model", str(model), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "records weights_sha256" in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_config_opt_in_reaches_the_model_watcher(tmp_path):
    assert load_config(None, env={}).model.trust_remote_code is False
    config = load_config(None, env={"UNIRG_MODEL_TRUST_REMOTE_CODE": "true"})
    assert config.model.trust_remote_code is True
    assert apply_overrides(config, {"model.trust_remote_code": False}).model.trust_remote_code is False
    maira = build_tiny("maira2", tmp_path / "maira2_cfg")
    shutil.rmtree(tmp_path / "maira2_cfg" / "__pycache__", ignore_errors=True)
    assert model_source(maira, trust_remote_code=True).current().adapter.name == "maira2"
    from unirg.model.families import RemoteCodeNotTrusted

    with pytest.raises(RemoteCodeNotTrusted):
        model_source(maira).current()


@pytest.mark.parametrize("command", [["draft"], ["listen"], ["worker"], ["orthanc"], ["dicomweb"]])
def test_commands_that_load_a_model_take_the_opt_in_flag(command):
    from unirg.plugin.cli import main

    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0 and "--trust-remote-code" in result.output
