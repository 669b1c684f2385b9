"""Tiny random-weight report models of each family, built offline.

Every builder makes a locally trained tokenizer (byte-level BPE from the
``tokenizers`` library, trained on report texts plus the prompt's own words, with the
special tokens the family's processor needs), wraps it in the family's tokenizer class,
sets a chat template, builds the model from its config class and writes everything with
``save_pretrained`` in the layout of the family's published checkpoints, so
:func:`unirg.model.load_model` loads it the way it loads a real one.

Used by the tests and by ``unirg-trainer sft`` to initialise the demo model
(:func:`build_tiny_qwen3_vl`, about 1-5 M parameters depending on ``hidden_size`` and
the vocabulary).

The chat templates are written here (short Jinja versions of each family's layout:
ChatML for Qwen, ``<start_of_turn>`` for Gemma 3, ``USER: ... ASSISTANT:`` for LLaVA and
MAIRA-2); they are not copies of the published ones.

MAIRA-2's processor and model are remote code (``trust_remote_code``) that cannot be
downloaded here. :func:`build_tiny_maira2` writes *our own* small
``configuration_maira2.py`` / ``modeling_maira2.py`` / ``processing_maira2.py`` into
the checkpoint, implementing the documented processor API
(``format_and_preprocess_reporting_input`` and friends) on top of LLaVA. It exercises
the remote-code loading path and the adapter; it is not Microsoft's implementation.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

from unirg.model.prompt import prompt_corpus

__all__ = [
    "REPORT_CORPUS",
    "build_tiny",
    "build_tiny_gemma3",
    "build_tiny_llava",
    "build_tiny_maira2",
    "build_tiny_qwen2_5_vl",
    "build_tiny_qwen3_vl",
    "train_bpe",
]

REPORT_CORPUS: tuple[str, ...] = (
    "Findings: The lungs are clear. There is no focal consolidation, pleural effusion or pneumothorax. "
    "The cardiomediastinal silhouette is normal.\nImpression: No acute cardiopulmonary process.",
    "Findings: Heart size is mildly enlarged. There is mild pulmonary vascular congestion "
    "without frank edema. No large pleural effusion.\n"
    "Impression: Mild cardiomegaly with pulmonary vascular congestion.",
    "Findings: Small left pleural effusion with adjacent basilar atelectasis. No pneumothorax. "
    "Impression: Small left pleural effusion, new since the prior study.",
    "Findings: Right lower lobe opacity concerning for pneumonia. The left lung is clear.\n"
    "Impression: Right lower lobe pneumonia. Follow-up radiograph recommended after treatment.",
    "Findings: Endotracheal tube terminates 4 cm above the carina. Nasogastric tube courses below the "
    "diaphragm. Right internal jugular central venous catheter tip in the low superior vena cava.\n"
    "Impression: Support devices in standard position.",
    "Findings: Moderate right pneumothorax without mediastinal shift. "
    "Impression: Moderate right pneumothorax.",
    "Findings: Bilateral perihilar opacities and interstitial edema. Bilateral small pleural effusions. "
    "Impression: Moderate pulmonary edema, worse compared to the prior radiograph.",
    "Findings: A 2 cm nodule projects over the left upper lobe. Impression: Left upper lobe nodule; "
    "chest CT is recommended.",
    "Findings: Healed fracture of the right posterior sixth rib. "
    "Degenerative changes of the thoracic spine.\n"
    "Impression: No acute findings.",
    "Findings: Unchanged mild enlargement of the cardiac silhouette. Stable left basilar atelectasis. "
    "Impression: Stable appearance of the chest.",
    "Indication: Cough and fever. Comparison: None. Technique: PA and lateral views of the chest.",
    "Indication: Shortness of breath. Comparison: Chest radiograph 2024-01-02.",
    "Indication: Evaluate line placement. Comparison: Prior chest radiograph from yesterday.",
    "There is interval improvement of the right lower lobe consolidation. Increased left effusion. "
    "Decreased pulmonary edema. Resolved pneumothorax. New right upper lobe opacity. "
    "Possible early pneumonia. "
    "Lung volumes are low. No acute osseous abnormality. Sternotomy wires and mediastinal clips are intact. "
    "Pacemaker leads terminate in the right atrium and right ventricle. The aorta is tortuous and calcified.",
)

QWEN_PRETOKENIZE = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

QWEN_SPECIAL = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Jinja whitespace control ({%- -%}) strips literal newlines next to tags, so every
# newline the layout needs is written as an expression: {{ NL }}.
_NL = "{%- set NL = '\\n' -%}"

# ChatML with Qwen-VL image placeholders (our short version of the layout)
QWEN_CHAT_TEMPLATE = (
    _NL + "{%- for message in messages -%}"
    "<|im_start|>{{ message['role'] }}{{ NL }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "<|im_end|>{{ NL }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant{{ NL }}{%- endif -%}"
)

# Gemma 3 turns; the system text goes into the first user turn, as Gemma has no system role
GEMMA_CHAT_TEMPLATE = (
    _NL + "{{ bos_token }}"
    "{%- set ns = namespace(system='') -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- for item in message['content'] -%}{%- set ns.system = ns.system + item['text'] -%}{%- endfor -%}"
    "{%- else -%}"
    "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}{{ NL }}"
    "{%- if ns.system and message['role'] == 'user' -%}{{ ns.system }}{{ NL }}{{ NL }}"
    "{%- set ns.system = '' -%}{%- endif -%}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}<start_of_image>"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "<end_of_turn>{{ NL }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<start_of_turn>model{{ NL }}{%- endif -%}"
)

# Vicuna-style turns used by LLaVA-1.5 and MAIRA-2
VICUNA_CHAT_TEMPLATE = (
    _NL + "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{%- for item in message['content'] -%}{{ item['text'] }}{%- endfor -%}{{ ' ' }}"
    "{%- else -%}"
    "{{ 'USER: ' if message['role'] == 'user' else 'ASSISTANT: ' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}<image>{{ NL }}"
    "{%- elif item['type'] == 'text' and item['text'] -%}{{ item['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ eos_token if message['role'] == 'assistant' else ' ' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}ASSISTANT:{%- endif -%}"
)


def _corpus(corpus: Iterable[str] | None) -> list[str]:
    texts = list(REPORT_CORPUS if corpus is None else corpus)
    return [*texts, *prompt_corpus()]


def train_bpe(
    corpus: Iterable[str],
    *,
    vocab_size: int,
    special_tokens: Iterable[str],
    style: str = "byte_level",
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a BPE vocabulary and merges on ``corpus``.

    ``style="byte_level"`` matches :class:`transformers.Qwen2Tokenizer` (GPT-2 byte
    alphabet, Qwen's pre-tokenizer); ``style="gemma"`` matches
    :class:`transformers.GemmaTokenizer` (``▁`` for spaces, byte fallback tokens
    ``<0x00>``-``<0xFF>``). Special tokens get the first ids, in the order given.
    """
    special = list(special_tokens)
    if style == "byte_level":
        tokenizer = Tokenizer(models.BPE())
        tokenizer.normalizer = normalizers.NFC()
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    elif style == "gemma":
        tokenizer = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
        tokenizer.normalizer = normalizers.Replace(" ", "\u2581")
        special += [f"<0x{i:02X}>" for i in range(256)]
        alphabet = []
    else:
        raise ValueError(f"style must be 'byte_level' or 'gemma', got {style!r}")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=alphabet,
        show_progress=False,
        min_frequency=1,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    data = json.loads(tokenizer.to_str())
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in data["model"]["merges"]]
    return data["model"]["vocab"], merges


