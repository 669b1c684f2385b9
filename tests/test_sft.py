"""unirg-trainer sft on a tiny synthetic testbed: real tiny Qwen3-VL models, a few steps each."""

from __future__ import annotations

import json

import pydicom
import pytest
import torch
from click.testing import CliRunner

from unirg.model import GenerationConfig, StudyInput, load_model
from unirg.model.families import adapter_for
from unirg.model.model import MANIFEST
from unirg.model.reload import model_weights_sha256
from unirg.plugin.select import select_views
from unirg.trainer.sft import (
    StudyInputCache,
    evaluate_chexpert,
    load_config,
    most_common_report,
    patient_split,
    testbed_examples,
    train_sft,
)
from unirg.trainer.sft_config import SFTRunConfig


TINY = dict(
    init="tiny-qwen3-vl",
    tiny_image_size=64,
    tiny_hidden_size=64,
    tiny_layers=2,  # with one layer, Qwen3-VL's deepstack features (added after layer 0) reach no loss
    tiny_vision_hidden_size=32,
    batch_size=2,
    lr=3e-3,
    logging_steps=1,
    eval_fraction=0.0,
    threads=1,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


class _Snapshot:
    """Trainable parameters before and after training (a TrainerCallback)."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        outer = self

        class Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kwargs):
                outer.before = _state(model)

            def on_train_end(self, args, state, control, model=None, **kwargs):
                outer.after = _state(model)

        self.callback = Callback()
        self.before: dict = {}
        self.after: dict = {}


def _train(testbed, out, **overrides):
    snapshot = _Snapshot()
    config = load_config(None, data=str(testbed.root), out=str(out), **{**TINY, **overrides})
    return train_sft(config, callbacks=[snapshot.callback]), snapshot


def _assert_all_changed(snapshot: _Snapshot) -> None:
    assert snapshot.before and snapshot.before.keys() == snapshot.after.keys()
    unchanged = [name for name in snapshot.before if torch.equal(snapshot.before[name], snapshot.after[name])]
    assert not unchanged, f"{len(unchanged)} trainable parameters did not change: {unchanged[:5]}"


def test_full_finetune_learns_and_loads(testbed, tmp_path):
    result, snapshot = _train(testbed, tmp_path / "full", max_steps=8, lora=False)
    losses = result.losses
    assert len(losses) == 8 and all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    _assert_all_changed(snapshot)

    manifest = json.loads((tmp_path / "full" / MANIFEST).read_text())
    assert manifest["weights_sha256"] == model_weights_sha256(tmp_path / "full")
    assert manifest["version"] == "sft-" + manifest["weights_sha256"][:12]
    assert manifest["training"]["steps"] == 8 and manifest["training"]["trainer"] == "trl.SFTTrainer"
    assert manifest["training"]["institutions"] == ["A", "B"]

    model = load_model(tmp_path / "full")
    assert model.info.version == manifest["version"] and model.info.weights_sha256 == manifest["weights_sha256"]
    # the saved weights are the trained ones
    for name, tensor in model.model.state_dict().items():
        if name in snapshot.after:
            assert torch.allclose(tensor, snapshot.after[name]), name
    example = result.train_examples[0]
    [draft] = model.draft([StudyInputCache().study(example)], GenerationConfig(max_new_tokens=8))
    assert draft.model_info.version == manifest["version"]


def test_lora_trains_every_adapter_weight_and_loads(testbed, tmp_path):
    result, snapshot = _train(testbed, tmp_path / "lora", max_steps=6, lora=True, lora_r=4, lr=1e-2)
    assert all("lora_" in name for name in snapshot.before), "only LoRA weights should train"
    assert len(snapshot.before) >= 8
    _assert_all_changed(snapshot)
    out = tmp_path / "lora"
    assert (out / "adapter_config.json").is_file() and not (out / "config.json").is_file()
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "base"
    model = load_model(out)  # adapter dir -> its base in out/base, merged
    assert model.info.version == result.manifest["version"]
    assert model.processor.image_processor is not None  # the adapter's own processor files, with images
    assert result.manifest["training"]["lora"]["r"] == 4
    [draft] = model.draft([StudyInputCache().study(result.train_examples[0])], GenerationConfig(max_new_tokens=4))
    assert draft.model_info.weights_sha256 == result.manifest["weights_sha256"]


def test_freeze_vision_with_lora_trains_no_adapter_inside_the_tower(testbed, tmp_path):
    """``sft --base M --lora --freeze-vision`` (a LoRA fine-tune of a built model, the tower kept): the PEFT-wrapped
    model's tower is found and its adapters stay fixed; the language model's adapters train."""
    _result, snapshot = _train(testbed, tmp_path / "lora-frozen", max_steps=4, lora=True, lora_r=4, lr=1e-2,
                               freeze_vision=True)
    assert snapshot.before and not any(".visual." in name for name in snapshot.before), sorted(snapshot.before)[:5]
    assert any("language_model" in name and "lora_" in name for name in snapshot.before)
    _assert_all_changed(snapshot)


def test_resume_continues_from_the_newest_checkpoint(testbed, tmp_path):
    out = tmp_path / "resume"
    first, _ = _train(testbed, out, max_steps=3, save_steps=3, lora=False)
    assert (out / "checkpoints" / "checkpoint-3").is_dir()
    with pytest.raises(FileExistsError, match="--resume"):
        _train(testbed, out, max_steps=5, save_steps=3, lora=False)
    second, _ = _train(testbed, out, max_steps=5, save_steps=3, lora=False, resume=True)
    assert second.manifest["training"]["steps"] == 5
    steps = [entry["step"] for entry in second.log_history if "loss" in entry]
    assert steps[-1] == 5 and 1 not in steps[steps.index(4):]  # continued at step 4, not from scratch
    assert second.manifest["weights_sha256"] != first.manifest["weights_sha256"]
    load_model(out)


def test_seeded_runs_are_identical(testbed, tmp_path):
    a, _ = _train(testbed, tmp_path / "a", max_steps=2, lora=False)
    b, _ = _train(testbed, tmp_path / "b", max_steps=2, lora=False)
    assert a.manifest["weights_sha256"] == b.manifest["weights_sha256"]
    assert a.losses == b.losses


def test_training_prompt_is_the_inference_prompt(testbed, tmp_path):
    examples = testbed_examples(testbed.root)
    with_prior = [e for e in examples if e.prior_frontal]
    assert with_prior, "the tiny testbed should have a study with a prior"
    from unirg.trainer.tiny_models import build_tiny_qwen3_vl

    path = build_tiny_qwen3_vl(tmp_path / "m", hidden_size=64, image_size=64, num_layers=1)
    adapter = adapter_for(path)
    processor = adapter.load_processor(path)
    cache = StudyInputCache(decode_size=512)
    for example in [with_prior[0], *[e for e in examples if not e.prior_frontal][:1]]:
        frontal = select_views([pydicom.dcmread(example.frontal)]).frontal
        prior = pydicom.dcmread(example.prior_frontal) if example.prior_frontal else None
        reference = StudyInput.from_datasets(frontal, prior_frontal=prior, prior_report=example.prior_report)
        ours = cache.study(example)
        assert (ours.indication, ours.comparison, ours.prior_report) == (
            reference.indication, reference.comparison, reference.prior_report)
        assert adapter.prepare(processor, [ours])[1] == adapter.prepare(processor, [reference])[1]
        assert ours.frontal.tobytes() == reference.frontal.tobytes()


def test_prior_report_style_is_trained_recorded_and_inherited(testbed, tmp_path):
    from unirg.model.prompt import PRIOR_FINDINGS_LABEL, PRIOR_REPORT_LABEL

    result, _ = _train(testbed, tmp_path / "findings", max_steps=1, lora=False, prior_report_style="findings")
    assert result.manifest["prompt"] == {"prior_report": "findings"}
    model = load_model(tmp_path / "findings")
    assert model.adapter.prior_report_style == "findings"
    with_prior = next(e for e in result.train_examples if e.prior_frontal)
    [text] = model.adapter.prepare(model.processor, [StudyInputCache().study(with_prior)])[1]
    assert PRIOR_FINDINGS_LABEL in text and f"{PRIOR_REPORT_LABEL} " not in text
    # fine-tuning it further keeps its prompt; a model built from scratch writes the prior report as is
    lora, _ = _train(testbed, tmp_path / "lora", max_steps=1, init=None, base=str(tmp_path / "findings"), lora=True)
    assert lora.manifest["prompt"] == {"prior_report": "findings"}
    assert load_model(tmp_path / "lora").adapter.prior_report_style == "findings"
    plain, _ = _train(testbed, tmp_path / "plain", max_steps=1, lora=False)
    assert plain.manifest["prompt"] == {"prior_report": "text"}


def test_patient_split_is_disjoint_and_seeded(testbed):
    examples = testbed_examples(testbed.root, institutions=None)
    train, held = patient_split(examples, 0.34, seed=1)
    assert held and train
    assert not {e.patient_id for e in train} & {e.patient_id for e in held}
    assert patient_split(list(reversed(examples)), 0.34, seed=1)[1] == [e for e in reversed(examples) if e in held]


def test_config_errors_say_how_to_fix(tmp_path):
    with pytest.raises(ValueError) as info:
        SFTRunConfig(data=str(tmp_path), out=str(tmp_path / "o"), lr=0, batch_size=0)
    message = str(info.value)
    assert "--base PATH" in message and "--init tiny-qwen3-vl" in message
    assert "unirg-trainer synth" in message
    assert "lr must be > 0" in message and "batch_size must be >= 1" in message
    with pytest.raises(ValueError, match="unknown sft setting.*learning_rate"):
        load_config(None, data="x", out="y", init="tiny-qwen3-vl", learning_rate=1e-3)
    toml = tmp_path / "sft.toml"
    toml.write_text('[sft]\ninit = "tiny-qwen3-vl"\nlr = 5e-4\ninstitutions = ["A"]\n')
    config = load_config(toml, data="x", out="y", lr=1e-3, check_paths=False)
    assert config.lr == 1e-3 and config.institutions == ("A",) and config.use_lora is False


def test_chexpert_scores_and_baseline(testbed):
    examples = testbed_examples(testbed.root)
    references = [e.labels for e in examples]
    perfect = evaluate_chexpert([e.target for e in examples], references)
    assert perfect["micro"]["f1"] > 0.8  # the labeler reads the reference reports back
    common = most_common_report(examples)
    baseline = evaluate_chexpert([common] * len(examples), references)
    assert baseline["micro"]["f1"] < perfect["micro"]["f1"]
    assert set(perfect["per_observation"]) >= {"Cardiomegaly", "No Finding", "Support Devices"}


def test_sft_command(testbed, tmp_path):
    from unirg.trainer.train_cli import sft

    out = tmp_path / "cli"
    args = ["--data", str(testbed.root), "--out", str(out), "--init", "tiny-qwen3-vl", "--max-steps", "2",
            "--batch-size", "2", "--image-size", "64", "--hidden-size", "64", "--layers", "2",
            "--vision-hidden-size", "32", "--threads", "1", "--institutions", "A,B,C", "--eval-fraction", "0.3",
            "--evaluate", "--eval-institutions", "C", "--eval-max-studies", "2"]
    result = CliRunner().invoke(sft, args)
    assert result.exit_code == 0, result.output
    assert "loss" in result.output and "CheXpert-14 micro F1" in result.output
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["training"]["institutions"] == ["A", "B", "C"]
    assert "C" in manifest["metrics"]["sets"]
    bad = CliRunner().invoke(sft, ["--data", str(testbed.root), "--out", str(out)])
    assert bad.exit_code != 0 and "--init tiny-qwen3-vl" in bad.output


def test_vision_pretraining_trains_the_tower_only_then_sft_keeps_it_frozen(testbed, tmp_path):
    """Vision pre-training changes the vision tower (the language model is untouched by it); with
    freeze_vision SFT leaves the whole tower as pre-training left it and trains the language model. The result loads and drafts through load_model."""
    from unirg.trainer.sft import build_init, prepare_model
    from unirg.trainer.vision_pretrain import VisionPretrainConfig, freeze_vision_tower, pretrain_on_examples

    config = load_config(None, data=str(testbed.root), out=str(tmp_path / "unused"), **{**TINY, "lora": False})
    examples = testbed_examples(testbed.root, institutions=("A", "B"))
    base = build_init(config, tmp_path / "init", sorted({e.target for e in examples}))
    model, processor, _adapter = prepare_model(config, base)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train, held = examples[: len(examples) // 2], examples[len(examples) // 2:]
    assert train and held
    result = pretrain_on_examples(model, processor, StudyInputCache(decode_size=128), train, held,
                                  VisionPretrainConfig(epochs=2, batch_size=2))
    assert result.steps == 2 * -(-len(train) // 2) and result.held_out_f1 is not None and 0 <= result.held_out_f1["micro_f1"] <= 1
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all(n.startswith("model.visual.") for n in changed), sorted(changed)[:5]
    assert any(n.startswith("model.visual.blocks.") for n in changed)
    frozen = freeze_vision_tower(model)
    assert frozen > 0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith("model.visual.") for n in trainable)

    out = tmp_path / "staged"
    result, snapshot = _train(testbed, out, max_steps=4, lora=False, vision_pretrain_epochs=1, freeze_vision=True)
    training = json.loads((out / MANIFEST).read_text())["training"]
    assert training["vision_frozen"] is True and training["vision_pretraining"]["steps"] >= 1
    assert not any(n.startswith("model.visual.") for n in snapshot.before)  # frozen: not trainable
    model = load_model(out)
    [draft] = model.draft([StudyInputCache().study(result.train_examples[0])], GenerationConfig(max_new_tokens=8))
    assert draft.model_info.version == json.loads((out / MANIFEST).read_text())["version"]


def test_vision_pretraining_config_errors(tmp_path, testbed):
    with pytest.raises(ValueError, match="use --full"):
        load_config(None, data=str(testbed.root), out=str(tmp_path / "o"), base=str(testbed.root), init=None,
                    vision_pretrain_epochs=1, check_paths=False)
    with pytest.raises(ValueError, match="vision_pretrain_epochs must be >= 0"):
        load_config(None, data=str(testbed.root), out=str(tmp_path / "o"), init="tiny-qwen3-vl",
                    vision_pretrain_epochs=-1)


def test_patch_and_merge_size_read_a_larger_image_into_as_many_tokens(testbed, tmp_path):
    """--patch-size 32 at twice the image side (or 16-px patches merged 4 x 4) gives the language model the
    same number of image tokens, each read from four times the pixels; each checkpoint loads and drafts."""
    from PIL import Image

    from unirg.trainer.sft import build_init
    from unirg.trainer.tiny_models import build_tiny_qwen3_vl

    corpus = sorted({e.target for e in testbed_examples(testbed.root)})
    image = Image.new("RGB", (256, 256), 90)
    tokens = {}
    for side, patch, merge in ((64, 16, 2), (128, 32, 2), (128, 16, 4)):
        name = f"{side}-{patch}-{merge}"
        if merge == 2:
            config = load_config(None, data=str(testbed.root), out=str(tmp_path / "unused"),
                                 **{**TINY, "tiny_image_size": side, "tiny_patch_size": patch})
            base = build_init(config, tmp_path / name, corpus)
        else:
            base = build_tiny_qwen3_vl(tmp_path / name, corpus=corpus, hidden_size=64, num_layers=2,
                                       vision_hidden_size=32, image_size=side, patch_size=patch, merge_size=merge)
        vision = json.loads((base / "config.json").read_text())["vision_config"]
        assert (vision["patch_size"], vision["spatial_merge_size"]) == (patch, merge)
        model = load_model(base)
        processed = adapter_for(base).load_processor(base).image_processor(images=[image], return_tensors="pt")
        assert processed["pixel_values"].shape[-1] == 3 * 2 * patch * patch
        with torch.no_grad():
            out = model.model.model.visual(processed["pixel_values"], grid_thw=processed["image_grid_thw"])
        tokens[name] = (out.pooler_output if hasattr(out, "pooler_output") else out[0]).shape[0]
        [draft] = model.draft([StudyInput(frontal=image)], GenerationConfig(max_new_tokens=4))
        assert draft.raw_text is not None
    assert set(tokens.values()) == {4}, tokens
    with pytest.raises(ValueError, match="multiple of twice the patch size"):
        load_config(None, data=str(testbed.root), out=str(tmp_path / "o"),
                    **{**TINY, "tiny_image_size": 96, "tiny_patch_size": 32})
