"""Chest X-ray report inference: pixels -> prompt -> model family -> parsed draft.

Public API::

    from unirg.model import load_model, GenerationConfig, StudyInput

    model = load_model("/models/unirg-cxr")            # Qwen3-VL, Qwen2.5-VL, Gemma 3, MAIRA-2, LLaVA
    study = StudyInput.from_datasets(frontal_ds, indication="Cough.")
    [draft] = model.draft([study], GenerationConfig(max_new_tokens=300))
    draft.findings, draft.impression, draft.flags, model.info

``OpenAIBackend`` offers the same ``draft()`` against an OpenAI-compatible server.
Heavy imports (torch, transformers) happen on first use of the model classes.
"""

from unirg.model.study import Draft, GenerationConfig, ModelInfo, StudyInput

__all__ = [
    "Draft",
    "GenerationConfig",
    "ModelInfo",
    "OpenAIBackend",
    "ReportModel",
    "StudyInput",
    "load_model",
    "model_info",
]

_LAZY = {
    "load_model": "unirg.model.model",
    "model_info": "unirg.model.model",
    "ReportModel": "unirg.model.model",
    "OpenAIBackend": "unirg.model.openai_backend",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'unirg.model' has no attribute {name!r}")

import logging  # noqa: E402

# A library: log records go nowhere until the application (our CLIs) configures logging.
logging.getLogger(__name__).addHandler(logging.NullHandler())
