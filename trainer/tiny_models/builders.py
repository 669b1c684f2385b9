"""The tiny random-weight checkpoint builders, one per family (see :mod:`unirg.trainer.tiny_models`)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

import torch

from unirg.trainer.tiny_models.vocab import (
    GEMMA_CHAT_TEMPLATE,
    QWEN_CHAT_TEMPLATE,
    QWEN_SPECIAL,
    VICUNA_CHAT_TEMPLATE,
    _corpus,
    _finish,
    _prepare,
    _qwen_tokenizer,
    _write_chat_template,
    train_bpe,
)


def build_tiny_qwen3_vl(
    out_dir: str | Path,
    *,
    corpus: Iterable[str] | None = None,
    vocab_size: int = 1024,
    hidden_size: int = 128,
    num_layers: int = 4,
    vision_hidden_size: int = 64,
    vision_layers: int = 2,
    image_size: int = 128,
    patch_size: int | None = None,
    merge_size: int = 2,
    seed: int = 0,
    overwrite: bool = False,
    model_type: str = "qwen3_vl",
) -> Path:
    """A random-weight Qwen3-VL (or ``model_type="qwen2_5_vl"``) checkpoint in ``out_dir``.

    Parameters
    ----------
    corpus : iterable of str, optional
        Report texts for the vocabulary (default :data:`REPORT_CORPUS`); the prompt's
        words are always added.
    vocab_size : int
        Target BPE vocabulary (the corpus may give fewer tokens).
    hidden_size, num_layers : int
        Text model width and depth (128 and 4 give ~1.2 M parameters with the default
        corpus's ~900-token vocabulary; a larger corpus fills ``vocab_size``).
    vision_hidden_size, vision_layers : int
        Vision tower width and depth.
    image_size : int
        The processor resizes images to about ``image_size`` squared pixels
        (``image_size / 32`` squared image tokens for Qwen3-VL's 16-px patches merged 2x2).
    patch_size : int, optional
        Vision patch side (default the family's: 16 for Qwen3-VL, 14 for Qwen2.5-VL). A larger patch
        reads a larger image into the same number of tokens (256 px with 32-px patches: 16 tokens).
    merge_size : int
        Patches merged into one image token per side (Qwen's 2); 4 reads 256 px in 16-px patches into 16 tokens.
    """
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    if model_type not in ("qwen3_vl", "qwen2_5_vl"):
        raise ValueError(f"model_type must be 'qwen3_vl' or 'qwen2_5_vl', got {model_type!r}")
    if model_type == "qwen2_5_vl" and merge_size != 2:
        raise ValueError("the tiny Qwen2.5-VL merges 2 x 2 patches; merge_size applies to qwen3_vl only")
    out = _prepare(out_dir, overwrite)
    torch.manual_seed(seed)
    tokenizer = _qwen_tokenizer(corpus, vocab_size)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL}
    heads = max(2, hidden_size // 32)
    head_dim = hidden_size // heads
    # mrope sections split head_dim / 2 rotary frequencies over (time, height, width)
    half = head_dim // 2
    mrope = [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]
    text_config = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        head_dim=head_dim,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=None,  # the defaults are Qwen's real ids, outside this vocabulary
        eos_token_id=ids["<|im_end|>"],
        tie_word_embeddings=False,
    )
    tokens = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    vision_heads = max(2, vision_hidden_size // 32)
    if model_type == "qwen3_vl":
        from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

        text_config["rope_parameters"]["mrope_interleaved"] = True
        patch = patch_size or 16
        config = Qwen3VLConfig(
            text_config=text_config,
            vision_config=dict(
                depth=vision_layers,
                hidden_size=vision_hidden_size,
                intermediate_size=vision_hidden_size * 2,
                num_heads=vision_heads,
                patch_size=patch,
                spatial_merge_size=merge_size,
                temporal_patch_size=2,
                out_hidden_size=hidden_size,
                num_position_embeddings=256,
                deepstack_visual_indexes=[0],
            ),
            tie_word_embeddings=False,
            **tokens,
        )
        model = Qwen3VLForConditionalGeneration(config)
        video_processor = Qwen3VLVideoProcessor(patch_size=patch, merge_size=merge_size, temporal_patch_size=2)
    else:
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        patch = patch_size or 14
        config = Qwen2_5_VLConfig(
            text_config=text_config,
            vision_config=dict(
                depth=vision_layers,
                hidden_size=vision_hidden_size,
                intermediate_size=vision_hidden_size * 2,
                num_heads=vision_heads,
                patch_size=patch,
                spatial_merge_size=2,
                temporal_patch_size=2,
                out_hidden_size=hidden_size,
                window_size=patch * 2 * 2,
                fullatt_block_indexes=[vision_layers - 1],
            ),
            tie_word_embeddings=False,
            **tokens,
        )
        model = Qwen2_5_VLForConditionalGeneration(config)
        video_processor = None
    factor = patch * merge_size
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch,
        temporal_patch_size=2,
        merge_size=merge_size,
        size={"shortest_edge": factor * factor, "longest_edge": image_size * image_size},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    # the published layout: tokenizer files, preprocessor_config.json,
    # video_preprocessor_config.json, chat_template.jinja (no processor_config.json)
    tokenizer.save_pretrained(out)
    image_processor.save_pretrained(out)
    if video_processor is not None:
        video_processor.save_pretrained(out)
    _write_chat_template(out, QWEN_CHAT_TEMPLATE)
    _finish(model, tokenizer, out, eos="<|im_end|>", pad="<|endoftext|>")
    return out


def build_tiny_qwen2_5_vl(out_dir: str | Path, **kwargs) -> Path:
    """A random-weight Qwen2.5-VL checkpoint (see :func:`build_tiny_qwen3_vl`)."""
    return build_tiny_qwen3_vl(out_dir, model_type="qwen2_5_vl", **kwargs)


GEMMA_SPECIAL = (
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<mask>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
)


def build_tiny_gemma3(
    out_dir: str | Path,
    *,
    corpus: Iterable[str] | None = None,
    vocab_size: int = 1024,
    hidden_size: int = 64,
    num_layers: int = 2,
    image_size: int = 64,
    tokens_per_image: int = 16,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """A random-weight Gemma 3 (MedGemma layout: SigLIP tower, pooled image tokens) checkpoint.

    ``image_size`` is the SigLIP input size; ``tokens_per_image`` (a square number) is how
    many soft tokens each image becomes.
    """
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor, GemmaTokenizer
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    side = round(tokens_per_image**0.5)
    if side * side != tokens_per_image:
        raise ValueError(f"tokens_per_image must be a square number, got {tokens_per_image}")
    out = _prepare(out_dir, overwrite)
    torch.manual_seed(seed)
    vocab, merges = train_bpe(
        _corpus(corpus), vocab_size=vocab_size, special_tokens=GEMMA_SPECIAL, style="gemma"
    )
    tokenizer = GemmaTokenizer(
        vocab=vocab,
        merges=merges,
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
            "start_of_turn_token": "<start_of_turn>",
            "end_of_turn_token": "<end_of_turn>",
        },
    )
    tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in GEMMA_SPECIAL}
    patch = image_size // (side * 2)  # two patches per pooled token and side
    heads = max(2, hidden_size // 32)
    config = Gemma3Config(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=hidden_size,
            intermediate_size=hidden_size * 2,
            num_hidden_layers=num_layers,
            num_attention_heads=heads,
            num_key_value_heads=1,
            head_dim=hidden_size // heads,
            query_pre_attn_scalar=hidden_size // heads,
            sliding_window=64,
            max_position_embeddings=4096,
            pad_token_id=ids["<pad>"],
            eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]],
            bos_token_id=ids["<bos>"],
        ),
        vision_config=dict(
            model_type="siglip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch,
        ),
        mm_tokens_per_image=tokens_per_image,
        boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"],
    )
    model = Gemma3ForConditionalGeneration(config)
    with torch.no_grad():  # the projector starts at zero in transformers; give images a voice
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, 0.02)
    image_processor = Gemma3ImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=GEMMA_CHAT_TEMPLATE,
        image_seq_length=tokens_per_image,
    )
    processor.save_pretrained(out)
    _finish(model, tokenizer, out, eos=["<eos>", "<end_of_turn>"], pad="<pad>", bos="<bos>")
    return out


LLAVA_SPECIAL = ("<unk>", "<s>", "</s>", "<pad>", "<image>")


def _llava_parts(corpus: Iterable[str] | None, vocab_size: int, extra_special: tuple[str, ...] = ()):
    from transformers import Qwen2Tokenizer

    specials = (*LLAVA_SPECIAL, *extra_special)
    vocab, merges = train_bpe(_corpus(corpus), vocab_size=vocab_size, special_tokens=specials)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    if extra_special:
        tokenizer.add_special_tokens({"additional_special_tokens": list(extra_special)})
    tokenizer.chat_template = VICUNA_CHAT_TEMPLATE
    return tokenizer


def _llama_text_config(tokenizer, hidden_size: int, num_layers: int) -> dict:
    heads = max(2, hidden_size // 32)
    return dict(
        model_type="llama",
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=4096,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def build_tiny_llava(
    out_dir: str | Path,
    *,
    corpus: Iterable[str] | None = None,
    vocab_size: int = 1024,
    hidden_size: int = 64,
    num_layers: int = 2,
    image_size: int = 32,
    patch_size: int = 8,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """A random-weight LLaVA-1.5-layout checkpoint: CLIP vision tower, MLP projector, Llama LM.

    Each image becomes ``(image_size / patch_size) ** 2`` tokens (CLS dropped).
    """
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    out = _prepare(out_dir, overwrite)
    torch.manual_seed(seed)
    tokenizer = _llava_parts(corpus, vocab_size)
    config = LlavaConfig(
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch_size,
            projection_dim=32,
        ),
        text_config=_llama_text_config(tokenizer, hidden_size, num_layers),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(image_size // patch_size) ** 2,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    model = LlavaForConditionalGeneration(config)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=VICUNA_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    _finish(model, tokenizer, out, eos="</s>", pad="<pad>", bos="<s>")
    return out


MAIRA2_SPECIAL = ("<obj>", "</obj>", "<box>", "</box>")


def build_tiny_maira2(
    out_dir: str | Path,
    *,
    corpus: Iterable[str] | None = None,
    vocab_size: int = 1024,
    hidden_size: int = 64,
    num_layers: int = 2,
    image_size: int = 32,
    patch_size: int = 8,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """A random-weight MAIRA-2-layout checkpoint with local remote code.

    The checkpoint holds ``modeling_maira2.py`` (a copy of
    :mod:`unirg.model.maira2_local`, our stand-in for Microsoft's remote code)
    and ``auto_map`` entries in ``config.json`` and ``processor_config.json``, so it
    loads with ``trust_remote_code=True`` like the published model. Vision tower:
    a tiny DINOv2 (as RAD-DINO); language model: a tiny Llama (as Vicuna).
    """
    from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil

    from unirg.model import maira2_local

    out = _prepare(out_dir, overwrite)
    torch.manual_seed(seed)
    tokenizer = _llava_parts(corpus, vocab_size, extra_special=MAIRA2_SPECIAL)
    config = maira2_local.Maira2Config(
        vision_config=dict(
            model_type="dinov2",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch_size,
        ),
        text_config=_llama_text_config(tokenizer, hidden_size, num_layers),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(image_size // patch_size) ** 2,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_n_layers=2,
    )
    model = maira2_local.Maira2ForConditionalGeneration(config)
    image_processor = BitImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    processor = maira2_local.Maira2Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    processor.save_pretrained(out)
    _finish(model, tokenizer, out, eos="</s>", pad="<pad>", bos="<s>")
    shutil.copyfile(maira2_local.__file__, out / "modeling_maira2.py")
    for name, auto_map in (
        (
            "config.json",
            {
                "AutoConfig": "modeling_maira2.Maira2Config",
                "AutoModelForCausalLM": "modeling_maira2.Maira2ForConditionalGeneration",
            },
        ),
        ("processor_config.json", {"AutoProcessor": "modeling_maira2.Maira2Processor"}),
    ):
        file = out / name
        data = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}
        data["auto_map"] = auto_map
        data.setdefault("processor_class", "Maira2Processor") if name == "processor_config.json" else None
        file.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return out
