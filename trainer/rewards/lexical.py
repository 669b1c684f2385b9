"""Word-overlap scores: sentence BLEU (sacrebleu), BLEU-2 and ROUGE-L (rouge-score). All in [0, 1].

Both texts are lower-cased (report style differs in capitalisation, not meaning). BLEU is sacrebleu's
sentence BLEU with its default ``exp`` smoothing and effective n-gram order (short texts do not score 0 for
lacking 4-grams); ROUGE-L is the F-measure of the longest common subsequence with the Porter stemmer.
"""

from __future__ import annotations

from functools import lru_cache

from sacrebleu.metrics import BLEU


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
