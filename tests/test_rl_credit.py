"""Finding credit (``finding_credit``): the labeler's verdict on each sentence of a rollout reaches that sentence's
tokens as extra advantage. Pure functions, then the trainer's tokens with a real tokenizer, then one RL step."""

import doctest
import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from unirg.trainer.rl import train_rl
from unirg.trainer.rl_config import RLConfigError, load_rl_config
from unirg.trainer import rl_credit
from unirg.trainer.rl_credit import sentence_credits, token_char_ends, token_credits
from unirg.trainer.rl_scst import SelfCriticalGRPOTrainer

from conftest import tiny_greedy_rl_config

TEXT = "FINDINGS: Small left pleural effusion. No pneumothorax. Mild pulmonary edema. IMPRESSION: Effusion."


def _span(text, sentence):
    start = text.index(sentence)
    return start, start + len(sentence)


def test_sentence_credit_follows_micro_f1_terms():
    reference = frozenset({"Pleural Effusion", "Pneumothorax"})
    credits = {text_of: c for (s, e, c) in sentence_credits(TEXT, reference) for text_of in [TEXT[s:e]]}
    # a sentence runs from the previous one's end, so a section header goes with its first sentence
    assert credits["FINDINGS: Small left pleural effusion."] == 2.0      # found: FN -> TP, 1 + w
    assert credits["No pneumothorax."] == -1.0                 # denies a present finding: -w
    assert credits["Mild pulmonary edema."] == -1.0            # invents one: -w
    assert credits["IMPRESSION: Effusion."] == 2.0
    # a denied absent finding earns nothing: negatives are not F1 terms, and listing them is not rewarded
    assert sentence_credits("No pneumothorax.", frozenset()) == []
    # the error weight moves the stating threshold w / (1 + 2w)
    assert sentence_credits("Mild pulmonary edema.", frozenset(), error_weight=0.5) == [(0, 21, -0.5)]
    assert sentence_credits("Mild pulmonary edema.", frozenset({"Edema"}), error_weight=0.5) == [(0, 21, 1.5)]
    # two findings in one sentence add up; an uncertain statement counts as stated (uncertain = positive)
    assert sentence_credits("Cardiomegaly and left effusion.", frozenset({"Cardiomegaly"})) == [(0, 31, 1.0)]
    assert sentence_credits("Possible left effusion.", frozenset({"Pleural Effusion"})) == [(0, 23, 2.0)]
    with pytest.raises(ValueError, match="error_weight"):
        sentence_credits(TEXT, reference, error_weight=-1)


def test_tokens_take_the_credit_of_the_sentence_their_last_character_is_in():
    assert token_credits([4, 9, 10, 15, 15], [(0, 10, 2.0), (11, 15, -1.0)]) == [2.0, 2.0, 2.0, -1.0, 0.0]
    assert token_credits([3, 6], []) == [0.0, 0.0]
    assert token_char_ends([1, 2, 3], lambda ids: "ab"[: len(ids)] + "c" * max(0, len(ids) - 2)) == [1, 2, 3]


def test_trainer_credits_the_tokens_of_each_sentence_with_the_real_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    from unirg.trainer.tiny_models import build_tiny_qwen3_vl

    tiny = build_tiny_qwen3_vl(tmp_path / "tiny", hidden_size=64, num_layers=2, vision_hidden_size=32, image_size=64)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    host = SimpleNamespace(processing_class=SimpleNamespace(tokenizer=tokenizer),
                           args=SimpleNamespace(finding_credit_error_weight=1.0))
    credits = SelfCriticalGRPOTrainer._finding_credits(
        host, [{"reference": "Small left pleural effusion."}, {"reference": None}], [ids, ids], len(ids) + 3)
    assert credits.shape == (2, len(ids) + 3)
    assert not credits[1].any()  # no reference: no credit
    decode = tokenizer.decode
    ends = token_char_ends(ids, lambda x: decode(x, skip_special_tokens=True))
    text = decode(ids, skip_special_tokens=True)
    effusion, edema = _span(text, "FINDINGS: Small left pleural effusion."), _span(text, "Mild pulmonary edema.")
    for k, end in enumerate(ends):
        start = ends[k - 1] if k else 0
        if end == start:
            assert credits[0, k] == 0  # EOS
        elif effusion[0] <= end - 1 < effusion[1]:
            assert credits[0, k] == 2.0, decode(ids[k:k + 1])
        elif edema[0] <= end - 1 < edema[1]:
            assert credits[0, k] == -1.0, decode(ids[k:k + 1])
    assert not credits[0, len(ids):].any()  # padding


def test_finding_credit_needs_the_greedy_baseline():
    cfg = load_rl_config(preset="unirg-step1", overrides={"advantage_baseline": "greedy", "finding_credit": 0.1})
    assert cfg.summary()["finding_credit"] == 0.1
    with pytest.raises(RLConfigError, match="greedy"):
        load_rl_config(preset="unirg-step1", overrides={"finding_credit": 0.1})
    with pytest.raises(RLConfigError, match=">= 0"):
        load_rl_config(preset="unirg-step1", overrides={"advantage_baseline": "greedy", "finding_credit": -0.1})


@pytest.mark.slow
def test_training_with_finding_credit_logs_it(testbed, tmp_path):
    torch.set_num_threads(2)
    cfg = tiny_greedy_rl_config(testbed, tmp_path, max_steps=2, learning_rate=1e-3, finding_credit=0.1,
                                max_completion_length=24)
    result = train_rl(cfg)
    steps = [h for h in result.log_history if "loss" in h]
    assert len(steps) == 2
    for entry in steps:
        assert 0.0 <= entry["credit/token_share"] <= 1.0
        assert "credit/mean" in entry
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_module_doctests():
    assert doctest.testmod(rl_credit).failed == 0


def test_sampling_ceiling_votes_and_scores_label_sets():
    """experiments/sampling_ceiling.py: a vote over samples, and micro F1 over label sets."""
    path = Path(__file__).resolve().parents[1] / "experiments" / "sampling_ceiling.py"
    spec = importlib.util.spec_from_file_location("sampling_ceiling", path)
    ceiling = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ceiling)
    assert doctest.testmod(ceiling).failed == 0
    drawn = [frozenset({"Edema"}), frozenset({"Edema", "Atelectasis"}), frozenset({"Atelectasis"})]
    assert ceiling.vote(drawn, 1) == {"Edema", "Atelectasis"}
    assert ceiling.vote(drawn, 3) == frozenset()
    reference = [frozenset({"Edema"}), frozenset()]
    assert ceiling.micro_f1([frozenset({"Edema"}), frozenset()], reference) == 1.0
    assert ceiling.micro_f1([frozenset({"Edema", "Atelectasis"}), frozenset({"Fracture"})], reference) == \
        pytest.approx(2 / (2 + 2))
    assert ceiling.micro_f1([frozenset(), frozenset()], [frozenset(), frozenset()]) == 1.0
