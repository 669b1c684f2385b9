"""The one reward-composition table: :class:`RewardTerm` rows ``(component, weight, scaling)``.

:func:`resolve_rewards` builds the rows from a config (preset + overrides: ``reward_components``,
``reward_options``, ``reward_standardize`` and the scorer model paths). The same rows feed TRL (one reward
function per row, :func:`trl_reward_weights`) and :class:`~unirg.trainer.rewards.composite.CompositeReward`
(:func:`composite_from_terms`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "REAL_OF",
    "SLOTS",
    "SUBSTITUTE_OF",
    "RewardTerm",
    "composite_from_terms",
    "resolve_rewards",
    "reward_table",
    "trl_reward_weights",
]

SUBSTITUTE_OF = {
    "embedding_cosine": "BERTScore",
    "semb_substitute": "SembScore",
    "radgraph_substitute": "RadGraph-F1",
}
REAL_OF = {"bertscore": "BERTScore", "sembscore": "SembScore", "radgraph_f1": "RadGraph-F1", "bleu": "BLEU",
           "judge": "LLM judge 1/(1+significant errors)"}


@dataclass(frozen=True)
class Slot:
    """A config key filled by the real metric when ``model_attr`` names a model, else by an offline substitute."""

    model_attr: str | None
    real: str
    real_description: str  # formatted with the config
    substitute: str | None = None
    substitute_description: str = ""
    options: Callable[[Any], dict[str, Any]] = lambda cfg: {}


SLOTS: dict[str, Slot] = {
    "bertscore": Slot(
        "bertscore_model", "bertscore", "BERTScore F1 ({cfg.bertscore_model}, layer {cfg.bertscore_layers})",
        "embedding_cosine", "SUBSTITUTE for BERTScore: sentence-embedding cosine (all-MiniLM-L6-v2 by default)",
        lambda cfg: {"model_path": cfg.bertscore_model, "num_layers": cfg.bertscore_layers}),
    "semb": Slot(
        "chexbert_model", "sembscore", "SembScore: cosine of CheXbert embeddings ({cfg.chexbert_model})",
        "semb_substitute", "SUBSTITUTE for SembScore: cosine of the rule-based labeler's 14-observation vectors",
        lambda cfg: {"model_path": cfg.chexbert_model}),
    "radgraph": Slot(
        "radgraph_model", "radgraph_f1", "RadGraph-F1 ({cfg.radgraph_model})",
        "radgraph_substitute", "SUBSTITUTE for RadGraph-F1: entity/attribute overlap F1 from the rule-based labeler",
        lambda cfg: {"model_path": cfg.radgraph_model}),
    "judge": Slot(None, "judge", "1 / (1 + clinically significant errors) from the CheXprompt-style LLM judge"),
}
"""Reward slots of the config; any other key names a registered component directly."""


@dataclass
class RewardTerm:
    """One reward term: the config key (slot or component), what fills it, its weight and scaling."""

    key: str
    component: str
    weight: float
    real: bool
    description: str
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    standardize: bool = False
    mean: float | None = None
    std: float | None = None

    @property
    def effective_weight(self) -> float:
        """The weight TRL applies: ``weight / std`` when standard-scaled (see :mod:`unirg.trainer.rl`)."""
        return self.weight / self.std if self.standardize and self.std else self.weight

    def row(self) -> dict[str, Any]:
        return {
            "key": self.key, "component": self.component, "real_metric": self.real, "description": self.description,
            "weight": self.weight, "standardize": self.standardize, "mean": self.mean, "std": self.std,
            "effective_weight": self.effective_weight,
        }


def _fill(key: str, cfg: Any) -> tuple[str, bool, str, dict[str, Any]]:
    """``(component, real, description, options)`` for config key ``key``."""
    slot = SLOTS.get(key)
    if slot is None:
        real = key not in SUBSTITUTE_OF and not key.endswith("_substitute")
        description = f"SUBSTITUTE for {SUBSTITUTE_OF[key]}" if key in SUBSTITUTE_OF else REAL_OF.get(key, key)
        return key, real, description, {}
    if slot.model_attr is None or getattr(cfg, slot.model_attr):
        options = slot.options(cfg) if slot.model_attr else {}
        return slot.real, True, slot.real_description.format(cfg=cfg), options
    return str(slot.substitute), False, slot.substitute_description, {}


def resolve_rewards(cfg: Any) -> list[RewardTerm]:
    """The reward terms of ``cfg`` (an :class:`~unirg.trainer.rl_config.RLConfig`): slots resolved to the real
    metric or its offline substitute."""
    from unirg.trainer.rewards.composite import REGISTRY
    from unirg.trainer.rl_config import RLConfigError

    standardize = set(cfg.reward_standardize) if cfg.reward_standardize is not None else {
        k for k in cfg.reward_components if k != "judge"}
    terms = []
    for key, weight in cfg.reward_components.items():
        component, real, description, options = _fill(key, cfg)
        if real and component in ("sembscore", "radgraph_f1") and component not in REGISTRY:
            flag = "--chexbert-model" if component == "sembscore" else "--radgraph-model"
            raise RLConfigError(
                f"{flag} asks for the real {REAL_OF[component]}, but no {component!r} reward component is "
                f"registered in unirg.trainer.rewards (its scorer package is not part of this install); register "
                f"one with unirg.trainer.rewards.register_component({component!r}, factory) before training, or "
                f"drop {flag} to use the offline substitute"
            )
        options.update(cfg.reward_options.get(key, {}))
        if component != key:
            options.update(cfg.reward_options.get(component, {}))
        terms.append(RewardTerm(key=key, component=component, weight=float(weight), real=real,
                                description=description, options=options,
                                standardize=key in standardize or component in standardize))
    return terms


def trl_reward_weights(terms: Sequence[RewardTerm]) -> list[float]:
    """TRL's ``reward_weights``, one per term (scaling folded into the weight)."""
    return [t.effective_weight for t in terms]


def composite_from_terms(terms: Sequence[RewardTerm], *, components: Mapping[str, Any] | None = None,
                         **kwargs: Any):
    """The same terms as one :class:`~unirg.trainer.rewards.composite.CompositeReward` (keyed by component);
    ``components`` gives ready-built ones (e.g. the judge), ``kwargs`` go to the constructor."""
    from unirg.trainer.rewards.composite import CompositeReward

    return CompositeReward(
        {t.component: t.weight for t in terms},
        options={t.component: t.options for t in terms if t.options and t.component not in (components or {})},
        components=components,
        scaling={t.component: (t.mean, t.std) for t in terms if t.standardize and t.std and t.mean is not None},
        **kwargs,
    )


def reward_table(terms: Sequence[RewardTerm]) -> str:
    """A plain-text table of the reward terms (logged at start-up)."""
    lines = ["reward terms (TRL logs rewards/<component>/mean|std per step):"]
    for s in terms:
        scale = f"scaled (x - {s.mean:.4g}) / {s.std:.4g}" if s.standardize and s.std else "unscaled"
        lines.append(f"  {s.key:<10} -> {s.component:<20} weight {s.weight:<6g} {scale:<32} "
                     f"effective weight {s.effective_weight:.4g}  [{'real' if s.real else 'SUBSTITUTE'}] "
                     f"{s.description}")
    return "\n".join(lines)
