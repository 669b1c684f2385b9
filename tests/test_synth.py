"""The synthetic testbed: determinism, DICOM conformance, lossless codecs, reports, priors, pixels."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import pixel_array
from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1

from unirg.sr_writer import read_report
from unirg.model.chexpert import OBSERVATIONS
from unirg.trainer.synth.anatomy import Anatomy
from unirg.trainer.synth.cli import synth
from unirg.trainer.synth.generate import generate_testbed, load_manifest
from unirg.trainer.synth.institutions import INSTITUTIONS, TRANSFER_SYNTAXES
from unirg.trainer.synth.jpeg_lossless import encode_sv1
from unirg.trainer.synth.patients import Finding, Patient, Study, make_patient
from unirg.trainer.synth.render import brightness, render_view, to_stored
from unirg.trainer.synth.report import write_report

SEED, PATIENTS, SIZE = 3, 10, 160  # 10 patients: 28 studies, every syntax and photometric present

RECORD_KEYS = ["patient_id", "study_uid", "accession", "study_date", "study_time", "institution",
               "institution_name", "sex", "age", "ethnic_group", "images", "report_sr", "report", "labels",
               "findings", "prior_study_uid", "study_index"]
IMAGE_KEYS = ["path", "sop_instance_uid", "series_uid", "view", "modality", "transfer_syntax", "photometric",
              "bits_stored"]


pytestmark = pytest.mark.testbed(patients=PATIENTS, seed=SEED, size=SIZE)  # the shared `testbed` fixture


def _pixels(path: Path, plugin: str = "") -> np.ndarray:
    ds = dcmread(path)
    return pixel_array(ds, decoding_plugin=plugin) if plugin else ds.pixel_array


# -- manifest ---------------------------------------------------------------------------------
def test_manifest_schema(testbed):
    out, records = testbed
    assert records == load_manifest(out)
    assert len(records) > PATIENTS  # priors exist
    for rec in records:
        assert list(rec) == RECORD_KEYS
        assert re.fullmatch(r"\d{8}", rec["study_date"]) and re.fullmatch(r"\d{6}", rec["study_time"])
        assert rec["institution"] in "ABC" and rec["institution_name"] == INSTITUTIONS[rec["institution"]].name
        assert rec["sex"] in ("M", "F") and isinstance(rec["age"], int) and 18 <= rec["age"] <= 100
        assert rec["ethnic_group"]
        assert list(rec["labels"]) == list(OBSERVATIONS)
        assert all(v in (1, 0, -1, None) for v in rec["labels"].values())
        assert set(rec["report"]) == {"indication", "comparison", "findings", "impression"}
        assert rec["report"]["findings"] and rec["report"]["impression"]
        for f in rec["findings"]:
            assert list(f)[:4] == ["observation", "laterality", "severity", "change"]
            assert set(list(f)[4:]) <= {"calcified"}
            assert f["observation"] in OBSERVATIONS
            assert f["laterality"] in (None, "left", "right", "bilateral")
            assert f["severity"] in (None, "mild", "moderate", "severe")
            assert f["change"] in (None, "new", "unchanged", "improved", "worsened", "resolved")
        assert (out / rec["report_sr"]).is_file()
        assert 1 <= len(rec["images"]) <= 2
        for img in rec["images"]:
            assert list(img) == IMAGE_KEYS
            assert not Path(img["path"]).is_absolute() and (out / img["path"]).is_file()
            assert img["view"] in ("PA", "AP", "LL", "LATERAL") and img["modality"] in ("DX", "CR")
            assert img["photometric"] in ("MONOCHROME1", "MONOCHROME2") and 10 <= img["bits_stored"] <= 16
    assert len({r["institution"] for r in records}) == 3
    assert len({r["accession"] for r in records}) == len(records)
    assert len({r["study_uid"] for r in records}) == len(records)


def test_labels_and_findings_agree(testbed):
    _, records = testbed
    for rec in records:
        labels, findings = rec["labels"], {f["observation"]: f for f in rec["findings"]}
        present = [o for o, f in findings.items() if f["change"] != "resolved"]
        for obs, f in findings.items():
            if f.get("calcified"):
                assert labels[obs] is None  # a calcified granuloma is not a CheXpert Lung Lesion
            elif f["change"] == "resolved":
                assert labels[obs] == 0 and f["severity"] is None
            else:
                assert labels[obs] in (1, -1)
        for obs, value in labels.items():
            if value in (1, -1) and obs != "No Finding":
                assert obs in present
        no_pathology = all(o == "Support Devices" for o in present)
        assert labels["No Finding"] == (1 if no_pathology else None)


# -- determinism ------------------------------------------------------------------------------
def test_same_seed_same_output_other_seed_differs(testbed, tmp_path):
    out, records = testbed
    again = generate_testbed(tmp_path / "again", PATIENTS, SEED, SIZE, workers=2)
    assert again == records
    assert (tmp_path / "again" / "manifest.jsonl").read_bytes() == (out / "manifest.jsonl").read_bytes()
    for rec in records:
        for img in rec["images"]:
            a, b = dcmread(out / img["path"]), dcmread(tmp_path / "again" / img["path"])
            assert a.PixelData == b.PixelData
            assert a.SOPInstanceUID == b.SOPInstanceUID
    other = generate_testbed(tmp_path / "other", 3, SEED + 1, SIZE)
    assert {r["study_uid"] for r in other}.isdisjoint(r["study_uid"] for r in records)
    assert [r["report"] for r in other] != [r["report"] for r in records[: len(other)]]


# -- encodings --------------------------------------------------------------------------------
def test_every_syntax_and_photometric_present_and_lossless(testbed, tmp_path):
    out, records = testbed
    images = [img for r in records for img in r["images"]]
    assert {img["transfer_syntax"] for img in images} == set(TRANSFER_SYNTAXES)
    assert {img["photometric"] for img in images} == {"MONOCHROME1", "MONOCHROME2"}
    assert {img["modality"] for img in images} == {"DX", "CR"}
    assert len({img["bits_stored"] for img in images}) >= 3
    # the same testbed with every image uncompressed: same pixels, only the encoding differs
    plain = generate_testbed(tmp_path / "plain", PATIENTS, SEED, SIZE, transfer_syntax=ExplicitVRLittleEndian)
    assert [r["report"] for r in plain] == [r["report"] for r in records]
    for img in images:
        ds = dcmread(out / img["path"])
        assert ds.file_meta.TransferSyntaxUID == img["transfer_syntax"]
        expected = dcmread(tmp_path / "plain" / img["path"]).pixel_array
        got = ds.pixel_array
        assert got.dtype == np.uint16 and np.array_equal(got, expected), img["path"]
        assert int(expected.max()) < (1 << img["bits_stored"])
        if img["transfer_syntax"] == JPEGLosslessSV1:  # our own encoder: a second decoder agrees
            assert np.array_equal(pixel_array(ds, decoding_plugin="gdcm"), expected)


@pytest.mark.parametrize("bits", [10, 12, 14, 15, 16])
def test_jpeg_lossless_encoder_round_trip(bits):
    rng = np.random.default_rng(bits)
    cases = [rng.integers(0, 1 << bits, (37, 53)), np.zeros((8, 9)), np.full((5, 6), (1 << bits) - 1)]
    checker = np.zeros((16, 16), int)
    checker[::2, ::2] = (1 << bits) - 1  # differences of +-2**(bits-1)..2**16 - 1
    cases.append(checker)
    for arr in cases:
        arr = arr.astype(np.uint16)
        data = encode_sv1(arr, bits)
        sof = data.index(b"\xff\xc3")
        assert data[sof + 4] == bits  # sample precision = Bits Stored
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        ds.Rows, ds.Columns = arr.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.PixelData = encapsulate([data])
        for plugin in ("pylibjpeg", "gdcm"):
            assert np.array_equal(pixel_array(ds, decoding_plugin=plugin), arr), plugin


# -- DICOM conformance and headers ------------------------------------------------------------
@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
def test_dciodvfy_reports_no_error(testbed):
    out, records = testbed
    sample: dict[tuple, Path] = {}
    for rec in records:
        for img in rec["images"]:
            key = (img["modality"], img["transfer_syntax"], img["photometric"], img["view"])
            sample.setdefault(key, out / img["path"])
    paths = list(sample.values()) + [out / records[-1]["report_sr"]]
    warnings = Counter()
    for path in paths:
        proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        lines = (proc.stdout + proc.stderr).splitlines()
        errors = [line for line in lines if line.startswith("Error")]
        assert not errors, f"{path}:\n" + "\n".join(errors)
        warnings.update(line for line in lines if line.startswith("Warning"))
    # the only warning: the old CR reader's non-standard ViewPosition "LATERAL" (kept on purpose)
    assert set(warnings) <= {"Warning - Unrecognized defined term <LATERAL> for value 1 of attribute <View Position>"}


def test_headers_as_a_modality_sends_them(testbed):
    out, records = testbed
    for rec in records:
        for img in rec["images"]:
            ds = dcmread(out / img["path"], stop_before_pixels=True)
            assert ds.PatientID == rec["patient_id"] and ds.StudyInstanceUID == rec["study_uid"]
            assert ds.AccessionNumber == rec["accession"] and ds.StudyDate == rec["study_date"]
            assert ds.StudyTime == rec["study_time"] and ds.PatientSex == rec["sex"]
            assert ds.PatientAge == f"{rec['age']:03d}Y" and ds.EthnicGroup == rec["ethnic_group"]
            assert ds.InstitutionName == rec["institution_name"]
            assert ds.SOPInstanceUID == img["sop_instance_uid"] and ds.SeriesInstanceUID == img["series_uid"]
            assert ds.Modality == img["modality"] and ds.ViewPosition == img["view"]
            assert ds.PhotometricInterpretation == img["photometric"] and ds.BitsStored == img["bits_stored"]
            assert ds.BitsAllocated == 16 and ds.HighBit == ds.BitsStored - 1 and ds.PixelRepresentation == 0
            assert ds.BodyPartExamined == "CHEST" and list(ds.ImageType)[:2] == ["ORIGINAL", "PRIMARY"]
            for keyword in ("StationName", "StudyDescription", "SeriesDescription", "ReferringPhysicianName",
                            "Manufacturer", "ManufacturerModelName", "ImagerPixelSpacing", "PatientOrientation",
                            "WindowCenter", "WindowWidth", "KVP", "PatientBirthDate", "PatientName"):
                assert ds.get(keyword) not in (None, ""), keyword
            station = next(s for s in INSTITUTIONS[rec["institution"]].stations if s.name == ds.StationName)
            assert ds.file_meta.SourceApplicationEntityTitle == station.ae_title
            assert float(ds.ImagerPixelSpacing[0]) == pytest.approx(430.0 / ds.Rows, rel=1e-3)
            lateral = img["view"] in ("LL", "LATERAL")
            assert list(ds.PatientOrientation) == (["P", "F"] if lateral else ["L", "F"])
            if ds.Modality == "DX":
                assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1"
                assert ds.PresentationIntentType == "FOR PRESENTATION" and ds.ImageLaterality == "U"
                assert ds.DetectorType in ("DIRECT", "SCINTILLATOR")
                assert float(ds.PixelSpacing[0]) < float(ds.ImagerPixelSpacing[0])  # patient plane
                shape = "INVERSE" if ds.PhotometricInterpretation == "MONOCHROME1" else "IDENTITY"
                assert ds.PresentationLUTShape == shape
            else:
                assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1"


# -- priors -----------------------------------------------------------------------------------
def test_priors_link_to_an_earlier_study_of_the_same_patient(testbed):
    out, records = testbed
    by_uid = {r["study_uid"]: r for r in records}
    for rec in records:
        if rec["study_index"] == 0:
            assert rec["prior_study_uid"] is None
            assert all(f["change"] is None for f in rec["findings"])
            continue
        prior = by_uid[rec["prior_study_uid"]]
        assert prior["patient_id"] == rec["patient_id"]
        assert prior["study_index"] == rec["study_index"] - 1
        assert (prior["study_date"], prior["study_time"]) < (rec["study_date"], rec["study_time"])
        assert all(f["change"] is not None for f in rec["findings"])
        before = {f["observation"]: f for f in prior["findings"] if f["change"] != "resolved"}
        for f in rec["findings"]:
            if f["change"] == "new":
                assert f["observation"] not in before
            elif f["observation"] != "Pneumonia":  # pneumonia follows its consolidation
                assert f["observation"] in before, (rec["accession"], f)
        # the comparison section names the prior's date in the site's format
        y, m, d = prior["study_date"][:4], prior["study_date"][4:6], prior["study_date"][6:]
        date = {"A": f"{y}-{m}-{d}", "B": f"{m}/{d}/{y}", "C": f"{int(d)} "}[rec["institution"]]
        assert date in rec["report"]["comparison"]
        # and the SR lists the prior's images as other evidence
        sr = dcmread(out / rec["report_sr"])
        other = {item.StudyInstanceUID for item in sr.PertinentOtherEvidenceSequence}
        assert other == {prior["study_uid"]}


def test_report_sr_holds_the_manifest_report(testbed):
    out, records = testbed
    for rec in records[:6]:
        sr = dcmread(out / rec["report_sr"])
        text = read_report(sr)
        assert text.findings == rec["report"]["findings"]
        assert text.impression == rec["report"]["impression"]
        assert sr.StudyInstanceUID == rec["study_uid"] and sr.PatientID == rec["patient_id"]
        assert sr.VerificationFlag == "VERIFIED" and sr.InstitutionName == rec["institution_name"]


# -- report text ------------------------------------------------------------------------------
TERMS = {
    "Cardiomegaly": r"cardiomegaly|enlarged heart|cardiac silhouette|heart size|heart is not enlarged",
    "Enlarged Cardiomediastinum": r"mediastin",
    "Lung Lesion": r"(?<!calcified )(nodule|mass)",
    "Lung Opacity": r"opacit|opacification|lungs:? (are )?(otherwise )?clear|^clear\.$",
    "Edema": r"edema|oedema",
    "Consolidation": r"consolidation",
    "Pneumonia": r"pneumonia|\bPNA\b",
    "Atelectasis": r"atelectasis|collapse",
    "Pneumothorax": r"pneumothorax|\bPTX\b",
    "Pleural Effusion": r"effusion|pleural fluid|pleural space",
    "Pleural Other": r"pleural thickening|pleural plaques",
    "Fracture": r"fracture|\bfx\b",
    "Support Devices": r"tube|catheter|\bCVC\b|\bETT\b|\bNGT\b|pacemaker|pacer|\bport\b|portacath|drain|lines",
}
HEDGE = r"possible|\bposs\b|cannot be excluded|not excluded|questionable|\?|could represent"
NEGATION = r"\bno\b|not enlarged|normal|\bnml\b|resolved|resolution|removed|removal|\bout\b|clear"


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=\.)\s+|\n|;\s*", text) if s.strip()]


def test_labels_agree_with_the_report_text(testbed):
    _, records = testbed
    checked = Counter()
    for rec in records:
        text = rec["report"]["findings"] + "\n" + rec["report"]["impression"]
        sentences = _sentences(text)
        for obs, term in TERMS.items():
            value = rec["labels"][obs]
            about = [s for s in sentences if re.search(term, s, re.I)]
            if value is None:
                assert not about, (rec["accession"], obs, about)
                continue
            assert about, (rec["accession"], obs, value, text)
            if value == 1:
                assert any(not re.search(HEDGE, s, re.I) and not re.search(NEGATION, s, re.I) for s in about), \
                    (rec["accession"], obs, about)
            elif value == -1:
                assert any(re.search(HEDGE, s, re.I) for s in about), (rec["accession"], obs, about)
            else:
                assert any(re.search(NEGATION, s, re.I) for s in about), (rec["accession"], obs, about)
            checked[value] += 1
    assert checked[1] and checked[0] and checked[-1]  # all three directions occur


def _study(institution: str, findings: list[Finding], prior: Study | None = None) -> Study:
    import datetime as dt
    return Study(1 if prior else 0, dt.datetime(2024, 5, 2, 10, 0), "inpatient", institution, ("PA", "LAT"),
                 findings)


def _report(patient: Patient, institution: str, findings: list[Finding], prior: Study | None = None):
    study = _study(institution, findings, prior)
    return write_report(patient, study, prior, np.random.default_rng(0), ("Doe^Jane",))


@pytest.fixture(scope="module")
def patient() -> Patient:
    return make_patient(np.random.default_rng(0), 0, 0)


def test_each_institution_writes_in_its_own_style(patient):
    import datetime as dt
    effusion = Finding("Pleural Effusion", "right", 0.5, detail={"seed": 1})
    ptx = Finding("Pneumothorax", "left", 0.2, detail={"seed": 1})
    heart = Finding("Cardiomegaly", None, 0.5, detail={"seed": 1})
    texts = {code: _report(patient, code, [effusion, ptx, heart]) for code in "ABC"}
    a, b, c = (texts[k].findings + "\n" + texts[k].impression for k in "ABC")
    assert "pleural effusion" in a and "pleural fluid" not in a
    assert "effusion" in b and "pleural effusion" not in b and "PTX" in b
    assert re.search(r"pleural fluid|fluid in the right pleural space", c) and "effusion" not in c
    assert "cardiomegaly" in a and "enlarged cardiac silhouette" in c.lower()
    assert a.startswith("Lungs:") or "Lines and tubes:" in a  # sectioned by system
    assert "Lungs:" not in b and "Lungs:" not in c
    assert texts["A"].impression.startswith("1. ") and texts["C"].impression.startswith("- ")
    normal = {code: _report(patient, code, []) for code in "ABC"}
    assert len({r.findings for r in normal.values()}) == 3 and len({r.impression for r in normal.values()}) == 3
    hedged = Finding("Pneumothorax", "left", 0.2, certain=False, detail={"seed": 1})
    hedges = {code: _report(patient, code, [hedged]).findings for code in "ABC"}
    assert all(re.search(HEDGE, t, re.I) for t in hedges.values())
    # comparison statements against the prior, with each site's date format
    prior = Study(0, dt.datetime(2024, 3, 1, 9, 0), "inpatient", "A", ("PA",),
                  [Finding("Pleural Effusion", "right", 0.8, detail={"seed": 1})])
    smaller = Finding("Pleural Effusion", "right", 0.3, change="improved", detail={"seed": 1})
    cmp = {code: _report(patient, code, [smaller], prior) for code in "ABC"}
    assert cmp["A"].comparison == "Compared with 2024-03-01: the right pleural effusion has decreased."
    assert "03/01/2024" in cmp["B"].comparison and "smaller" in cmp["B"].findings
    assert "1 March 2024" in cmp["C"].comparison and "decreased since 1 March 2024" in cmp["C"].findings


# -- image content ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def anatomy() -> Anatomy:
    return Anatomy.sample(np.random.default_rng(11), sex="M", bmi=25, age=60)


def _frontal(anatomy, findings, size=256) -> np.ndarray:
    att = render_view(anatomy, findings, "PA", size, np.random.default_rng(5))
    stored = to_stored(att, bits_stored=12, photometric="MONOCHROME2", rng=np.random.default_rng(6))
    return brightness(stored, bits_stored=12, photometric="MONOCHROME2")


def _heart_width(img: np.ndarray, anatomy: Anatomy) -> float:
    """Width of the bright run through the heart at its widest level, as a fraction of the image."""
    rows, cols = img.shape
    widths = []
    for v in np.linspace(anatomy.dome_v - 0.12, anatomy.dome_v - 0.04, 5):
        row = img[int(v * rows)]
        inner = row[int(0.2 * cols): int(0.8 * cols)]
        threshold = (np.percentile(inner, 10) + row[cols // 2]) / 2
        centre = int(0.53 * cols)
        left = right = centre
        while left > 0 and row[left - 1] > threshold:
            left -= 1
        while right < cols - 1 and row[right + 1] > threshold:
            right += 1
        widths.append((right - left) / cols)
    return max(widths)


def test_cardiomegaly_widens_the_heart(anatomy):
    normal = _heart_width(_frontal(anatomy, []), anatomy)
    big = _heart_width(_frontal(anatomy, [Finding("Cardiomegaly", None, 0.8, detail={"seed": 1})]), anatomy)
    thorax = 2 * anatomy.thorax_hw
    assert normal / thorax < 0.52 < big / thorax  # cardiothoracic ratio: normal vs enlarged
    assert big > 1.2 * normal


@pytest.mark.parametrize("side", ["right", "left"])
def test_effusion_brightens_the_lower_zone_on_its_side(anatomy, side):
    normal = _frontal(anatomy, [])
    fluid = _frontal(anatomy, [Finding("Pleural Effusion", side, 0.6, detail={"seed": 1})])
    rows, cols = normal.shape
    lower = slice(int((anatomy.dome_v - 0.1) * rows), int((anatomy.dome_v + 0.04) * rows))
    image_left, image_right = slice(int(0.15 * cols), int(0.35 * cols)), slice(int(0.65 * cols), int(0.85 * cols))
    gain_left = (fluid[lower, image_left] - normal[lower, image_left]).mean()
    gain_right = (fluid[lower, image_right] - normal[lower, image_right]).mean()
    # the patient's right is on the image left of a frontal view
    same, other = (gain_left, gain_right) if side == "right" else (gain_right, gain_left)
    assert same > 0.05 and abs(other) < 0.01


def test_pneumothorax_removes_lung_markings_at_the_apex(anatomy):
    normal = _frontal(anatomy, [], size=384)
    ptx = _frontal(anatomy, [Finding("Pneumothorax", "left", 0.6, detail={"seed": 1})], size=384)
    rows, cols = normal.shape
    apex = (slice(int((anatomy.apex_v + 0.05) * rows), int((anatomy.apex_v + 0.2) * rows)),
            slice(int((0.5 + anatomy.thorax_hw * 0.6) * cols), int((0.5 + anatomy.thorax_hw * 0.85) * cols)))
    assert ptx[apex].mean() < normal[apex].mean()  # more air


def test_devices_and_nodules_are_visible(anatomy):
    normal = _frontal(anatomy, [])
    devices = _frontal(anatomy, [Finding("Support Devices", None, 1.0, detail={
        "seed": 1, "devices": [{"kind": "ett", "tip_cm": 4}, {"kind": "pacemaker", "side": "left", "leads": 2}]})])
    assert (devices > 0.9).sum() > (normal > 0.9).sum() + 50  # metal is the brightest thing there is
    nodule = Finding("Lung Lesion", "right", 0.5, detail={"seed": 1, "zone": "mid", "pos": [0.5, 0.5]})
    diff = _frontal(anatomy, [nodule]) - normal
    ys, xs = np.nonzero(diff > 0.1)
    assert len(ys) > 20 and xs.mean() < normal.shape[1] / 2  # a compact bright spot in the right lung


def test_testbed_images_follow_their_labels(testbed):
    """Across the generated DICOM files: hearts labelled enlarged are wider than the others."""
    out, records = testbed
    ratios = defaultdict(list)
    for rec in records:
        frontal = rec["images"][0]
        if frontal["view"] != "PA" or rec["labels"]["Pleural Effusion"] == 1:
            continue
        ds = dcmread(out / frontal["path"])
        img = brightness(ds.pixel_array, bits_stored=ds.BitsStored, photometric=ds.PhotometricInterpretation)
        rows = img[int(0.55 * img.shape[0]): int(0.65 * img.shape[0])]
        bright = (rows > (np.percentile(rows, 15) + np.percentile(rows, 60)) / 2).mean()
        ratios[rec["labels"]["Cardiomegaly"] == 1].append(bright)
    assert ratios[True] and ratios[False]
    assert np.mean(ratios[True]) > np.mean(ratios[False])


# -- CLI ---------------------------------------------------------------------------------------
def test_cli_writes_a_testbed(tmp_path):
    result = CliRunner().invoke(synth, ["--out", str(tmp_path / "tb"), "--patients", "2", "--seed", "5",
                                        "--size", "128", "--workers", "1"])
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "tb" / "manifest.jsonl").read_text().splitlines()
    assert lines and all(json.loads(line)["patient_id"].startswith("SYN5-") for line in lines)
    assert f"{len(lines)} studies" in result.output
    bad = CliRunner().invoke(synth, ["--out", str(tmp_path / "x"), "--size", "64"])
    assert bad.exit_code != 0 and "size" in bad.output.lower()
