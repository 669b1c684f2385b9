"""A saved model always loads with its image processor: never a tokenizer that drafts without the X-ray.

GRPO's processor (an image-only Qwen3-VL processor class built at runtime) stamps its class name into the
tokenizer config; AutoProcessor cannot resolve it and used to return the bare tokenizer, so every model that
``unirg-trainer rl`` saved drafted blind (institution C micro F1 0.59 -> 0.27 with the demo model).
"""

from __future__ import annotations

import json

import pytest

from unirg.model.families import FamilyAdapter, ProcessorWithoutImages, adapter_for, save_processor
from unirg.model.model import load_model
from unirg.model.study import GenerationConfig, StudyInput
from unirg.trainer.tiny_models import build_tiny_qwen3_vl

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_qwen3_vl(tmp_path_factory.mktemp("tiny") / "m", hidden_size=64, num_layers=1,
                               vision_hidden_size=32, image_size=64)


def _stamp_runtime_class(model_dir, padding_side="left"):
    config_path = model_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["processor_class"] = "Qwen3VLProcessorImageOnly"  # what GRPO's processor leaves there
    config["padding_side"] = padding_side
    config_path.write_text(json.dumps(config))


def test_an_unresolvable_processor_class_still_loads_the_image_processor(tiny, tmp_path):
    import shutil

    stamped = tmp_path / "stamped"
    shutil.copytree(tiny, stamped)
    _stamp_runtime_class(stamped)
    processor = adapter_for(stamped).load_processor(stamped)
    assert processor.image_processor is not None and hasattr(processor, "tokenizer")

    from PIL import Image

    study = StudyInput(frontal=Image.new("RGB", (64, 64), 128), indication="Cough.")
    a = load_model(tiny).draft([study], GenerationConfig(max_new_tokens=6))[0]
    b = load_model(stamped).draft([study], GenerationConfig(max_new_tokens=6))[0]
    assert a.raw_text == b.raw_text


def test_save_processor_drops_the_runtime_class(tiny, tmp_path):
    processor = adapter_for(tiny).load_processor(tiny)
    processor.tokenizer.init_kwargs["processor_class"] = "Qwen3VLProcessorImageOnly"
    save_processor(processor, tmp_path / "saved")
    assert "processor_class" not in json.loads((tmp_path / "saved" / "tokenizer_config.json").read_text())


def test_a_processor_that_cannot_see_images_is_refused(tiny, tmp_path):
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(tiny)).save_pretrained(tmp_path / "tokenizer-only")
    with pytest.raises(ProcessorWithoutImages, match="cannot process images"):
        FamilyAdapter().load_processor(tmp_path / "tokenizer-only")
