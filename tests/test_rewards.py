"""Reward components: model-free scorers, the TRL shape, the composite, one real embedding model, the CLI."""

from __future__ import annotations

import doctest
import importlib.util
import json
import pickle

import pytest
from click.testing import CliRunner

import unirg.trainer.rewards as rewards
from unirg.model import textmetrics  # BLEU/ROUGE-L, moved from unirg.trainer.rewards.lexical
from unirg.trainer.rewards import (
    MODEL_FREE,
    REGISTRY,
    TOP5,
    BERTScore,
    CompositeReward,
    EmbeddingCosine,
    PairwiseReward,
    Reward,
    bleu,
    bleu2,
    build_component,
    chexpert_f1,
    chexpert_f1_reward,
    chexpert_label_margin,
    completion_text,
    default_embedding_model_path,
    positive_set,
    radgraph_substitute,
    register_component,
    rouge_l,
    semb_substitute,
)
from unirg.trainer.rewards import base, clinical, composite
from unirg.trainer.score_cli import score

REF = ("Moderate cardiomegaly. Small left pleural effusion with adjacent atelectasis. "
       "No pneumothorax. Endotracheal tube 4 cm above the carina.")
SAME_MEANING = ("Endotracheal tube tip 4 cm above the carina. The heart is moderately enlarged. "
                "Small left effusion and left basilar atelectasis. No pneumothorax.")
DISJOINT = "Healed right clavicle fracture."
NEGATION_FLIP = ("Moderate cardiomegaly. No pleural effusion. No atelectasis. "
                 "Large pneumothorax. Endotracheal tube 4 cm above the carina.")

PAIRWISE = {
    "bleu": bleu, "bleu2": bleu2, "rouge_l": rouge_l, "chexpert_f1": chexpert_f1,
    "semb_substitute": semb_substitute, "radgraph_substitute": radgraph_substitute,
}


@pytest.mark.parametrize("module", [base, textmetrics, clinical, composite, rewards], ids=lambda m: m.__name__)
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("name", sorted(PAIRWISE))
def test_identical_text_scores_max(name):
    assert PAIRWISE[name](REF, REF) == pytest.approx(1.0)


@pytest.mark.parametrize("name", sorted(PAIRWISE))
def test_disjoint_text_scores_low(name):
    assert PAIRWISE[name](DISJOINT, REF) < 0.2


@pytest.mark.parametrize("name", ["chexpert_f1", "semb_substitute", "radgraph_substitute"])
def test_clinical_scores_see_through_rewording(name):
    assert PAIRWISE[name](SAME_MEANING, REF) == pytest.approx(1.0)
    assert PAIRWISE[name](SAME_MEANING, REF) > PAIRWISE["bleu"](SAME_MEANING, REF)


@pytest.mark.parametrize("name", ["chexpert_f1", "semb_substitute", "radgraph_substitute"])
def test_negation_flip_lowers_clinical_scores(name):
    # Nearly the same words, opposite findings: word overlap stays high, clinical agreement drops.
    assert PAIRWISE[name](NEGATION_FLIP, REF) < 0.75
    assert PAIRWISE[name](NEGATION_FLIP, REF) < PAIRWISE[name](SAME_MEANING, REF)
    assert rouge_l(NEGATION_FLIP, REF) > 0.5


def test_chexpert_f1_definition():
    # reference positives {Cardiomegaly, Pleural Effusion, Atelectasis, Support Devices}; candidate finds two.
    assert chexpert_f1("Moderate cardiomegaly. Small left effusion.", REF) == pytest.approx(2 * 2 / (2 + 4))
    # both normal: the only positive is No Finding
    assert chexpert_f1("Lungs are clear.", "No acute cardiopulmonary process.") == 1.0
    # uncertain counts as positive by default; "separate" keeps it apart; "negative" drops it
    assert chexpert_f1("Possible pneumonia.", "Pneumonia.") == 1.0
    assert chexpert_f1("Possible pneumonia.", "Pneumonia.", uncertain="separate") == 0.0
    assert chexpert_f1("Possible pneumonia.", "Pneumonia.", uncertain="negative") == 0.0
    # restricted to the top-5: a pneumothorax difference does not count
    assert chexpert_f1("Small left effusion. Large pneumothorax.", "Small left effusion.", observations=TOP5) == 1.0
    with pytest.raises(ValueError, match="uncertain must be one of"):
        chexpert_f1("a", "b", uncertain="maybe")
    with pytest.raises(ValueError, match="unknown observations"):
        chexpert_f1("a", "b", observations=["Pneumonitis"])


