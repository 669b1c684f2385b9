"""Reward components for report generation: pure functions, alone or as a weighted sum.

Every component exists in two shapes:

- a **pairwise scorer** ``f(candidate: str, reference: str) -> float`` (``bleu``, ``rouge_l``, ...), and
- a **TRL reward function** ``reward(completions, reference=[...], **kwargs) -> list[float | None]`` (the
  ``*_reward`` objects, :class:`EmbeddingCosine`, :class:`CompositeReward`): ``completions`` as TRL passes them
  (strings or conversational message lists), ``reference`` the dataset column with the reference reports.
  A missing reference gives ``None`` (TRL skips the sample); a blank completion gets the worst score.

===================== ====================================================== ======================= ========
component             what                                                   real or substitute      range
===================== ====================================================== ======================= ========
``bleu``              sacrebleu sentence BLEU-4 (lower-cased)                real                    [0, 1]
``bleu2``             sentence BLEU-2                                        real                    [0, 1]
``rouge_l``           rouge-score ROUGE-L F (stemmed)                        real                    [0, 1]
``chexpert_f1``       F1 of positive CheXpert-14 labels (uncertain counts    real metric, rule-based  [0, 1]
                      as positive), labels from :mod:`unirg.model.labeler` labeler (not CheXbert)
``chexpert_label_margin`` CheXpert-14 labels right - w x labels wrong; summed  real metric's terms,   unbounded
                      over a set it ranks a change as the set's micro F1     rule-based labeler
                      does (``error_weight`` w = the set's TP / (FP + FN))
``embedding_cosine``  cosine of sentence-transformers embeddings (default:   real                    [-1, 1]
                      the shipped all-MiniLM-L6-v2)
``bertscore``         BERTScore F1, local model (needs ``bert-score``)       real (optional)         ~[0, 1]
``semb_substitute``   cosine of the labeler's 14-label vectors               **substitute** for      [0, 1]
                                                                             SembScore (CheXbert)
``radgraph_substitute`` F1 of labeler mentions (observation, label,          **substitute** for      [0, 1]
                      laterality)                                            RadGraph-F1
===================== ====================================================== ======================= ========

The substitutes stand in for the RadCliQ components whose models (CheXbert, RadGraph) cannot be downloaded
here; they measure the same kind of agreement (clinical labels, entities with attributes) with the rule-based
labeler, and are not comparable with published SembScore / RadGraph-F1 / RadCliQ numbers.

Reward-hacking notes: the labeler gives a blank text no labels (not "No Finding"), so an empty completion
scores 0 on ``chexpert_f1`` against a normal reference; label-based scores ignore fluency and can be gamed by
listing observations, so combine them with a text score (BLEU / ROUGE-L / embedding) in a
:class:`CompositeReward`. An LLM judge (CheXprompt-style, ``unirg.trainer.rewards.judge``) joins a composite
as ``components={"judge": make_judge_reward(...)}`` (any TRL-shaped function is wrapped in
:class:`FunctionReward`), or by name after :func:`register_component`.

One composition route (:mod:`.table`): a config resolves to :class:`RewardTerm` rows ``(component, weight,
scaling)`` (:func:`resolve_rewards`); the same rows give TRL's ``reward_weights`` (:func:`trl_reward_weights`,
one reward function per row in ``unirg-trainer rl``) and a :class:`CompositeReward` (:func:`composite_from_terms`).

>>> from unirg.trainer.rewards import chexpert_f1_reward
>>> chexpert_f1_reward(["No pneumothorax.", "Large left pneumothorax."], reference=["No pneumothorax."] * 2)
[1.0, 0.0]
"""

from unirg.model.textmetrics import bleu, bleu2, rouge_l
from unirg.trainer.rewards.base import FunctionReward, PairwiseReward, Reward, completion_text
from unirg.trainer.rewards.clinical import (
    TOP5,
    chexpert_f1,
    chexpert_label_margin,
    label_vector,
    positive_set,
    radgraph_substitute,
    semb_substitute,
)
from unirg.trainer.rewards.composite import (
    MODEL_FREE,
    REGISTRY,
    CompositeReward,
    build_component,
    register_component,
)
from unirg.trainer.rewards.semantic import BERTScore, EmbeddingCosine, default_embedding_model_path
from unirg.trainer.rewards.table import RewardTerm, composite_from_terms, resolve_rewards, trl_reward_weights

# Ready-made TRL reward functions (picklable: module-level scorers inside a plain class instance).
bleu_reward = PairwiseReward("bleu", bleu)
bleu2_reward = PairwiseReward("bleu2", bleu2)
rouge_l_reward = PairwiseReward("rouge_l", rouge_l)
chexpert_f1_reward = PairwiseReward("chexpert_f1", chexpert_f1)
semb_substitute_reward = PairwiseReward("semb_substitute", semb_substitute)
radgraph_substitute_reward = PairwiseReward("radgraph_substitute", radgraph_substitute)

__all__ = [
    "MODEL_FREE",
    "REGISTRY",
    "TOP5",
    "BERTScore",
    "CompositeReward",
    "EmbeddingCosine",
    "FunctionReward",
    "PairwiseReward",
    "Reward",
    "RewardTerm",
    "bleu",
    "bleu2",
    "bleu2_reward",
    "bleu_reward",
    "build_component",
    "chexpert_f1",
    "chexpert_f1_reward",
    "chexpert_label_margin",
    "completion_text",
    "composite_from_terms",
    "default_embedding_model_path",
    "label_vector",
    "positive_set",
    "radgraph_substitute",
    "radgraph_substitute_reward",
    "register_component",
    "resolve_rewards",
    "rouge_l",
    "rouge_l_reward",
    "semb_substitute",
    "semb_substitute_reward",
    "trl_reward_weights",
]
