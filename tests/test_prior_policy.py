"""The one prior policy (unirg.plugin.prior_policy) on highdicom-built SRs, and what the pipeline makes
of it: the prompt's prior report slot, the SR's comparison and its PertinentOtherEvidenceSequence."""

from __future__ import annotations

import copy
import datetime as dt

import pytest
from pydicom import dcmread

from dicom_peers import make_cxr, save
from prior_reports import human_report, other_ai_report, our_draft
from unirg.plugin.config import ConfigError, PriorsConfig
from unirg.model.prompt import NO_PRIOR_REPORT, build_prompt
from unirg.model.study import Draft
from unirg.plugin.pipeline import prepare_study, sr_from_draft
from unirg.plugin.prior_policy import (
    PriorCandidate,
    age_cutoff,
    choose_report,
    is_human_report,
    not_human_reason,
    parse_age,
    rank_prior_studies,
    study_date_range,
    when,
)
from unirg.plugin.priors.core import PriorStudy
from unirg.plugin.priors import choose_report as listener_choose_report
from unirg.sr_writer import ModelInfo, read_report

PATIENT = "POLICY-1"
T0 = dt.datetime(2023, 6, 15, 12, 0)


def prior_images():
    return [make_cxr(patient_id=PATIENT, study_date="20230615", view=v, seed=10 + i)
            for i, v in enumerate(["PA", "LL"])]


def current_images():
    return [make_cxr(patient_id=PATIENT, study_date="20240105", view=v, seed=i) for i, v in enumerate(["PA", "LL"])]


# -- which SR is human -------------------------------------------------------------------------------
def test_human_reports_pass_and_ai_reports_never_do():
    images = prior_images()
    assert is_human_report(human_report(images, "Signed.", T0))
    assert is_human_report(human_report(images, "Preliminary.", T0, verified=False, complete=False))
    assert not_human_reason(our_draft(images, "Ours.", T0)) == "unirg's own draft"
    assert "device observer" in not_human_reason(other_ai_report(images, "Other AI.", T0, how="device"))
    assert "AI model" in not_human_reason(other_ai_report(images, "Other AI.", T0, how="equipment"))
    # our draft with its labels stripped by some PACS: its device observer still gives it away
    stripped = our_draft(images, "Ours.", T0)
    stripped.SeriesDescription = "Report"
    del stripped.CompletionFlagDescription
    assert not is_human_report(stripped)
    assert not is_human_report(images[0])  # not an SR at all


def test_a_human_preliminary_report_beats_newer_ai_reports_of_any_vendor():
    images = prior_images()
    prelim = human_report(images, "Small left effusion (preliminary).", T0, verified=False, complete=False)
    later = T0 + dt.timedelta(days=1)
    srs = [prelim, our_draft(images, "OUR DRAFT", later), other_ai_report(images, "OTHER AI", later),
           other_ai_report(images, "OTHER AI EQUIPMENT", later, how="equipment")]
    assert choose_report(srs) is prelim
    assert listener_choose_report(srs) is prelim  # the name the listener's fetcher uses
    assert choose_report(srs[1:]) is None  # no human report: no report


def test_verified_then_complete_then_newest():
    images = prior_images()
    old_final = human_report(images, "a", T0, tag="old-final")
    new_final = human_report(images, "b", T0 + dt.timedelta(hours=1), tag="new-final")
    newest_prelim = human_report(images, "c", T0 + dt.timedelta(days=3), verified=False, complete=True, tag="p1")
    newest_partial = human_report(images, "d", T0 + dt.timedelta(days=4), verified=False, complete=False, tag="p2")
    assert choose_report([old_final, newest_prelim, new_final, newest_partial]) is new_final
    assert choose_report([newest_partial, newest_prelim]) is newest_prelim  # COMPLETE before PARTIAL
    assert choose_report([newest_partial]) is newest_partial
    same_day = human_report(images, "e", T0.replace(second=30), tag="e")
    same_day.ContentTime = "120000.5"
    assert choose_report([old_final, same_day]) is same_day  # fractions of a second count