FINDING_SENTENCES = ("Moderate cardiomegaly.", "Small left pleural effusion.", "Large right pneumothorax.",
                     "Left lower lobe atelectasis.", "Right upper lobe consolidation.", "Possible pneumonia.",
                     "Endotracheal tube 4 cm above the carina.")
NORMAL = "No acute cardiopulmonary process."


def _random_report(rng) -> str:
    chosen = [s for s in FINDING_SENTENCES if rng.random() < 0.25]
    return " ".join(chosen) or NORMAL


def _set_micro_f1(candidates, references) -> float:
    from unirg.trainer.evaluate.metrics import _positives  # the evaluation's own label path

    c, r = _positives(candidates, "positive"), _positives(references, "positive")
    tp, errors = int((c & r).sum()), int((c ^ r).sum())
    return 2 * tp / (2 * tp + errors)


def test_chexpert_label_margin_ranks_a_change_as_the_set_micro_f1_does():
    # With error_weight = TP / (FP + FN) of the set, changing one report's draft raises the set's micro F1
    # exactly when it raises that report's margin.
    import random

    rng = random.Random(7)
    checked = 0
    for _ in range(300):
        refs = [_random_report(rng) for _ in range(12)]
        drafts = [_random_report(rng) for _ in range(12)]
        i, new = rng.randrange(12), _random_report(rng)
        changed = drafts[:i] + [new] + drafts[i + 1:]
        before, after = _set_micro_f1(drafts, refs), _set_micro_f1(changed, refs)
        if before in (0.0, 1.0):
            continue
        w = before / (2 * (1 - before))  # = TP / (FP + FN)
        d_margin = (chexpert_label_margin(new, refs[i], error_weight=w)
                    - chexpert_label_margin(drafts[i], refs[i], error_weight=w))
        d_f1 = after - before
        assert (d_margin > 1e-9) == (d_f1 > 1e-12) and (d_margin < -1e-9) == (d_f1 < -1e-12), (drafts[i], new, refs[i])
        checked += 1
    assert checked > 250


def test_per_pair_f1_and_the_margin_weigh_two_fixes_differently():
    # Which fix is worth more to the set's micro F1: taking a false finding off a normal report's draft, or
    # drafting the three missed findings of a four-finding report? Per-pair F1 prefers the first, micro F1
    # and the margin the second.
    four = ("Moderate cardiomegaly. Small left pleural effusion. Left lower lobe atelectasis. "
            "Large right pneumothorax.")
    refs = [NORMAL, four] + [f for f in FINDING_SENTENCES[:4]] + [NORMAL] * 2
    drafts = ["Large right pneumothorax.", "Moderate cardiomegaly."] + list(refs[2:4]) + [NORMAL, "Cardiomegaly."]
    drafts += [NORMAL, "Right upper lobe consolidation."]
    fix_normal = [NORMAL] + drafts[1:]
    fix_four = drafts[:1] + [four] + drafts[2:]
    base = _set_micro_f1(drafts, refs)
    assert 0.0 < base < 1.0
    w = base / (2 * (1 - base))
    assert _set_micro_f1(fix_four, refs) > _set_micro_f1(fix_normal, refs)
    margin_gain_normal = chexpert_label_margin(NORMAL, NORMAL, error_weight=w) - chexpert_label_margin(
        drafts[0], NORMAL, error_weight=w)
    margin_gain_four = chexpert_label_margin(four, four, error_weight=w) - chexpert_label_margin(
        drafts[1], four, error_weight=w)
    assert margin_gain_four > margin_gain_normal
    f1_gain_normal = chexpert_f1(NORMAL, NORMAL) - chexpert_f1(drafts[0], NORMAL)
    f1_gain_four = chexpert_f1(four, four) - chexpert_f1(drafts[1], four)
    assert f1_gain_normal > f1_gain_four


