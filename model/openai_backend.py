"""Draft reports through an OpenAI-compatible server (vLLM, ``transformers serve``, ...).

Sends the same prompt as the local backend (:func:`unirg.model.prompt.build_prompt`)
to ``POST {base_url}/chat/completions``, images as base64 PNG data URLs, one request
per study, ``generation.batch_size`` requests in flight. Only the standard library is
used for HTTP.

Beam search is not part of the OpenAI API, so ``strategy="beam"`` is refused.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from unirg.model.prompt import SYSTEM_PROMPT, Prompt, build_prompt, to_openai_messages
from unirg.model.study import Draft, GenerationConfig, ModelInfo, StudyInput

__all__ = ["OpenAIBackend", "OpenAIBackendError"]

log = logging.getLogger(__name__)


class OpenAIBackendError(RuntimeError):
    """The server refused a request or answered something that is not a chat completion."""


class OpenAIBackend:
    """``draft()`` against an OpenAI-compatible ``/v1/chat/completions`` endpoint.

    Parameters
    ----------
    base_url : str
        The API root, e.g. ``"http://127.0.0.1:8000/v1"`` (``/chat/completions`` is appended).
    model : str
        The served model name.
    api_key : str, optional
        Sent as ``Authorization: Bearer ...``.
    info : ModelInfo, optional
        Identity written into the SR. Default: ``ModelInfo(model, "served", "")`` (the
        weights hash of a remote server is unknown); pass
        :func:`unirg.model.model_info` of the served checkpoint when you have it.
    timeout : float
        Seconds per request.
    system_prompt, prior_report_style : str or None, str
        As in :func:`~unirg.model.prompt.build_prompt`; give the served checkpoint's prior-report style
        (its manifest's, :func:`unirg.model.model.manifest_prior_report_style`).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        info: ModelInfo | None = None,
        timeout: float = 300.0,
        system_prompt: str | None = SYSTEM_PROMPT,
        prior_report_style: str = "text",
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.info = info or ModelInfo(name=model[:64], version="served", weights_sha256="")
        self.timeout = timeout
        self.system_prompt = system_prompt
        self.prior_report_style = prior_report_style

    def request_body(self, prompt: Prompt, generation: GenerationConfig) -> dict:
        """The JSON body sent for ``prompt``."""
        if generation.strategy == "beam":
            raise ValueError(
                "beam search is not available through the OpenAI API; use strategy 'greedy' or 'sampling'"
            )
        body: dict = {
            "model": self.model,
            "messages": to_openai_messages(prompt),
            "max_tokens": generation.max_new_tokens,
            "n": 1,
        }
        if generation.strategy == "greedy":
            body["temperature"] = 0.0
        else:
            body.update(temperature=generation.temperature, top_p=generation.top_p)
        if generation.seed is not None:
            body["seed"] = generation.seed
        if generation.repetition_penalty != 1.0:
            body["repetition_penalty"] = generation.repetition_penalty  # vLLM extension
        return body

    def _post(self, body: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode("utf-8"), headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:500]
            raise OpenAIBackendError(f"{self.url} answered HTTP {exc.code}: {detail}") from exc
        except (urllib.error.URLError, TimeoutError) as exc:
            raise OpenAIBackendError(f"cannot reach {self.url}: {exc}") from exc

    def _draft_one(self, study: StudyInput, generation: GenerationConfig) -> Draft:
        prompt = build_prompt(study, system_prompt=self.system_prompt, prior_report_style=self.prior_report_style)
        answer = self._post(self.request_body(prompt, generation))
        try:
            choice = answer["choices"][0]
            text = (choice["message"].get("content") or "").strip()  # as the local backend's postprocess
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise OpenAIBackendError(f"not a chat completion: {json.dumps(answer)[:300]}") from exc
        finish = choice.get("finish_reason")
        truncated = True if finish == "length" else False if finish == "stop" else None
        return Draft.from_text(
            text,
            prompt_text=prompt.text_only(),
            model_info=self.info,
            truncated=truncated,
            study_uid=study.study_uid,
        )

    def draft(self, studies: Sequence[StudyInput], generation: GenerationConfig | None = None) -> list[Draft]:
        """One draft per study, in order; ``generation.batch_size`` requests at a time."""
        generation = generation or GenerationConfig()
        studies = list(studies)
        if generation.batch_size == 1 or len(studies) <= 1:
            return [self._draft_one(study, generation) for study in studies]
        with ThreadPoolExecutor(max_workers=generation.batch_size) as pool:
            return list(pool.map(lambda study: self._draft_one(study, generation), studies))
