"""Tokenizers and chat templates of the tiny models: byte-level BPE trained on report texts plus the
prompt's own words, with each family's special tokens; short Jinja chat templates per family."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

from unirg.model.prompt import prompt_corpus

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