def test_chexpert_label_margin_definition_and_blank_draft():
    assert chexpert_label_margin(REF, REF) == 4.0  # Cardiomegaly, Effusion, Atelectasis, Support Devices
    assert chexpert_label_margin("Moderate cardiomegaly. Small left effusion.", REF) == 2 - 2
    assert chexpert_label_margin("Moderate cardiomegaly. Large pneumothorax.", REF, error_weight=0.5) == 1 - 0.5 * 4
    # a normal report drafted with one finding loses No Finding and gains a false positive
    assert chexpert_label_margin("Large pneumothorax.", NORMAL) == -2.0
    with pytest.raises(ValueError, match="error_weight must be >= 0"):
        chexpert_label_margin(REF, REF, error_weight=-1)
    # a blank draft is scored as a draft with no labels (every reference label missed), never as 0
    reward = build_component("chexpert_label_margin", error_weight=1.5)
    assert reward(["", " ", REF], reference=[REF, NORMAL, REF]) == [-6.0, -1.5, 4.0]


def test_positive_set_from_dict():
    labels = {"No Finding": None, "Edema": -1, "Pneumothorax": 1, "Pleural Effusion": 0}
    assert positive_set(labels) == {"Edema", "Pneumothorax"}
    assert positive_set(labels, uncertain="separate") == {"uncertain Edema", "Pneumothorax"}


def test_radgraph_substitute_uses_laterality_and_device_names():
    assert radgraph_substitute("Small left effusion.", "Small right effusion.") == 0.5
    assert radgraph_substitute("Endotracheal tube in place.", "Chest tube in place.") == 0.0
    assert radgraph_substitute("ETT in place.", "Endotracheal tube in place.") == 1.0


def test_semb_substitute_grades_uncertainty():
    assert semb_substitute("Possible pneumonia.", "Pneumonia.") == pytest.approx(0.5**0.5)
    assert semb_substitute("No pneumonia.", "Pneumonia.") == 0.0


def test_bleu2_and_bleu_orders():
    cand, ref = "small left pleural effusion", "small left effusion"
    assert 0 < bleu(cand, ref) <= bleu2(cand, ref) < 1
    with pytest.raises(ValueError, match="order must be >= 1"):
        bleu(cand, ref, order=0)


# ------------------------------------------------------------------------------------------ TRL shape
@pytest.mark.parametrize("name", MODEL_FREE)
def test_trl_shape_with_plain_and_conversational_completions(name):
    reward = build_component(name)
    assert reward.__name__ == name
    plain = reward([REF, DISJOINT, ""], reference=[REF, REF, REF], prompts=["p"] * 3, trainer_state=None)
    chat = reward([[{"role": "assistant", "content": REF}], [{"role": "assistant", "content": DISJOINT}],
                   [{"role": "assistant", "content": ""}]], reference=[REF] * 3)
    assert plain == chat
    if name == "chexpert_label_margin":  # unbounded: the best is the reference's label count
        assert plain[0] == 4.0 and plain[1] < plain[0]
        assert plain[2] == -4.0  # a blank completion misses every label, not None
    else:
        assert plain[0] == pytest.approx(1.0) and plain[1] < plain[0]
        assert plain[2] == 0.0  # a blank completion gets the worst score, not None
    assert reward(["x"], reference=[None]) == [None]  # no reference: TRL skips the sample


