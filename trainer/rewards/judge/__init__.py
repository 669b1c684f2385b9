"""LLM-judged clinical errors: a CheXprompt/GREEN-style judge as a GRPO reward component.

A judge model reads a reference report and a candidate report and counts the candidate's
clinically *significant* and *insignificant* errors in six categories:

====  =====================================================================
A     false report of a finding (the candidate states a finding the reference lacks)
B     missing a finding (the reference has it, the candidate does not)
C     misidentified anatomic location / position / side of a finding
D     misassessed severity of a finding
E     mentioning a comparison (prior study) that is not in the reference
F     omitting a comparison that describes a change from a prior study
====  =====================================================================

The reward is UniRG's step-2 shape, ``1 / (1 + significant errors)`` (1.0 for a report with
no significant error). A sample whose answer cannot be parsed gets ``None``: a missing reward, not the
worst score. It is logged (``event=judge_unparsed``) and counted (``ClinicalErrorJudge.unparsed_count``,
metric ``judge/unparsed``); ``unirg-trainer rl`` leaves it out of its GRPO group (see
:func:`make_judge_reward` and :func:`unirg.trainer.rl.missing_as_group_mean`).

Pieces, each usable alone (modules: ``prompt``, ``parsing``, ``backends``, ``cache``, ``reward``):

- :func:`build_judge_messages` - the prompt (``PROMPT_VERSION``; ``answer_format`` "lines" or "json").
- :func:`parse_judge_answer` - pure, model-free parsing of the judge's answer into a :class:`JudgeResult`
  (JSON, CheXprompt-style category lines, ``A=1 B=0`` runs, numbers as words, missing categories
  kept as ``None``, stated totals checked against category sums).
- :class:`TransformersJudgeBackend` (a local causal LM by path, optional ``gguf_file``, chat template,
  greedy) and :class:`OpenAIJudgeBackend` (``POST {base_url}/chat/completions``), both
  :class:`JudgeBackend`.
- :class:`JudgeCache` - sha256(judge id, prompt version, candidate, reference) -> raw answer, in memory
  and optionally in an SQLite file, so repeated RL steps do not re-judge. The raw answer is cached, not
  the parse, so a parser fix applies to cached answers too.
- :class:`ClinicalErrorJudge` - prompt + backend + cache + parser.
- :func:`judge_reward`, :func:`make_judge_reward`, :func:`judge_from_config`, :func:`require_judge`,
  :class:`JudgeNotConfigured`.
"""

from unirg.trainer.rewards.judge.backends import (
    JudgeBackend,
    Messages,
    OpenAIJudgeBackend,
    TransformersJudgeBackend,
)
from unirg.trainer.rewards.judge.cache import JudgeCache, cache_key
from unirg.trainer.rewards.judge.parsing import JudgeResult, parse_count, parse_judge_answer
from unirg.trainer.rewards.judge.prompt import (
    ANSWER_FORMATS,
    CATEGORIES,
    CATEGORY_LABELS,
    CATEGORY_NAMES,
    CONFIG_KEY,
    ENV_API_KEY,
    ENV_BASE_URL,
    ENV_MODEL,
    PROMPT_VERSION,
    SYSTEM_PROMPT,
    WEIGHT_KEY,
    JudgeError,
    JudgeNotConfigured,
    build_judge_messages,
    prompt_version,
)
from unirg.trainer.rewards.judge.reward import (
    ClinicalErrorJudge,
    get_default_judge,
    judge_from_config,
    judge_reward,
    make_judge_reward,
    require_judge,
    set_default_judge,
)

__all__ = [
    "CATEGORIES",
    "CATEGORY_NAMES",
    "CONFIG_KEY",
    "PROMPT_VERSION",
    "ClinicalErrorJudge",
    "JudgeBackend",
    "JudgeCache",
    "JudgeError",
    "JudgeNotConfigured",
    "JudgeResult",
    "OpenAIJudgeBackend",
    "TransformersJudgeBackend",
    "build_judge_messages",
    "cache_key",
    "get_default_judge",
    "judge_from_config",
    "judge_reward",
    "make_judge_reward",
    "parse_count",
    "parse_judge_answer",
    "require_judge",
    "set_default_judge",
]

