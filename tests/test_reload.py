"""Hot reload (ModelWatcher) and ``unirg-trainer publish`` with real tiny trained models."""

from __future__ import annotations

import json
import shutil
import threading

import pydicom
import pytest
from click.testing import CliRunner

from unirg.model import GenerationConfig
from unirg.model.model import MANIFEST
from unirg.model.reload import CURRENT, ModelWatcher, NoPublishedModel, model_weights_sha256, read_current
from unirg.plugin.pipeline import draft_study
from unirg.trainer import publish as publish_module
from unirg.trainer.publish import PublishError, publish_model
from unirg.trainer.train_cli import publish as publish_command
from conftest import train_tiny_sft


GEN = GenerationConfig(max_new_tokens=12)


pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.testbed(patients=2)]  # the shared `testbed` fixture (conftest.py)


@pytest.fixture(scope="module")
def trained(testbed, tmp_path_factory):
    """Two trained tiny models with different weights (different seeds)."""

    root, _ = testbed
    models = {}
    for seed in (0, 1):
        out = tmp_path_factory.mktemp("models") / f"seed{seed}"
        models[seed] = train_tiny_sft(root, out, max_steps=8, seed=seed)
    assert model_weights_sha256(models[0]) != model_weights_sha256(models[1])
    return models


@pytest.fixture
def study(testbed):
    root, records = testbed
    record = next(r for r in records if any(i["view"] in ("PA", "AP") for i in r["images"]))
    return [pydicom.dcmread(root / image["path"]) for image in record["images"]]


def _sr_version(sr) -> str:
    [version] = [str(item.SoftwareVersions) for item in sr.ContributingEquipmentSequence
                 if str(item.ContributionDescription).startswith("AI model")]
    return version


def test_job_keeps_its_model_while_a_new_version_is_swapped_in(trained, study, tmp_path):
    publish_dir = tmp_path / "published"
    publish_model(trained[0], publish_dir, version="v1")
    watcher = ModelWatcher(publish_dir)
    assert watcher.maybe_reload() and watcher.version == "v1"
    assert not watcher.maybe_reload()  # nothing new

    started, proceed, results = threading.Event(), threading.Event(), {}

    def job() -> None:
        with watcher.job() as model:
            started.set()
            assert proceed.wait(60)
            results["v1"] = draft_study(model, study, (), GEN)

    thread = threading.Thread(target=job)
    thread.start()
    assert started.wait(60) and watcher.active_jobs == 1
    publish_model(trained[1], publish_dir, version="v2")  # published while the job runs ...
    assert watcher.maybe_reload() and watcher.version == "v2"  # ... and swapped in (another thread)
    proceed.set()
    thread.join(60)
    draft, sr = results["v1"]
    assert draft.model_info.version == "v1" and _sr_version(sr) == "v1"  # the job finished on v1
    assert draft.model_info.weights_sha256 == model_weights_sha256(trained[0])

    with watcher.job() as model:  # the next job gets v2
        draft2, sr2 = draft_study(model, study, (), GEN)
    assert draft2.model_info.version == "v2" and _sr_version(sr2) == "v2"
    assert draft2.model_info.weights_sha256 == model_weights_sha256(trained[1])
    assert sr2.SOPInstanceUID != sr.SOPInstanceUID and sr2.StudyInstanceUID == sr.StudyInstanceUID


def test_fallback_then_publish_and_a_bad_version_is_refused(trained, tmp_path, caplog):
    publish_dir = tmp_path / "published"
    with pytest.raises(NoPublishedModel, match="unirg-trainer publish"):
        ModelWatcher(publish_dir).current()
    watcher = ModelWatcher(publish_dir, fallback=trained[0])
    fallback = watcher.current()
    assert watcher.version is None and fallback.info.weights_sha256 == model_weights_sha256(trained[0])
    publish_model(trained[1], publish_dir, version="v2")
    assert watcher.maybe_reload() and watcher.current() is not fallback and watcher.version == "v2"
    # a pointer to a copy whose weights do not match its hash: refused, v2 stays
    bad = publish_dir / "versions" / "v3"
    shutil.copytree(publish_dir / "versions" / "v2", bad)
    shutil.copy2(trained[0] / "model.safetensors", bad / "model.safetensors")
    pointer = json.loads((publish_dir / CURRENT).read_text())
    (publish_dir / CURRENT).write_text(json.dumps({**pointer, "version": "v3", "path": "versions/v3"}))
    assert not watcher.maybe_reload()
    assert watcher.version == "v2" and "not loaded" in caplog.text
    assert not watcher.maybe_reload()  # not retried until the pointer changes


