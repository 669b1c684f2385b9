"""Tiny random-weight report models of each family, built offline (for tests, the demo and ``--init``).

Every builder makes a locally trained tokenizer (byte-level BPE from the
``tokenizers`` library, trained on report texts plus the prompt's own words, with the
special tokens the family's processor needs), wraps it in the family's tokenizer class,
sets a chat template, builds the model from its config class and writes everything with
``save_pretrained`` in the layout of the family's published checkpoints, so
:func:`unirg.model.load_model` loads it the way it loads a real one.

Used by the tests and by ``unirg-trainer sft`` to initialise the demo model
(:func:`build_tiny_qwen3_vl`, about 1-5 M parameters depending on ``hidden_size`` and
the vocabulary).

Modules: :mod:`.vocab` (BPE tokenizers, chat templates) and :mod:`.builders` (one builder per family).
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

from pathlib import Path

from unirg.trainer.tiny_models.builders import (
    build_tiny_gemma3,
    build_tiny_llava,
    build_tiny_maira2,
    build_tiny_qwen2_5_vl,
    build_tiny_qwen3_vl,
)
from unirg.trainer.tiny_models.vocab import REPORT_CORPUS, train_bpe

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