def _qwen_tokenizer(corpus: Iterable[str] | None, vocab_size: int):
    from transformers import Qwen2Tokenizer

    vocab, merges = train_bpe(_corpus(corpus), vocab_size=vocab_size, special_tokens=QWEN_SPECIAL)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=list(QWEN_SPECIAL[1:]),
    )
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    return tokenizer


def _finish(
    model, tokenizer, out_dir: Path, *, eos: str | list[str], pad: str, bos: str | None = None
) -> None:
    generation = model.generation_config
    generation.eos_token_id = tokenizer.convert_tokens_to_ids(eos)
    generation.pad_token_id = tokenizer.convert_tokens_to_ids(pad)
    if bos is not None:
        generation.bos_token_id = tokenizer.convert_tokens_to_ids(bos)
    generation.do_sample = False
    model.save_pretrained(out_dir)


def _prepare(out_dir: str | Path, overwrite: bool) -> Path:
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; pass overwrite=True to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _write_chat_template(out: Path, template: str) -> None:
    (out / "chat_template.jinja").write_text(template, encoding="utf-8")


def build_tiny_qwen3_vl(
    out_dir: str | Path,
    *,
    corpus: Iterable[str] | None = None,
    vocab_size: int = 1024,
    hidden_size: int = 128,
    num_layers: int = 4,
    vision_hidden_size: int = 64,
    image_size: int = 128,
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
    vision_hidden_size : int
        Vision tower width.
    image_size : int
        The processor resizes images to about ``image_size`` squared pixels
        (``image_size / 32`` squared image tokens for Qwen3-VL's 16-px patches merged 2x2).
    """
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    if model_type not in ("qwen3_vl", "qwen2_5_vl"):
        raise ValueError(f"model_type must be 'qwen3_vl' or 'qwen2_5_vl', got {model_type!r}")
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
        patch = 16
        config = Qwen3VLConfig(
            text_config=text_config,
            vision_config=dict(
                depth=2,
                hidden_size=vision_hidden_size,
                intermediate_size=vision_hidden_size * 2,
                num_heads=vision_heads,
                patch_size=patch,
                spatial_merge_size=2,
                temporal_patch_size=2,
                out_hidden_size=hidden_size,
                num_position_embeddings=256,
                deepstack_visual_indexes=[0],
            ),
            tie_word_embeddings=False,
            **tokens,
        )
        model = Qwen3VLForConditionalGeneration(config)
        video_processor = Qwen3VLVideoProcessor(patch_size=patch, merge_size=2, temporal_patch_size=2)
    else:
        from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

        patch = 14
        config = Qwen2_5_VLConfig(
            text_config=text_config,
            vision_config=dict(
                depth=2,
                hidden_size=vision_hidden_size,
                intermediate_size=vision_hidden_size * 2,
                num_heads=vision_heads,
                patch_size=patch,
                spatial_merge_size=2,
                temporal_patch_size=2,
                out_hidden_size=hidden_size,
                window_size=patch * 2 * 2,
                fullatt_block_indexes=[1],
            ),
            tie_word_embeddings=False,
            **tokens,
        )
        model = Qwen2_5_VLForConditionalGeneration(config)
        video_processor = None
    factor = patch * 2
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch,
        temporal_patch_size=2,
        merge_size=2,
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


BUILDERS = {
    "qwen3_vl": build_tiny_qwen3_vl,
    "qwen2_5_vl": build_tiny_qwen2_5_vl,
    "gemma3": build_tiny_gemma3,
    "llava": build_tiny_llava,
    "maira2": build_tiny_maira2,
}


def build_tiny(model_type: str, out_dir: str | Path, **kwargs) -> Path:
    """Build the tiny checkpoint of ``model_type`` (a key of :data:`BUILDERS`)."""
    try:
        builder = BUILDERS[model_type]
    except KeyError:
        raise ValueError(f"no tiny builder for {model_type!r}; choose one of {', '.join(BUILDERS)}") from None
    return builder(out_dir, **kwargs)