def test_interrupted_publish_is_never_visible(trained, tmp_path, monkeypatch):
    publish_dir = tmp_path / "published"
    publish_model(trained[0], publish_dir, version="v1")
    copied = []
    real_copy = shutil.copyfile

    def crash_after_two_files(source, target, *args, **kwargs):  # a publish killed mid-copy
        if len(copied) == 2:
            raise OSError("disk full")
        copied.append(source)
        return real_copy(source, target, *args, **kwargs)

    monkeypatch.setattr(publish_module.shutil, "copyfile", crash_after_two_files)
    with pytest.raises(OSError, match="disk full"):
        publish_model(trained[1], publish_dir, version="v2")
    assert read_current(publish_dir).version == "v1"
    assert sorted(p.name for p in (publish_dir / "versions").iterdir()) == ["v1"]
    monkeypatch.undo()

    def crash_on_rename(*args):  # killed between the copy and the rename
        raise OSError("killed")

    monkeypatch.setattr(publish_module.os, "rename", crash_on_rename)
    with pytest.raises(OSError, match="killed"):
        publish_model(trained[1], publish_dir, version="v2")
    monkeypatch.undo()
    assert read_current(publish_dir).version == "v1"
    assert not (publish_dir / "versions" / "v2").exists()
    result = publish_model(trained[1], publish_dir, version="v2")
    assert result.previous == "v1" and read_current(publish_dir).version == "v2"
    assert not list(publish_dir.glob(".staging-*")) and not list(publish_dir.glob(".*tmp*"))


def test_readers_only_ever_see_complete_versions(trained, tmp_path):
    publish_dir = tmp_path / "published"
    publish_model(trained[0], publish_dir, version="r0")
    stop, seen, problems = threading.Event(), set(), []

    def reader() -> None:
        while not stop.is_set():
            current = read_current(publish_dir)
            manifest = json.loads((current.path / MANIFEST).read_text())
            if manifest["version"] != current.version or model_weights_sha256(current.path) != current.weights_sha256:
                problems.append(current.version)
            seen.add(current.version)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for index in range(1, 7):
            publish_model(trained[index % 2], publish_dir, version=f"r{index}")
    finally:
        stop.set()
        thread.join(60)
    assert not problems and len(seen) >= 2


def test_publish_command_and_manifest(trained, tmp_path):
    publish_dir = tmp_path / "published"
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"chexpert14_micro_f1": 0.5}))
    result = CliRunner().invoke(publish_command, ["--model", str(trained[0]), "--to", str(publish_dir),
                                                  "--version", "2026.1", "--metrics", str(metrics)])
    assert result.exit_code == 0, result.output
    assert "published 2026.1" in result.output and "was none" in result.output
    manifest = json.loads((publish_dir / "versions" / "2026.1" / MANIFEST).read_text())
    assert manifest["version"] == "2026.1" and manifest["metrics"]["chexpert14_micro_f1"] == 0.5
    assert manifest["weights_sha256"] == model_weights_sha256(publish_dir / "versions" / "2026.1")
    assert manifest["training"]["trainer"] == "trl.SFTTrainer"  # the source manifest is kept
    assert not (publish_dir / "versions" / "2026.1" / "checkpoints").exists()
    weights = publish_dir / "versions" / "2026.1" / "model.safetensors"
    assert weights.stat().st_mode & 0o044 == 0o044  # readable by a worker running as another user
    default = CliRunner().invoke(publish_command, ["--model", str(trained[1]), "--to", str(publish_dir)])
    source_version = json.loads((trained[1] / MANIFEST).read_text())["version"]
    assert default.exit_code == 0 and read_current(publish_dir).version == source_version
    again = CliRunner().invoke(publish_command, ["--model", str(trained[0]), "--to", str(publish_dir),
                                                 "--version", "2026.1"])  # same weights: made current again
    assert again.exit_code == 0 and read_current(publish_dir).version == "2026.1"
    clash = CliRunner().invoke(publish_command, ["--model", str(trained[1]), "--to", str(publish_dir),
                                                 "--version", "2026.1"])
    assert clash.exit_code == 1 and "other weights" in clash.output
    with pytest.raises(PublishError, match="letters, digits"):
        publish_model(trained[0], publish_dir, version="../evil")


