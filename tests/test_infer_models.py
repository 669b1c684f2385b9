"""Model families end to end (unirg.model): tiny random-weight checkpoints built
locally, saved, loaded through ``load_model`` and drafting real generations.

Nothing is mocked: every test runs the transformers model. Model sizes are shrunk in
``unirg.trainer.tiny_models`` (hidden 64-128, 2 layers, 16-64 image tokens) so the whole
file runs in well under a minute on two CPUs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from unirg.model import Draft, GenerationConfig, ModelInfo, StudyInput, load_model, model_info
from unirg.model.families import RemoteCodeNotTrusted, UnsupportedModel, adapter_for, save_processor
from unirg.model.model import MANIFEST, WeightsMismatch, weights_sha256
from unirg.model.parse import TRUNCATED
from unirg.model.prompt import format_target
from unirg.trainer.tiny_models import build_tiny

FAMILIES = ["qwen3_vl", "qwen2_5_vl", "gemma3", "llava", "maira2"]
HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """One tiny checkpoint per family, built once for the module."""
    root = tmp_path_factory.mktemp("tiny")
    small = {  # fewer image tokens than the builders' defaults: faster tests
        "qwen3_vl": dict(hidden_size=64, image_size=64),
        "qwen2_5_vl": dict(hidden_size=64, image_size=56),
    }
    return {family: build_tiny(family, root / family, **small.get(family, {})) for family in FAMILIES}


@pytest.fixture(scope="module")
def models(checkpoints):
    # MAIRA-2 runs its (our stand-in) remote code: an explicit opt-in, as an operator gives it
    return {family: load_model(path, trust_remote_code=family == "maira2") for family, path in checkpoints.items()}


def xray(seed: int, size: int = 512) -> Image.Image:
    """A random grey 'radiograph' with some structure (MAIRA-2 stretches contrast per image)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size // 8, size // 8), dtype=np.uint8)
    return Image.fromarray(pixels).resize((size, size), Image.Resampling.NEAREST).convert("RGB")


def studies() -> list[StudyInput]:
    return [
        StudyInput(frontal=xray(1), indication="Cough.", study_uid="1.2.3.1"),
        StudyInput(
            frontal=xray(2),
            prior_frontal=xray(3),
            prior_report="Findings: Small left effusion.\nImpression: Small left effusion.",
            comparison="Chest radiograph 2024-01-02.",
            indication="Follow-up effusion.",
            study_uid="1.2.3.2",
        ),
        StudyInput(frontal=xray(4), lateral=xray(5), technique="PA and lateral.", study_uid="1.2.3.3"),
    ]


# --- every family ------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_draft_batch_end_to_end(models, family):
    model = models[family]
    assert model.adapter.name == adapter_for(family).name
    assert isinstance(model.info, ModelInfo) and len(model.info.weights_sha256) == 64
    batch = studies()
    drafts = model.draft(batch, GenerationConfig(max_new_tokens=12, batch_size=2))  # 2 generate calls
    assert len(drafts) == 3
    assert model.prompt_texts(batch) == [d.prompt_text for d in drafts]
    for study, draft in zip(batch, drafts, strict=True):
        assert isinstance(draft, Draft)
        assert draft.model_info == model.info and draft.study_uid == study.study_uid
        assert isinstance(draft.raw_text, str) and isinstance(draft.flags, tuple)
        complete = draft.ok or (model.adapter.sections == ("findings",) and bool(draft.findings.strip()))
        assert draft.flags or complete  # MAIRA-2 writes findings only
    no_prior, prior, _lateral = (d.prompt_text for d in drafts)
    if family == "maira2":  # MAIRA-2's own prompt; prior report only with a prior image
        assert "PRIOR_REPORT: Findings: Small left effusion." in prior and "PRIOR_REPORT" not in no_prior
        assert "lateral" in drafts[2].prompt_text and "TECHNIQUE: PA and lateral." in drafts[2].prompt_text
    else:
        assert "Prior report: Findings: Small left effusion." in prior and "Prior report" not in no_prior
        assert "Indication: Cough.\nComparison: None." in no_prior
        assert "Comparison: Chest radiograph 2024-01-02." in prior


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padded_batch_matches_single_study(models, family):
    """Greedy drafts do not depend on what else is in the batch (left padding is right)."""
    model = models[family]
    batch = studies()[:2]  # different prompt lengths (one and two images)
    config = GenerationConfig(max_new_tokens=8, batch_size=2)
    together = [d.raw_text for d in model.draft(batch, config)]
    alone = [model.draft([study], config)[0].raw_text for study in batch]
    assert together == alone