def test_trl_missing_reference_column_says_how_to_fix():
    with pytest.raises(KeyError, match="'reference' column"):
        chexpert_f1_reward(["x"], solution=["y"])
    with pytest.raises(ValueError, match="2 completions but 1 references"):
        chexpert_f1_reward(["x", "y"], reference=["z"])
    custom = PairwiseReward("f1", chexpert_f1, reference_key="report")
    assert custom(["No effusion."], report=["No effusion."]) == [1.0]


def test_completion_text_parts():
    parts = [{"type": "text", "text": "A"}, {"type": "image"}, {"type": "text", "text": "B"}]
    assert completion_text([{"role": "assistant", "content": parts}]) == "A B"
    assert completion_text(None) == ""
    with pytest.raises(TypeError, match="a completion must be"):
        completion_text(3)


def test_rewards_pickle():  # TRL / accelerate may pickle reward functions
    for r in (rewards.bleu_reward, chexpert_f1_reward, CompositeReward({"rouge_l": 1.0, "chexpert_f1": 1.0})):
        clone = pickle.loads(pickle.dumps(r))
        assert clone([REF], reference=[REF]) == r([REF], reference=[REF])


# ------------------------------------------------------------------------------------------ composite
def test_composite_is_the_weighted_sum_and_logs_components():
    weights = {"bleu": 0.5, "chexpert_f1": 1.0, "radgraph_substitute": 2.0}
    reward = CompositeReward(weights)
    cands, refs = [REF, SAME_MEANING, NEGATION_FLIP], [REF] * 3
    metrics, extras = {}, {}
    total = reward(cands, reference=refs, log_metric=lambda k, v: metrics.setdefault(k, v),
                   log_extra=lambda k, v: extras.setdefault(k, v))
    for i, (c, r) in enumerate(zip(cands, refs, strict=True)):
        expected = 0.5 * bleu(c, r) + chexpert_f1(c, r) + 2.0 * radgraph_substitute(c, r)
        assert total[i] == pytest.approx(expected)
    assert set(metrics) == {f"composite/{k}" for k in weights}
    assert metrics["composite/chexpert_f1"] == pytest.approx(sum(chexpert_f1(c, REF) for c in cands) / 3)
    assert len(extras["composite/bleu"]) == 3
    assert total[0] > total[1] > total[2]


def test_composite_standard_scaling():
    reward = CompositeReward({"bleu": 1.0, "chexpert_f1": 1.0})
    cands = [REF, SAME_MEANING, NEGATION_FLIP, DISJOINT]
    scaling = reward.fit_scaling(cands, [REF] * 4)
    scaled = CompositeReward({"bleu": 1.0, "chexpert_f1": 1.0}, scaling=scaling)
    values = scaled(cands, reference=[REF] * 4)
    assert sum(values) == pytest.approx(0.0, abs=1e-9)  # z-scores over the calibration set sum to 0
    mu, sd = scaling["bleu"]
    assert values[0] == pytest.approx((bleu(REF, REF) - mu) / sd + (1.0 - scaling["chexpert_f1"][0])
                                      / scaling["chexpert_f1"][1])


def test_composite_validation_messages():
    with pytest.raises(ValueError, match="weights is empty"):
        CompositeReward({})
    with pytest.raises(KeyError, match="unknown reward component 'bleu5'"):
        CompositeReward({"bleu5": 1.0})
    with pytest.raises(ValueError, match="without a weight"):
        CompositeReward({"bleu": 1.0}, scaling={"rouge_l": (0.0, 1.0)})
    with pytest.raises(ValueError, match="std must be > 0"):
        CompositeReward({"bleu": 1.0}, scaling={"bleu": (0.0, 0.0)})


class _FlakyJudge(Reward):
    """A stand-in for an LLM judge: scores by length, fails (None) on texts containing 'fail'."""

    name = "judge"

    def score(self, candidates, references):
        return [None if "fail" in c else min(1.0, len(c) / 100) for c in candidates]


