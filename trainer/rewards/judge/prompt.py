"""The judge prompt: error categories, configuration names, errors and :func:`build_judge_messages`."""

from __future__ import annotations

CATEGORIES: tuple[str, ...] = ("A", "B", "C", "D", "E", "F")
CATEGORY_NAMES: dict[str, str] = {
    "A": "false report of a finding",
    "B": "missing a finding",
    "C": "misidentification of a finding's anatomic location/position",
    "D": "misassessment of the severity of a finding",
    "E": "mentioning a comparison that isn't in the reference",
    "F": "omitting a comparison detailing a change from a prior study",
}
#: Short labels used in the answer template.
CATEGORY_LABELS: dict[str, str] = {
    "A": "false finding",
    "B": "missed finding",
    "C": "wrong location",
    "D": "wrong severity",
    "E": "false comparison",
    "F": "missed comparison",
}

#: Bump when the prompt text changes: it is part of every cache key.
PROMPT_VERSION = "unirg-judge-v1"

#: The config section that configures the judge (and the weight name that asks for it).
CONFIG_KEY = "reward.judge"
WEIGHT_KEY = "judge"
ENV_BASE_URL = "UNIRG_JUDGE_BASE_URL"
ENV_MODEL = "UNIRG_JUDGE_MODEL"
ENV_API_KEY = "UNIRG_JUDGE_API_KEY"


class JudgeError(RuntimeError):
    """A judge backend failed (HTTP error, malformed server response, model load failure)."""


class JudgeNotConfigured(RuntimeError):
    """The reward asks for the LLM judge but none is configured.

    ``config_key`` names what to set (``reward.judge``).
    """

    def __init__(self, message: str | None = None, *, config_key: str = CONFIG_KEY) -> None:
        self.config_key = config_key
        super().__init__(
            message
            or (
                f"the LLM clinical-error judge is not configured: set `{config_key}` in the config, e.g. "
                f"`{config_key}: {{backend: transformers, model: /path/to/instruct-model}}` or "
                f"`{config_key}: {{backend: openai, base_url: http://host:8000/v1, model: NAME}}` "
                f"(or the environment variables {ENV_BASE_URL} and {ENV_MODEL}), "
                f"or set the `{WEIGHT_KEY}` reward weight to 0"
            )
        )


SYSTEM_PROMPT = (
    "You are an experienced radiologist who checks chest X-ray reports for clinical accuracy. "
    "You answer only in the exact format you are asked for."
)

_INSTRUCTIONS = """\
Check a CANDIDATE chest X-ray report against the REFERENCE report that a radiologist wrote for the \
same study. The reference is correct. Count the mistakes in the candidate, sorted into six kinds:
A. false finding: the candidate states a finding that is not in the reference.
B. missed finding: the candidate leaves out a finding that the reference reports.
C. wrong location: the candidate puts a finding in the wrong anatomic place, side or position.
D. wrong severity: the candidate makes a finding more or less severe than the reference does.
E. false comparison: the candidate compares with a prior study where the reference makes no such comparison.
F. missed comparison: the candidate leaves out a change since a prior study that the reference describes.
Call a mistake significant if it could change the patient's care, and insignificant otherwise. \
Count every mistake once. Different wording with the same meaning is not a mistake."""

_LINES_TEMPLATE = "\n".join(
    ["Significant errors:"]
    + [f"{c} {CATEGORY_LABELS[c]}: <number>" for c in CATEGORIES]
    + ["Insignificant errors:"]
    + [f"{c} {CATEGORY_LABELS[c]}: <number>" for c in CATEGORIES]
)
_JSON_TEMPLATE = (
    '{"significant": {'
    + ", ".join(f'"{c}": <number>' for c in CATEGORIES)
    + '}, "insignificant": {'
    + ", ".join(f'"{c}": <number>' for c in CATEGORIES)
    + "}}"
)

ANSWER_FORMATS = ("lines", "json")


def build_judge_messages(
    candidate: str, reference: str, *, answer_format: str = "lines", system_prompt: str | None = SYSTEM_PROMPT
) -> list[dict[str, str]]:


    """The chat messages that ask a judge to count the candidate's errors.

    >>> msgs = build_judge_messages("No effusion.", "Small left effusion.")
    >>> [m["role"] for m in msgs]
    ['system', 'user']
    >>> "REFERENCE:\\nSmall left effusion." in msgs[1]["content"]
    True
    >>> msgs[1]["content"].rstrip().endswith("F missed comparison: <number>")
    True
    """
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got {answer_format!r}")
    template = _LINES_TEMPLATE if answer_format == "lines" else _JSON_TEMPLATE
    what = "these 14 lines" if answer_format == "lines" else "this JSON object"
    user = (
        f"{_INSTRUCTIONS}\n\n"
        f"REFERENCE:\n{(reference or '').strip() or '(empty)'}\n\n"
        f"CANDIDATE:\n{(candidate or '').strip() or '(empty)'}\n\n"
        f"Reply with exactly {what} and nothing else, replacing each <number> with a whole number "
        f"(0 when there is no such mistake):\n{template}\n"
    )
    messages = [{"role": "user", "content": user}]
    if system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def prompt_version(answer_format: str = "lines") -> str:
    """The cache-relevant identity of the prompt (``PROMPT_VERSION`` + answer format)."""
    return f"{PROMPT_VERSION}/{answer_format}"
