"""Judge backends: a local causal LM (:class:`TransformersJudgeBackend`) and an OpenAI-compatible server
(:class:`OpenAIJudgeBackend`), both :class:`JudgeBackend`."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, runtime_checkable

from unirg.trainer.rewards.judge.prompt import (
    CONFIG_KEY,
    ENV_API_KEY,
    ENV_BASE_URL,
    ENV_MODEL,
    JudgeError,
    JudgeNotConfigured,
)


Messages = list[dict[str, str]]


@runtime_checkable
class JudgeBackend(Protocol):
    """Anything that answers chat conversations. ``judge_id`` identifies the model and generation
    settings (it is part of the cache key)."""

    judge_id: str

    def generate(self, conversations: Sequence[Messages]) -> list[str]:
        """One answer text per conversation, greedy / temperature 0."""
        ...


class TransformersJudgeBackend:
    """A local causal LM (any ``AutoModelForCausalLM`` checkpoint with a chat template) as judge.

    Parameters
    ----------
    model_path : str or Path
        Checkpoint directory (or hub-style id already in the local cache).
    gguf_file : str, optional
        A GGUF file name inside ``model_path``; transformers dequantises it to float on load.
    max_new_tokens : int
        Answer length cap (the 14-line answer needs about 110 tokens with SmolLM2's tokenizer).
    batch_size : int
        Conversations per ``generate`` call (left padding).
    device, dtype : optional
        Where and in what precision to run; default CPU/float32 or the model's own.
    model, tokenizer : optional
        Already-loaded objects (skips loading; ``model_path`` still names the judge).
    judge_id : str, optional
        Overrides the default ``transformers:<path>[#gguf]|max_new_tokens=N``.

    The model is loaded on first use (thread-safe), so building the backend from a config is cheap.
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        gguf_file: str | None = None,
        max_new_tokens: int = 160,
        batch_size: int = 8,
        device: str | None = None,
        dtype: Any = None,
        model: Any = None,
        tokenizer: Any = None,
        judge_id: str | None = None,
    ) -> None:
        self.model_path = str(model_path)
        self.gguf_file = gguf_file
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size = max(1, int(batch_size))
        self.device = device
        self.dtype = dtype
        self._model = model
        self._tokenizer = tokenizer
        self._lock = threading.Lock()
        name = os.path.abspath(self.model_path) if os.path.exists(self.model_path) else self.model_path
        self.judge_id = judge_id or (
            f"transformers:{name}{'#' + gguf_file if gguf_file else ''}|max_new_tokens={self.max_new_tokens}"
        )
        self.calls = 0  # conversations generated (not counting cache hits upstream)

    def load(self) -> tuple[Any, Any]:
        """Load (once) and return ``(model, tokenizer)``."""
        with self._lock:
            if self._model is None or self._tokenizer is None:
                from transformers import AutoModelForCausalLM, AutoTokenizer

                kw: dict[str, Any] = {}
                if self.gguf_file:
                    kw["gguf_file"] = self.gguf_file
                try:
                    if self._tokenizer is None:
                        self._tokenizer = AutoTokenizer.from_pretrained(self.model_path, **kw)
                    if self._model is None:
                        mkw = dict(kw)
                        if self.dtype is not None:
                            mkw["dtype"] = self.dtype
                        self._model = AutoModelForCausalLM.from_pretrained(self.model_path, **mkw)
                except (OSError, ValueError) as exc:
                    raise JudgeError(f"cannot load judge model {self.model_path!r}: {exc}") from exc
                if self.device:
                    self._model.to(self.device)
                self._model.eval()
            tok = self._tokenizer
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            tok.padding_side = "left"
            if getattr(tok, "chat_template", None) is None:
                raise JudgeError(f"judge model {self.model_path!r} has no chat template; use an instruction model")
        return self._model, self._tokenizer

    def generate(self, conversations: Sequence[Messages]) -> list[str]:
        import torch

        model, tok = self.load()
        out: list[str] = []
        for i in range(0, len(conversations), self.batch_size):
            chunk = conversations[i : i + self.batch_size]
            texts = [tok.apply_chat_template(list(c), tokenize=False, add_generation_prompt=True) for c in chunk]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            with torch.inference_mode():
                gen = model.generate(
                    **enc,
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    pad_token_id=tok.pad_token_id,
                )
            new = gen[:, enc["input_ids"].shape[1] :]
            out.extend(tok.batch_decode(new, skip_special_tokens=True))
            self.calls += len(chunk)
        return [s.strip() for s in out]


class OpenAIJudgeBackend:
    """A judge behind an OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, ``transformers
    serve``, llama.cpp server, a hosted API).

    ``base_url``, ``model`` and ``api_key`` default to the environment variables
    ``UNIRG_JUDGE_BASE_URL``, ``UNIRG_JUDGE_MODEL`` and ``UNIRG_JUDGE_API_KEY`` (then
    ``OPENAI_API_KEY``). Requests use temperature 0 and ``max_tokens``; up to ``concurrency`` are
    in flight; failed requests (connection errors, HTTP 429/5xx) are retried ``retries`` times.
    Only the standard library is used for HTTP.
    """

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        *,
        max_tokens: int = 160,
        timeout: float = 120.0,
        concurrency: int = 4,
        retries: int = 2,
        judge_id: str | None = None,
    ) -> None:
        base_url = base_url or os.environ.get(ENV_BASE_URL)
        model = model or os.environ.get(ENV_MODEL)
        if not base_url or not model:
            missing = [n for n, v in ((ENV_BASE_URL, base_url), (ENV_MODEL, model)) if not v]
            raise JudgeNotConfigured(
                f"OpenAI-compatible judge needs base_url and model: set `{CONFIG_KEY}.base_url` / "
                f"`{CONFIG_KEY}.model` or the environment variable(s) {', '.join(missing)}"
            )
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.model = model
        self.api_key = api_key or os.environ.get(ENV_API_KEY) or os.environ.get("OPENAI_API_KEY")
        self.max_tokens = int(max_tokens)
        self.timeout = timeout
        self.concurrency = max(1, int(concurrency))
        self.retries = max(0, int(retries))
        self.judge_id = judge_id or f"openai:{self.base_url}|{model}|max_tokens={self.max_tokens}"
        self.calls = 0

    def request_body(self, messages: Messages) -> dict:
        return {
            "model": self.model,
            "messages": list(messages),
            "temperature": 0,
            "max_tokens": self.max_tokens,
            "n": 1,
        }

    def _post(self, messages: Messages) -> str:
        data = json.dumps(self.request_body(messages)).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    payload = json.loads(resp.read().decode("utf-8"))
                break
            except urllib.error.HTTPError as exc:
                detail = exc.read().decode("utf-8", "replace")[:500]
                last = JudgeError(f"judge endpoint {self.url} answered HTTP {exc.code}: {detail}")
                if exc.code not in (408, 429) and exc.code < 500:
                    raise last from exc
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                last = JudgeError(f"judge endpoint {self.url} unreachable: {exc}")
            except ValueError as exc:
                raise JudgeError(f"judge endpoint {self.url} answered something that is not JSON: {exc}") from exc
            if attempt < self.retries:
                time.sleep(min(2.0**attempt, 10.0))
        else:
            assert last is not None
            raise last
        try:
            content = payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise JudgeError(f"judge endpoint {self.url} answered no chat completion: {str(payload)[:300]}") from exc
        self.calls += 1
        return (content or "").strip()

    def generate(self, conversations: Sequence[Messages]) -> list[str]:
        if len(conversations) <= 1 or self.concurrency == 1:
            return [self._post(c) for c in conversations]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(conversations))) as pool:
            return list(pool.map(self._post, conversations))