@pytest.mark.parametrize("family", FAMILIES)
def test_trained_model_drafts_what_it_learned(checkpoints, family):
    """A few steps on the shared training prompt, then drafting with the inference prompt,
    gives back the taught reports: training and inference see the same prompt, the answer
    format parses, the end-of-turn token stops generation, and the image matters."""
    model = load_model(checkpoints[family], trust_remote_code=family == "maira2")  # opted in for MAIRA-2
    torch.manual_seed(0)
    pair = [StudyInput(frontal=xray(seed), indication="Cough.") for seed in (10, 11)]
    answers = [
        ("The lungs are clear.", "No acute process."),
        ("Large right effusion.", "Right pleural effusion."),
    ]
    batch = model.adapter.training_inputs(model.processor, pair, [format_target(*a) for a in answers])
    assert (batch["labels"] != -100).sum() > 0
    network = model.model
    network.train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=3e-3)
    losses = []
    for _step in range(80):
        loss = network(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    network.eval()
    drafts = model.draft(pair, GenerationConfig(max_new_tokens=40))
    assert losses[-1] < losses[0] / 10
    for draft, (findings, impression) in zip(drafts, answers, strict=True):
        assert draft.findings == findings and draft.impression == impression
        assert draft.flags == ()


# --- Qwen3-VL details --------------------------------------------------------------


@pytest.mark.skipif(HAS_TORCHVISION, reason="checks the path taken without torchvision")
def test_qwen3_vl_processor_without_torchvision(checkpoints, models):
    """AutoProcessor needs torchvision for Qwen3-VL's video processor; the adapter builds an
    image-only processor from the checkpoint's tokenizer, PIL image processor and template."""
    with pytest.raises(ImportError, match="(?i)torchvision"):
        AutoProcessor.from_pretrained(str(checkpoints["qwen3_vl"]))
    processor = models["qwen3_vl"].processor
    assert type(processor).__name__ == "Qwen3VLProcessorImageOnly"
    assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    inputs, _texts = models["qwen3_vl"].adapter.prepare(processor, studies()[:2])
    expected = {"input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"}
    assert expected <= set(inputs)
    assert inputs["image_grid_thw"].shape[0] == 3  # one + two images
    assert (inputs["mm_token_type_ids"] == 1).sum() == (inputs["input_ids"] == processor.image_token_id).sum()


def test_save_processor_round_trip(models, checkpoints, tmp_path):
    save_processor(models["qwen3_vl"].processor, tmp_path)
    for name in ("tokenizer.json", "preprocessor_config.json", "chat_template.jinja"):
        assert (tmp_path / name).is_file()
    shutil.copy(checkpoints["qwen3_vl"] / "config.json", tmp_path / "config.json")
    again = adapter_for(tmp_path).load_processor(tmp_path)
    study = studies()[0]
    first = models["qwen3_vl"].adapter.prepare(models["qwen3_vl"].processor, [study])[0]["input_ids"]
    second = models["qwen3_vl"].adapter.prepare(again, [study])[0]["input_ids"]
    assert torch.equal(first, second)


def test_decoding_strategies(models):
    model = models["qwen3_vl"]
    batch = studies()[:2]
    beam = model.draft(batch, GenerationConfig(strategy="beam", num_beams=2, max_new_tokens=6))
    assert len(beam) == 2
    sampling = GenerationConfig(strategy="sampling", temperature=0.9, top_p=0.9, seed=7, max_new_tokens=6)
    first = [d.raw_text for d in model.draft(batch, sampling)]
    again = [d.raw_text for d in model.draft(batch, sampling)]
    assert first == again  # the seed makes sampling reproducible


def test_token_limit_is_flagged(models):
    (draft,) = models["qwen3_vl"].draft(studies()[:1], GenerationConfig(max_new_tokens=3))
    assert TRUNCATED in draft.flags or "empty" in draft.flags


def test_generation_config_checks():
    with pytest.raises(ValueError, match="num_beams"):
        GenerationConfig(strategy="beam")
    with pytest.raises(ValueError, match="strategy='beam'"):
        GenerationConfig(num_beams=3)
    with pytest.raises(ValueError, match="temperature"):
        GenerationConfig(strategy="sampling", temperature=0)
    with pytest.raises(ValueError, match="batch_size"):
        GenerationConfig(batch_size=0)
    assert GenerationConfig().generate_kwargs() == {"max_new_tokens": 300, "do_sample": False, "num_beams": 1}


# --- identity, adapters, errors ------------------------------------------------------


def test_model_info_is_computed_from_weights(checkpoints):
    path = checkpoints["llava"]
    digest = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    info = model_info(path)
    assert info.weights_sha256 == digest
    assert info.version == f"sha256-{digest[:12]}" and info.name == path.name
    assert weights_sha256(path) == digest


def test_model_info_from_manifest(checkpoints, tmp_path):
    path = tmp_path / "published"
    shutil.copytree(checkpoints["llava"], path)
    (path / MANIFEST).write_text(json.dumps({"name": "unirg-cxr-demo", "version": "2026.11.1"}))
    model = load_model(path)
    assert model.info.name == "unirg-cxr-demo" and model.info.version == "2026.11.1"
    assert model.info.weights_sha256 == model_info(checkpoints["llava"]).weights_sha256


def test_lora_adapter_directory(checkpoints, tmp_path):
    from peft import LoraConfig, get_peft_model

    base_path = checkpoints["qwen3_vl"]
    base = load_model(base_path)
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    lora = get_peft_model(base.model, config)
    adapter_dir = tmp_path / "adapter"
    lora.save_pretrained(adapter_dir)
    saved = json.loads((adapter_dir / "adapter_config.json").read_text())
    saved["base_model_name_or_path"] = str(base_path)
    (adapter_dir / "adapter_config.json").write_text(json.dumps(saved))

    fresh_base = load_model(base_path)
    tuned = load_model(adapter_dir)  # an adapter directory names its base model
    explicit = load_model(base_path, adapter_path=adapter_dir)
    assert tuned.info == explicit.info != fresh_base.info
    assert tuned.info.weights_sha256 != fresh_base.info.weights_sha256
    name = next(n for n, _ in fresh_base.model.named_parameters() if n.endswith("q_proj.weight"))
    base_weight = dict(fresh_base.model.named_parameters())[name]
    tuned_weight = dict(tuned.model.named_parameters())[name]  # merged into the base layer
    assert not torch.allclose(base_weight, tuned_weight)
    (draft,) = tuned.draft(studies()[:1], GenerationConfig(max_new_tokens=4))
    assert draft.model_info == tuned.info


def test_remote_code_needs_the_operators_opt_in(checkpoints, tmp_path):
    """config.json saying maira2 (with auto_map to its .py files) never switches remote code on."""
    path = checkpoints["maira2"]
    marker = tmp_path / "remote-code-ran"
    copy = tmp_path / "maira2_untrusted"
    shutil.copytree(path, copy)
    with (copy / "modeling_maira2.py").open("a") as handle:  # remote code that leaves a trace if run
        handle.write(f"\nimport pathlib; pathlib.Path({str(marker)!r}).write_text('ran')\n")
    with pytest.raises(RemoteCodeNotTrusted, match="--trust-remote-code"):
        load_model(copy)
    with pytest.raises(RemoteCodeNotTrusted, match="trust_remote_code = true"):
        adapter_for(copy).load_model(copy)
    assert not marker.exists()
    assert adapter_for("qwen3_vl", trust_remote_code=True).remote_code(path) is False  # never for others
    assert load_model(copy, trust_remote_code=True).adapter.name == "maira2" and marker.exists()


def test_tampered_weights_are_refused(checkpoints, tmp_path):
    """The SR's weights hash is the loaded files' hash: a manifest that disagrees refuses the load."""
    path = tmp_path / "tampered"
    shutil.copytree(checkpoints["llava"], path)
    good = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    (path / MANIFEST).write_text(json.dumps({"name": "m", "version": "1", "weights_sha256": good}))
    assert load_model(path).info.weights_sha256 == good
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-1] ^= 1  # one bit of one weight
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(WeightsMismatch, match="hash to"):
        load_model(path)
    with pytest.raises(WeightsMismatch, match="hash to"):
        model_info(path)
    with pytest.raises(WeightsMismatch, match="not the expected"):
        load_model(checkpoints["llava"], expected_sha256="0" * 64)


def test_unknown_family_and_missing_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UnsupportedModel, match="bert"):
        load_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path / "nowhere")


def test_cpu_defaults(models):
    model = models["llava"]
    assert model.device.type == "cpu" and model.model.dtype == torch.float32
    assert model.processor.tokenizer.padding_side == "left"
