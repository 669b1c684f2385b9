"""Output parsing (unirg.model.parse) and the shared prompt (unirg.model.prompt).

Pure functions: no model needed.
"""

from __future__ import annotations

import pytest
from PIL import Image

from unirg.model.parse import (
    EMPTY,
    MISSING_FINDINGS,
    MISSING_IMPRESSION,
    NO_HEADINGS,
    REPETITION,
    TRUNCATED,
    clean_generation,
    collapse_repetition,
    parse_report,
)
from unirg.model.prompt import (
    INSTRUCTION,
    INSTRUCTION_LONGITUDINAL,
    build_prompt,
    format_target,
    to_openai_messages,
)
from unirg.model.study import StudyInput

# --- parse_report: headings -------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "Findings: The lungs are clear.\nImpression: No acute process.",
        "FINDINGS: The lungs are clear.\nIMPRESSION: No acute process.",
        "FINDINGS\nThe lungs are clear.\n\nIMPRESSION\nNo acute process.",
        "**Findings:** The lungs are clear.\n\n**Impression:** No acute process.",
        "## Findings\nThe lungs are clear.\n## Impression\nNo acute process.",
        "Findings: The lungs are clear. Impression: No acute process.",
        "Findings - The lungs are clear.\nConclusion - No acute process.",
        "FINDINGS The lungs are clear. IMPRESSION No acute process.",
        "finding: The lungs are clear.\nimpressions: No acute process.",
        "<|im_start|>assistant\nFindings: The lungs are clear.\nImpression: No acute process.<|im_end|>",
        "```\nFindings: The lungs are clear.\nImpression: No acute process.\n```",
        "Findings: The lungs are clear. Summary: No acute process.",
    ],
)
def test_heading_variants(text):
    parsed = parse_report(text, truncated=False)
    assert parsed.findings == "The lungs are clear."
    assert parsed.impression == "No acute process."
    assert parsed.flags == ()
    assert parsed.ok


def test_inline_impression_without_sentence_end():
    parsed = parse_report("Findings: Lungs clear Impression: Normal chest.", truncated=False)
    assert (parsed.findings, parsed.impression) == ("Lungs clear", "Normal chest.")


def test_comparison_and_indication_sections():
    text = (
        "Indication: Cough.\nComparison: Chest radiograph 2024-01-02.\n"
        "Findings: Small left effusion.\nImpression: New small left effusion."
    )
    parsed = parse_report(text)
    assert parsed.indication == "Cough."
    assert parsed.comparison == "Chest radiograph 2024-01-02."
    assert parsed.findings == "Small left effusion."
    assert parsed.ok


def test_comparison_none_is_null():
    assert parse_report("Comparison: None.\nFindings: Clear.\nImpression: Normal.").comparison is None
    assert parse_report("COMPARISON: N/A\nFindings: Clear.\nImpression: Normal.").comparison is None


def test_word_comparison_inside_a_sentence_is_not_a_heading():
    parsed = parse_report("Findings: Comparison with the prior shows no change. Impression: Stable.")
    assert parsed.findings == "Comparison with the prior shows no change."
    assert parsed.comparison is None


def test_markdown_bullets_become_sentences():
    text = "### Findings\n- Lungs clear\n- No effusion\n* Heart normal\n\n### Impression\n1. Normal chest"
    parsed = parse_report(text)
    assert parsed.findings == "Lungs clear. No effusion. Heart normal."
    assert parsed.impression == "Normal chest."


def test_preamble_without_findings_heading_becomes_findings():
    parsed = parse_report("The lungs are clear. Heart normal.\nImpression: Normal.")
    assert parsed.findings == "The lungs are clear. Heart normal."
    assert parsed.impression == "Normal."
    assert parsed.flags == ()


# --- parse_report: what goes wrong ---------------------------------------------------


@pytest.mark.parametrize("text", ["", "   \n ", "<|im_end|>", "<end_of_turn><eos>", "**\n##\n- "])
def test_empty_output_is_flagged(text):
    parsed = parse_report(text)
    assert parsed.flags == (EMPTY,)
    assert parsed.findings == parsed.impression == ""
    assert not parsed.ok


def test_no_headings():
    parsed = parse_report("The heart is normal. The lungs are clear.", truncated=False)
    assert parsed.findings == "The heart is normal. The lungs are clear."
    assert parsed.impression == ""
    assert parsed.flags == (NO_HEADINGS, MISSING_IMPRESSION)


def test_findings_only_family_is_not_flagged():
    text = "The heart is normal. The lungs are clear."
    parsed = parse_report(text, truncated=False, sections=("findings",))
    assert parsed.findings == text and parsed.flags == ()


def test_missing_findings():
    parsed = parse_report("Impression: Pneumonia.", truncated=False)
    assert parsed.impression == "Pneumonia." and parsed.flags == (MISSING_FINDINGS,)


def test_truncated_at_token_limit_drops_partial_sentence():
    text = "Findings: Lungs clear. Heart normal.\nImpression: No acute disease. Recommend fol"
    parsed = parse_report(text, truncated=True)
    assert parsed.impression == "No acute disease."
    assert TRUNCATED in parsed.flags


def test_truncated_single_partial_sentence_is_kept():
    parsed = parse_report("Findings: Lungs clear.\nImpression: No acute dis", truncated=True)
    assert parsed.impression == "No acute dis" and TRUNCATED in parsed.flags