def test_a_judge_component_plugs_in():
    register_component("test_judge", lambda **opts: _FlakyJudge(), replace=True)
    try:
        assert "test_judge" in REGISTRY
        strict = CompositeReward({"test_judge": 1.0, "chexpert_f1": 1.0})
        lenient = CompositeReward({"test_judge": 1.0, "chexpert_f1": 1.0}, missing="renormalize")
        cands = ["No pneumothorax.", "fail: No pneumothorax."]
        refs = ["No pneumothorax."] * 2
        assert strict(cands, reference=refs)[1] is None
        assert lenient(cands, reference=refs)[1] == pytest.approx(2.0)  # 1.0 (F1) * 2/1
        with pytest.raises(ValueError, match="already registered"):
            register_component("test_judge", lambda **opts: _FlakyJudge())
        # or passed ready-built, without the registry
        direct = CompositeReward({"judge": 0.5}, components={"judge": _FlakyJudge()})
        assert direct(["x" * 50], reference=["y"]) == [0.25]
        # a plain TRL-shaped reward function (like the judge module's make_judge_reward) is wrapped

        def trl_judge(completions, reference=None, **kw):
            return [float(len(c) < 20) for c in completions]

        mixed = CompositeReward({"judge": 1.0, "chexpert_f1": 1.0}, components={"judge": trl_judge})
        assert mixed(["No pneumothorax.", "No pneumothorax at all, none."], reference=refs) == [2.0, 1.0]
    finally:
        REGISTRY.pop("test_judge", None)


# ------------------------------------------------------------------------------------------ models
def test_embedding_cosine_with_the_shipped_minilm():
    path = default_embedding_model_path()
    assert (path / "model.safetensors").is_file()
    reward = EmbeddingCosine()
    scores = reward([REF, SAME_MEANING, DISJOINT, ""], reference=[REF] * 4)
    assert scores[0] == pytest.approx(1.0, abs=1e-5)
    assert scores[0] > scores[1] > scores[2]
    assert scores[1] > 0.6 and scores[2] < 0.5
    assert scores[3] == 0.0
    assert reward(["x"], reference=[None]) == [None]
    # same model object on the next call (cached per path)
    from unirg.trainer.rewards.semantic import load_sentence_model

    assert load_sentence_model() is load_sentence_model(path)


def test_embedding_cosine_bad_path_is_clear():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        EmbeddingCosine("/nonexistent/model").score(["a"], ["b"])


@pytest.mark.skipif(importlib.util.find_spec("bert_score") is not None, reason="bert-score is installed")
def test_bertscore_without_the_package_says_how_to_install(tmp_path):
    with pytest.raises(ImportError, match="pip install bert-score"):
        BERTScore(tmp_path, num_layers=6)


# ------------------------------------------------------------------------------------------ CLI
def test_score_cli(tmp_path):
    cands = tmp_path / "c.txt"
    refs = tmp_path / "r.txt"
    cands.write_text(f"{REF}\n{DISJOINT}\n")
    refs.write_text(f"{REF}\n{REF}\n")
    result = CliRunner().invoke(score, ["--candidates", str(cands), "--references", str(refs),
                                        "--components", "bleu,chexpert_f1", "--weights", "chexpert_f1=2"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert [row["index"] for row in lines[:2]] == [0, 1]
    assert set(lines[0]) == {"index", "bleu", "chexpert_f1", "composite"}
    assert lines[0]["composite"] == pytest.approx(2.0)
    assert lines[2]["n"] == 2 and lines[2]["mean"]["chexpert_f1"] == pytest.approx(
        (1.0 + chexpert_f1(DISJOINT, REF)) / 2)

    refs.write_text(f"{REF}\n")
    result = CliRunner().invoke(score, ["--candidates", str(cands), "--references", str(refs)])
    assert result.exit_code != 0 and "2 candidates but 1 references" in result.output
    refs.write_text(f"{REF}\n{REF}\n")
    result = CliRunner().invoke(score, ["--candidates", str(cands), "--references", str(refs), "--components", "x"])
    assert result.exit_code != 0 and "unknown components" in result.output