def test_a_pointer_outside_the_publish_dir_is_refused(trained, tmp_path, caplog):
    """``../``, an absolute path or a symlink out of versions/: refused, the old model keeps serving."""
    publish_dir = tmp_path / "published"
    publish_model(trained[0], publish_dir, version="v1")
    watcher = ModelWatcher(publish_dir)
    assert watcher.maybe_reload() and watcher.version == "v1"
    outside = tmp_path / "elsewhere" / "v9"  # a complete, self-consistent model, but not published here
    shutil.copytree(publish_dir / "versions" / "v1", outside)
    (publish_dir / "versions" / "v8").symlink_to(outside, target_is_directory=True)
    pointer = json.loads((publish_dir / CURRENT).read_text())
    for version, path in (("v9", "versions/../../elsewhere/v9"), ("v10", str(outside)), ("v8", "versions/v8")):
        (publish_dir / CURRENT).write_text(json.dumps({**pointer, "version": version, "path": path}))
        with pytest.raises(ValueError, match="not a folder directly in"):
            read_current(publish_dir)
        assert not watcher.maybe_reload() and watcher.version == "v1"
    assert "cannot read the publish pointer" in caplog.text
    publish_model(trained[1], publish_dir, version="v2")  # re-publishing repairs the pointer
    assert watcher.maybe_reload() and watcher.version == "v2"


def test_tampered_version_without_a_pointer_hash_is_refused(trained, study, tmp_path, caplog):
    """The manifest's hash is checked against the files even when the pointer names none."""
    publish_dir = tmp_path / "published"
    publish_model(trained[0], publish_dir, version="v1")
    watcher = ModelWatcher(publish_dir)
    assert watcher.maybe_reload()
    bad = publish_dir / "versions" / "v2"
    shutil.copytree(publish_dir / "versions" / "v1", bad)
    manifest = json.loads((bad / MANIFEST).read_text())
    (bad / MANIFEST).write_text(json.dumps({**manifest, "version": "v2"}))
    shutil.copyfile(trained[1] / "model.safetensors", bad / "model.safetensors")  # other weights, old hash
    (publish_dir / CURRENT).write_text(json.dumps({"version": "v2", "path": "versions/v2"}))
    assert not watcher.maybe_reload() and watcher.version == "v1"
    assert "WeightsMismatch" in caplog.text and "hash to" in caplog.text
    with watcher.job() as model:
        draft, _sr = draft_study(model, study, (), GEN)
    assert draft.model_info.weights_sha256 == model_weights_sha256(trained[0])
    fresh = ModelWatcher(publish_dir, fallback=trained[0])  # refused at start: the fallback serves
    assert fresh.current().info.weights_sha256 == model_weights_sha256(trained[0]) and fresh.version is None


def test_hot_reload_passes_the_remote_code_opt_in(tmp_path):
    from unirg.model.families import RemoteCodeNotTrusted
    from unirg.trainer.tiny_models import build_tiny

    maira = build_tiny("maira2", tmp_path / "maira2_watch")
    with pytest.raises(RemoteCodeNotTrusted, match="--trust-remote-code"):
        ModelWatcher(tmp_path / "published", fallback=maira).current()
    assert ModelWatcher(tmp_path / "published", fallback=maira, trust_remote_code=True).current().adapter.name == "maira2"
