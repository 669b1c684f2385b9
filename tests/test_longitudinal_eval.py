"""Change statements of a draft scored against the testbed's per-finding change (trainer.evaluate.longitudinal)."""

from unirg.trainer.evaluate.longitudinal import change_agreement, change_scores, changes_named


def test_change_words_per_style():
    assert changes_named("Moderate left basal atelectasis, unchanged.") == {"unchanged"}
    assert changes_named("Small bilateral effusions have increased.") == {"worsened"}
    assert changes_named("Right pneumothorax is smaller.") == {"improved"}
    assert changes_named("New mild right upper zone shadowing.") == {"new"}
    assert changes_named("Stable cardiomegaly.") == {"unchanged"}
    assert changes_named("Lungs are clear.") == set()


def test_a_finding_counts_when_its_own_sentence_names_its_change():
    draft = "Moderate left basal atelectasis, unchanged. New mild right opacity. Small bilateral effusions have increased."
    findings = [
        {"observation": "Atelectasis", "change": "unchanged"},   # right
        {"observation": "Lung Opacity", "change": "new"},        # right
        {"observation": "Pleural Effusion", "change": "new"},    # described, wrong change
        {"observation": "Pneumothorax", "change": "improved"},   # not described
        {"observation": "Cardiomegaly", "change": "resolved"},   # not scored
        {"observation": "Edema", "change": None},                # first study: not scored
    ]
    assert change_agreement(draft, findings) == (4, 3, 2)
    scores = change_scores([draft, "Lungs are clear."], [findings, [{"observation": "Edema", "change": "worsened"}]])
    assert scores == {"findings_with_change": 5, "described": 0.6, "correct_of_described": 0.6667, "correct": 0.4}