# -- which earlier studies ---------------------------------------------------------------------------
def test_rank_prior_studies_most_recent_n_within_the_age_limit():
    current = PriorCandidate("cur", "20240105", "101500")
    cands = [PriorCandidate("y2023", "20230615", "120000", frozenset({"DX"})),
             PriorCandidate("y2022", "20220301"),
             PriorCandidate("y2018", "20180101", "", frozenset({"CR", "SR"})),
             PriorCandidate("ct", "20231201", "", frozenset({"CT"})),
             PriorCandidate("later", "20250101"),
             PriorCandidate("same-day-later", "20240105", "101501"),
             PriorCandidate("cur", "20200101"),
             PriorCandidate("undated")]
    assert [c.study_uid for c in rank_prior_studies(cands, current, 5)] == ["y2023", "y2022", "y2018", "undated"]
    assert [c.study_uid for c in rank_prior_studies(cands, current, 2)] == ["y2023", "y2022"]
    assert [c.study_uid for c in rank_prior_studies(cands, current, 5, "5Y")] == ["y2023", "y2022"]
    assert [c.study_uid for c in rank_prior_studies(cands, current, 5, "18M")] == ["y2023"]
    assert [c.study_uid for c in rank_prior_studies(cands, current, 5, "90D")] == []
    assert rank_prior_studies(cands, current, 0) == []


def test_age_limits_and_the_cfind_date_range():
    assert parse_age("5Y") == (5, "Y") and parse_age("-5Y") == (5, "Y") and parse_age("") is None
    assert age_cutoff("20240229", "1Y") == "20230228" and age_cutoff("20240105", "2W") == "20231222"
    assert study_date_range("20240105", "5Y") == "20190105-20240105"
    assert study_date_range("20240105", "") == "-20240105" and study_date_range("", "") == ""
    for bad in ("5 years", "0D", "Y", "5X"):
        with pytest.raises(ConfigError, match=r"priors.max_age: .* e.g. '5Y'"):
            PriorsConfig(max_age=bad)
    assert PriorsConfig(max_age="18M").max_age == "18M" and PriorsConfig().skip_local is True
    assert when("20240105", "1015") == "20240105101500000000"


# -- the pipeline: prompt, comparison, provenance ----------------------------------------------------
def _draft(prepared):
    prompt = build_prompt(prepared.study_input).text_only()
    draft = Draft.from_text("Findings: Lungs clear.\nImpression: Normal.", prompt_text=prompt,
                            model_info=ModelInfo("unirg-tests", "1"))
    return prompt, sr_from_draft(draft, prepared, content_datetime=dt.datetime(2024, 1, 5, 11))


def _evidence_uids(sr):
    return {(ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID)
            for study in sr.PertinentOtherEvidenceSequence for series in study.ReferencedSeriesSequence
            for ref in series.ReferencedSOPSequence}


def test_provenance_lists_the_prior_image_and_report_sr_used_and_validates(tmp_path, validate_sr):
    images = prior_images()
    prelim = human_report(images, "Small left effusion (preliminary).", T0, verified=False, complete=False)
    prior = PriorStudy(study_uid=str(images[0].StudyInstanceUID), images=images,
                       report=our_draft(images, "OUR DRAFT", T0 + dt.timedelta(days=1)))
    # the fetcher's report was our draft (old behaviour): the pipeline still finds the human one
    prepared = prepare_study(current_images(), [PriorStudy(prior.study_uid, images=[*images, prelim,
                                                                                     prior.report])])
    prompt, sr = _draft(prepared)
    assert "Prior report: Findings: Small left effusion (preliminary)." in prompt
    frontal = next(ds for ds in images if ds.ViewPosition == "PA")
    assert _evidence_uids(sr) == {(frontal.SOPClassUID, frontal.SOPInstanceUID),
                                  (prelim.SOPClassUID, prelim.SOPInstanceUID)}
    assert prepared.prior_report_sr is prelim
    path = save(sr, tmp_path / "draft.dcm")
    validate_sr(path)
    assert NO_PRIOR_REPORT not in read_report(dcmread(path)).comparison


def test_no_human_report_says_so_in_the_prompt_and_the_sr(tmp_path, validate_sr):
    images = prior_images()
    objects = [*images, our_draft(images, "OUR DRAFT", T0), other_ai_report(images, "OTHER AI", T0)]
    prepared = prepare_study(current_images(), [PriorStudy(str(images[0].StudyInstanceUID), images=objects,
                                                           report=copy.deepcopy(objects[-1]))])
    prompt, sr = _draft(prepared)
    assert f"Prior report: {NO_PRIOR_REPORT}" in prompt and "OTHER AI" not in prompt and "OUR DRAFT" not in prompt
    assert prepared.prior_report_sr is None
    frontal = next(ds for ds in images if ds.ViewPosition == "PA")
    assert _evidence_uids(sr) == {(frontal.SOPClassUID, frontal.SOPInstanceUID)}  # the image only
    path = save(sr, tmp_path / "draft.dcm")
    validate_sr(path)
    assert read_report(dcmread(path)).comparison == f"Chest radiograph 2023-06-15. {NO_PRIOR_REPORT}"
