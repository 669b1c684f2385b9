"""OpenAIBackend against a real OpenAI-compatible HTTP server on localhost.

The server is a small ``http.server`` shim written here, in the spirit of
``transformers serve``: it decodes the data-URL images, renders the chat template of
a tiny local Qwen3-VL and runs ``generate`` for every request. No canned answers.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from PIL import Image

from unirg.model import GenerationConfig, StudyInput, load_model
from unirg.model.openai_backend import OpenAIBackend, OpenAIBackendError
from unirg.trainer.tiny_models import build_tiny

API_KEY = "test-key"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ChatCompletionsShim:
    """``POST /v1/chat/completions`` served by a transformers model and processor."""

    def __init__(self, model, processor, name: str) -> None:
        self.model, self.processor, self.name = model, processor, name
        self.requests: list[dict] = []
        self._lock = threading.Lock()  # one generate at a time, like a single-GPU server
        shim = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def _send(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):  # noqa: N802 - http.server's naming
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                if self.headers.get("Authorization") != f"Bearer {API_KEY}":
                    return self._send(401, {"error": {"message": "invalid api key"}})
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                shim.requests.append(body)
                try:
                    self._send(200, shim.complete(body))
                except Exception as exc:  # report, do not kill the server
                    self._send(500, {"error": {"message": repr(exc)}})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @staticmethod
    def _image(url: str) -> Image.Image:
        header, data = url.split(",", 1)
        assert header == "data:image/png;base64", header
        return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")

    def complete(self, body: dict) -> dict:
        messages, images = [], []
        for message in body["messages"]:
            content = message["content"]
            if isinstance(content, str):
                content = [{"type": "text", "text": content}]
            items = []
            for item in content:
                if item["type"] == "image_url":
                    images.append(self._image(item["image_url"]["url"]))
                    items.append({"type": "image"})
                else:
                    items.append({"type": "text", "text": item["text"]})
            messages.append({"role": message["role"], "content": items})
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = self.processor(text=[text], images=[images], return_tensors="pt")
        temperature = float(body.get("temperature", 1.0))
        kwargs = dict(max_new_tokens=int(body.get("max_tokens", 64)), do_sample=temperature > 0)
        if temperature > 0:
            kwargs.update(temperature=temperature, top_p=float(body.get("top_p", 1.0)))
        with self._lock, torch.inference_mode():
            if body.get("seed") is not None:
                torch.manual_seed(int(body["seed"]))
            output = self.model.generate(**inputs, **kwargs)
        new = output[0, inputs["input_ids"].shape[1] :].tolist()
        eos = self.model.generation_config.eos_token_id
        eos = {eos} if isinstance(eos, int) else set(eos)
        finish = "stop" if any(token in eos for token in new) else "length"
        answer = self.processor.decode(new, skip_special_tokens=True)
        return {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.name,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": finish}
            ],
            "usage": {"prompt_tokens": int(inputs["input_ids"].shape[1]), "completion_tokens": len(new)},
        }

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def local_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("served") / "qwen3_vl"
    path = build_tiny("qwen3_vl", out, hidden_size=64, image_size=64)
    return load_model(path)


@pytest.fixture
def server(local_model):
    with ChatCompletionsShim(local_model.model, local_model.processor, "unirg-tiny") as shim:
        yield shim


def xray(value: int) -> Image.Image:
    image = Image.new("RGB", (512, 512), (value, value, value))
    image.paste((255 - value, 255 - value, 255 - value), (100, 100, 300, 400))
    return image


def studies() -> list[StudyInput]:
    return [
        StudyInput(frontal=xray(10), indication="Cough.", study_uid="1.1"),
        StudyInput(
            frontal=xray(60), prior_frontal=xray(90), prior_report="Findings: Clear.", study_uid="1.2"
        ),
        StudyInput(frontal=xray(120), study_uid="1.3"),
    ]


def test_served_drafts_equal_local_drafts(server, local_model):
    backend = OpenAIBackend(server.base_url, "unirg-tiny", api_key=API_KEY, info=local_model.info)
    config = GenerationConfig(max_new_tokens=10, batch_size=2)
    served = backend.draft(studies(), config)
    local = local_model.draft(studies(), config)
    assert [d.raw_text for d in served] == [d.raw_text for d in local]  # same prompt, same model, greedy
    assert [d.flags for d in served] == [d.flags for d in local]
    assert [d.study_uid for d in served] == ["1.1", "1.2", "1.3"]
    assert all(d.model_info == local_model.info for d in served)
    assert len(server.requests) == 3
    # batch_size=2 sends two requests at once: find study 1.1's (one image) by its indication, not by order
    first = next(r for r in server.requests if "Cough." in json.dumps(r))
    assert first["model"] == "unirg-tiny" and first["max_tokens"] == 10 and first["temperature"] == 0.0
    images = [item for item in first["messages"][-1]["content"] if item["type"] == "image_url"]
    assert len(images) == 1
    prior_request = next(r for r in server.requests if "Prior report" in json.dumps(r))
    assert sum(item["type"] == "image_url" for item in prior_request["messages"][-1]["content"]) == 2
    assert "Prior report: Findings: Clear." in served[1].prompt_text


def test_sampling_parameters_are_sent(server):
    backend = OpenAIBackend(server.base_url, "unirg-tiny", api_key=API_KEY)
    config = GenerationConfig(
        strategy="sampling", temperature=0.7, top_p=0.8, seed=3, max_new_tokens=5, batch_size=1
    )
    first = backend.draft(studies()[:1], config)[0].raw_text
    again = backend.draft(studies()[:1], config)[0].raw_text
    assert first == again
    sent = server.requests[-1]
    assert (sent["temperature"], sent["top_p"], sent["seed"]) == (0.7, 0.8, 3)
    assert backend.info.name == "unirg-tiny" and backend.info.weights_sha256 == ""


def test_errors_are_reported(server):
    with pytest.raises(OpenAIBackendError, match="401"):
        OpenAIBackend(server.base_url, "unirg-tiny", api_key="wrong").draft(studies()[:1])
    with pytest.raises(ValueError, match="beam"):
        beam = GenerationConfig(strategy="beam", num_beams=2)
        OpenAIBackend(server.base_url, "m").draft(studies()[:1], beam)
    with pytest.raises(ValueError, match="http"):
        OpenAIBackend("localhost:8000", "m")


def test_unreachable_server():
    backend = OpenAIBackend("http://127.0.0.1:9/v1", "m", timeout=2)
    with pytest.raises(OpenAIBackendError, match="cannot reach"):
        backend.draft(studies()[:1], GenerationConfig(max_new_tokens=2))
