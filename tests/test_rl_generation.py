"""Cheaper rollouts that sample what they sampled before: the LoRA adapter merged while ``generate`` runs, the
self-critical baseline's greedy drafts as greedy rows of the rollouts' own ``generate`` call, and gray images kept
as one band in the RL dataset. Tiny real Qwen3-VL, real PEFT and TRL, synthetic testbed."""

import pytest
import torch
from peft import LoraConfig, get_peft_model

from unirg.trainer.rl import build_trainer, converts_to_rgb, load_samples, stored_image
from unirg.trainer.rl_config import config_values, load_rl_config
from unirg.trainer.rl_generation import GreedyRows, merge_multimodal_fields, merged_lora
from unirg.trainer.tiny_models import build_tiny_qwen3_vl

from conftest import tiny_greedy_rl_config


def test_greedy_rows_leave_only_the_argmax_and_sampling_then_picks_it():
    torch.manual_seed(0)
    scores = torch.randn(5, 50)
    processed = GreedyRows([1, 3])(torch.zeros(5, 1, dtype=torch.long), scores.clone())
    assert torch.equal(processed[[0, 2, 4]], scores[[0, 2, 4]])  # other rows untouched
    for row in (1, 3):
        finite = torch.isfinite(processed[row]).nonzero().flatten().tolist()
        assert finite == [int(scores[row].argmax())]
    probs = torch.softmax(processed / 1.7, dim=-1)  # a sampling temperature keeps the argmax
    draws = torch.multinomial(probs, 200, replacement=True)
    assert (draws[1] == scores[1].argmax()).all() and (draws[3] == scores[3].argmax()).all()
    assert len(set(draws[0].tolist())) > 1  # a sampled row still samples


def test_multimodal_fields_of_two_batches_join_row_by_row():
    first = {"pixel_values": torch.ones(4, 3), "image_grid_thw": torch.tensor([[1, 2, 2]]), "mm": [[0, 1]]}
    second = {"pixel_values": torch.zeros(8, 3), "image_grid_thw": torch.tensor([[1, 2, 4]]), "mm": [[1, 1]]}
    merged = merge_multimodal_fields(first, second)
    assert merged["pixel_values"].shape == (12, 3) and merged["pixel_values"][4:].sum() == 0
    assert merged["image_grid_thw"].tolist() == [[1, 2, 2], [1, 2, 4]]
    assert merged["mm"] == [[0, 1], [1, 1]]
    with pytest.raises(ValueError, match="differ"):
        merge_multimodal_fields(first, {"pixel_values": torch.ones(1, 3)})


def test_a_gray_image_is_stored_as_one_band_and_the_processor_sees_the_same_pixels(tmp_path):
    import numpy as np
    from PIL import Image

    from unirg.model.families import QwenVLAdapter

    gray = Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 80), dtype=np.uint8)).convert("RGB")
    stored = stored_image(gray, gray_as_l=True)
    assert stored.mode == "L" and stored.tobytes() == gray.convert("L").tobytes()
    assert stored_image(gray, gray_as_l=False) is gray
    tinted = gray.copy()
    tinted.putpixel((3, 4), (10, 20, 30))
    assert stored_image(tinted, gray_as_l=True) is tinted  # not gray: kept as it is

    tiny = build_tiny_qwen3_vl(tmp_path / "tiny", hidden_size=64, num_layers=2, vision_hidden_size=32, image_size=64)
    processor = QwenVLAdapter().load_processor(tiny)  # the processor load_model gives the policy
    assert converts_to_rgb(processor)
    from_rgb = processor.image_processor(images=[gray], return_tensors="pt")
    from_l = processor.image_processor(images=[stored], return_tensors="pt")
    assert torch.equal(from_rgb["pixel_values"], from_l["pixel_values"])
    assert torch.equal(from_rgb["image_grid_thw"], from_l["image_grid_thw"])


def test_merge_for_generation_is_a_lora_setting():
    assert load_rl_config(preset="unirg-step1").merge_lora_for_generation is True
    assert config_values({"lora": {"merge_for_generation": False}}) == {"merge_lora_for_generation": False}
    assert load_rl_config(preset="unirg-step1", overrides={"merge_lora_for_generation": False}).summary()[
        "merge_lora_for_generation"] is False


@pytest.mark.slow
def test_merged_adapter_generates_the_same_tokens_and_leaves_the_base_weights(tmp_path):
    from transformers import AutoModelForImageTextToText

    tiny = build_tiny_qwen3_vl(tmp_path / "tiny", hidden_size=64, num_layers=2, vision_hidden_size=32, image_size=64)
    base = AutoModelForImageTextToText.from_pretrained(tiny)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                            init_lora_weights=False))  # random B: the adapter changes outputs
    before = {k: v.clone() for k, v in model.state_dict().items() if "base_layer" in k}
    ids = torch.randint(3, 50, (3, 9))
    with torch.no_grad():
        plain_logits = model(input_ids=ids).logits
        plain = model.generate(input_ids=ids, max_new_tokens=12, do_sample=False, eos_token_id=None)
        with merged_lora(model):
            merged_logits = model(input_ids=ids).logits
            merged = model.generate(input_ids=ids, max_new_tokens=12, do_sample=False, eos_token_id=None)
    assert torch.allclose(plain_logits, merged_logits, atol=1e-5)
    assert torch.equal(plain, merged)
    after = {k: v for k, v in model.state_dict().items() if "base_layer" in k}
    for key, value in before.items():
        assert torch.allclose(after[key], value, atol=1e-6), key
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, plain_logits, atol=1e-6)  # adapter live again
        with model.disable_adapter():
            assert not torch.allclose(model(input_ids=ids).logits, plain_logits, atol=1e-3)  # and it matters


@pytest.mark.slow
def test_greedy_drafts_folded_into_the_rollouts_equal_a_separate_greedy_call(testbed, tmp_path):
    torch.set_num_threads(2)
    cfg = tiny_greedy_rl_config(testbed, tmp_path, max_steps=1, temperature=1.5)
    trainer = build_trainer(cfg, samples=load_samples(cfg)).trainer
    assert trainer._merges_lora()
    heads = [trainer.train_dataset[i] for i in range(2)]
    assert {image.mode for row in heads for image in row["images"]} == {"L"}  # radiographs, one band
    inputs = [row for row in heads for _ in range(cfg.num_generations)]
    trainer.model.train()
    output = trainer._generate_and_score_completions(inputs)
    folded = trainer._folded_greedy_ids
    assert folded is not None and len(folded) == 2
    assert output["completion_ids"].shape[0] == len(inputs)  # the greedy rows are not rollouts
    _, separate = trainer._greedy_completion_ids(heads)
    assert folded == separate
    mask = output["completion_mask"].bool()
    sampled = {tuple(ids[m].tolist()) for ids, m in zip(output["completion_ids"], mask, strict=True)}
    assert len(sampled) > 2  # temperature 1.5: the rollouts themselves were sampled