def test_truncated_in_findings_before_impression_heading():
    parsed = parse_report("Findings: Lungs clear. Small right effu", truncated=True)
    assert parsed.findings == "Lungs clear."
    assert parsed.flags == (MISSING_IMPRESSION, TRUNCATED)


def test_unknown_truncation_only_flags_missing_full_stop():
    assert TRUNCATED in parse_report("Findings: Clear.\nImpression: Normal chest").flags
    assert parse_report("Findings: Clear.\nImpression: Normal chest", truncated=False).flags == ()


def test_repeated_sections_loop_keeps_first():
    text = "Findings: Lungs clear.\nImpression: Normal.\n" * 4 + "Findings: Lungs"
    parsed = parse_report(text, truncated=True)
    assert (parsed.findings, parsed.impression) == ("Lungs clear.", "Normal.")
    assert REPETITION in parsed.flags


def test_repeated_sentences_and_token_loops():
    text = (
        "Findings: No effusion. No effusion. No effusion. The the the the heart is normal.\n"
        "Impression: ok ok ok ok."
    )
    parsed = parse_report(text, truncated=False)
    assert parsed.findings == "No effusion. The heart is normal."
    assert parsed.impression == "ok."
    assert parsed.flags == (REPETITION,)


def test_collapse_repetition_keeps_legitimate_repeats():
    legitimate = "Left and right lungs are clear."
    assert collapse_repetition(legitimate) == (legitimate, False)
    text, changed = collapse_repetition("a b c a b c a b c d")
    assert (text, changed) == ("a b c d", True)


def test_clean_generation_strips_tokens_and_markup():
    assert clean_generation("<start_of_turn>model\n**Findings**: x<end_of_turn>") == "Findings: x"
    assert clean_generation("> quoted\r\n# head") == "quoted\nhead"


def test_long_loop_is_fast():
    import time

    text = "Findings: " + "there is a small effusion " * 2000
    start = time.perf_counter()
    parsed = parse_report(text, truncated=True)
    assert time.perf_counter() - start < 2.0
    assert parsed.findings.lower().startswith("there is a small effusion")
    assert len(parsed.findings) < 100 and REPETITION in parsed.flags


# --- the shared prompt -------------------------------------------------------------


def test_format_target_round_trips_through_parse():
    target = format_target("The lungs are clear. No effusion.", "No acute disease.")
    assert target == "Findings: The lungs are clear. No effusion.\nImpression: No acute disease."
    parsed = parse_report(target, truncated=False)
    assert (parsed.findings, parsed.impression, parsed.flags) == (
        "The lungs are clear. No effusion.",
        "No acute disease.",
        (),
    )


def _image(value: int) -> Image.Image:
    return Image.new("RGB", (8, 8), (value, value, value))


def test_prompt_single_image_with_context():
    study = StudyInput(frontal=_image(1), lateral=_image(2), indication="Cough.", comparison=None)
    prompt = build_prompt(study)
    assert prompt.images == [study.frontal]  # the lateral is not used (UniRG-CXR: frontal only)
    user = prompt.messages[-1]
    assert user["role"] == "user"
    assert sum(item["type"] == "image" for item in user["content"]) == 1
    text = prompt.text_only()
    assert "Indication: Cough.\nComparison: None." in text
    assert INSTRUCTION in text and "Prior report" not in text
    assert prompt.messages[0]["role"] == "system"
    assert build_prompt(study, system_prompt=None).messages[0]["role"] == "user"


def test_prompt_longitudinal_adds_prior_image_and_report():
    study = StudyInput(
        frontal=_image(1),
        prior_frontal=_image(3),
        prior_report="Findings: Clear. Impression: Normal.",
        comparison="Chest radiograph 2024-01-02.",
    )
    prompt = build_prompt(study)
    assert prompt.images == [study.frontal, study.prior_frontal]
    text = prompt.text_only()
    assert text.index("Current frontal") < text.index("prior frontal") < text.index("Prior report:")
    assert "Prior report: Findings: Clear. Impression: Normal." in text
    assert INSTRUCTION_LONGITUDINAL in text
    assert build_prompt(study, longitudinal=False).images == [study.frontal]


def test_prior_report_without_prior_image_is_not_used():
    study = StudyInput(frontal=_image(1), prior_report="Findings: old.")
    assert "Prior report" not in build_prompt(study).text_only()


def test_training_prompt_is_inference_prompt_plus_answer():
    study = StudyInput(frontal=_image(1), indication="Fever.")
    prompt = build_prompt(study)
    trained = prompt.with_target(format_target("Clear.", "Normal."))
    assert trained.messages[:-1] == prompt.messages
    assert trained.messages[-1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "Findings: Clear.\nImpression: Normal."}],
    }


def test_openai_messages_carry_images_as_data_urls():
    study = StudyInput(frontal=_image(1), prior_frontal=_image(3), prior_report="x")
    messages = to_openai_messages(build_prompt(study))
    urls = [item["image_url"]["url"] for item in messages[-1]["content"] if item["type"] == "image_url"]
    assert len(urls) == 2 and all(url.startswith("data:image/png;base64,") for url in urls)
    assert urls[0] != urls[1]


def test_study_input_rejects_non_images():
    with pytest.raises(TypeError, match="PIL"):
        StudyInput(frontal="frontal.dcm")
