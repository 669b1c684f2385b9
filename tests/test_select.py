"""View selection on mixed studies (unirg.plugin.select)."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import (
    BasicTextSRStorage,
    ComprehensiveSRStorage,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from unirg.plugin.select import NoUsableImage, classify_view, is_chest, select_views, skip_reason


def image(
    view: str | None = "PA",
    *,
    body_part: str | None = "CHEST",
    modality: str = "DX",
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY"),
    number: int = 1,
    sop_class: str | None = None,
    **attributes,
) -> Dataset:
    """A small chest radiograph; ``view`` goes to View Position."""
    ds = Dataset()
    ds.SOPClassUID = sop_class or (
        DigitalXRayImageStorageForPresentation if modality == "DX" else ComputedRadiographyImageStorage
    )
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = modality
    ds.ImageType = list(image_type)
    ds.InstanceNumber = number
    if view is not None:
        ds.ViewPosition = view
    if body_part is not None:
        ds.BodyPartExamined = body_part
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.zeros((8, 8), np.uint16).tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def report(sop_class: str = ComprehensiveSRStorage) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "SR"
    return ds


def code_item(code) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator = code.value, code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


# --- classify_view -----------------------------------------------------------


@pytest.mark.parametrize(
    ("position", "expected"),
    [
        ("PA", "PA"),
        ("AP", "AP"),
        ("LL", "LATERAL"),
        ("RL", "LATERAL"),
        ("LAT", "LATERAL"),
        ("AP ERECT", "AP"),
    ],
)
def test_view_position(position, expected):
    assert classify_view(image(position)) == expected


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (codes.SCT.PosteroAnterior, "PA"),
        (codes.SCT.AnteroPosterior, "AP"),
        (codes.SCT.LeftLateral, "LATERAL"),
        (codes.SCT.RightLateral, "LATERAL"),
    ],
)
def test_view_code_sequence(code, expected):
    assert classify_view(image(None, ViewCodeSequence=[code_item(code)])) == expected


def test_view_code_retired_snomed_rt_and_meaning():
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "R-10206", "SRT", "antero-posterior"
    assert classify_view(image(None, ViewCodeSequence=[item])) == "AP"
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "99X", "99LOCAL", "Lateral view"
    assert classify_view(image(None, ViewCodeSequence=[item])) == "LATERAL"


def test_view_from_image_type():
    assert classify_view(image(None, image_type=("ORIGINAL", "PRIMARY", "LATERAL"))) == "LATERAL"
    assert classify_view(image(None, image_type=("ORIGINAL", "PRIMARY", "PA"))) == "PA"


def test_view_from_patient_orientation():
    assert classify_view(image(None, PatientOrientation=["L", "F"])) == "FRONTAL"
    assert classify_view(image(None, PatientOrientation=["P", "F"])) == "LATERAL"
    assert classify_view(image(None, PatientOrientation=["A", "L"])) is None


def test_view_from_description_and_unknown():
    assert classify_view(image(None, SeriesDescription="Thorax p.a.")) == "PA"
    assert classify_view(image(None, ProtocolName="CHEST LAT")) == "LATERAL"
    assert classify_view(image(None, SeriesDescription="Chest left decubitus")) is None
    assert classify_view(image(None)) is None
    assert classify_view(image("LLD")) is None  # decubitus is not a standard frontal/lateral


# --- is_chest / skip_reason ----------------------------------------------------


def test_chest_hints():
    assert is_chest(image(body_part="CHEST"))
    assert is_chest(image(body_part="THORAX"))
    assert is_chest(image(body_part=None, StudyDescription="XR CHEST 2 VIEWS"))
    assert is_chest(image(body_part="", RequestedProcedureDescription="CXR portable"))
    region = code_item(codes.SCT.Chest)
    assert is_chest(image(body_part=None, AnatomicRegionSequence=[region]))
    assert not is_chest(image(body_part="KNEE"))
    assert not is_chest(image(body_part="HAND", SeriesDescription="Hand PA"))
    # another body part, but the study says chest: a chest hint wins
    assert is_chest(image(body_part="KNEE", StudyDescription="Chest PA")) is True


@pytest.mark.parametrize(
    ("dataset", "reason_part"),
    [
        (report(), "structured report"),
        (report(BasicTextSRStorage), "structured report"),
        (image(sop_class=SecondaryCaptureImageStorage, modality="OT"), "secondary capture"),
        (image(image_type=("DERIVED", "SECONDARY")), "secondary image"),
        (image(image_type=("ORIGINAL", "SECONDARY")), "secondary image"),
        (image(modality="CT"), "not a radiograph"),
        (image(body_part="KNEE"), "not a chest image"),
        (image(view="RAO"), "neither frontal nor lateral"),
    ],
)
def test_skip_reasons(dataset, reason_part):
    assert reason_part in skip_reason(dataset)


def test_no_pixel_data_is_skipped():
    ds = image()
    del ds.PixelData
    assert skip_reason(ds) == "no pixel data"


def test_original_chest_image_is_not_skipped():
    assert skip_reason(image("PA")) is None
    assert skip_reason(image("LL", modality="CR")) is None


# --- select_views on whole studies -----------------------------------------------


def test_frontal_and_lateral_study():
    pa, lat, sr = image("PA"), image("LL", number=2), report()
    selection = select_views([sr, lat, pa])
    assert selection.frontal is pa and selection.lateral is lat
    assert selection.frontal_view == "PA"
    reason = "structured report or key object selection, not an image"
    assert selection.skipped == [(sr.SOPInstanceUID, reason)]


def test_ap_only_study():
    ap = image("AP", modality="CR")
    selection = select_views([ap])
    assert selection.frontal is ap and selection.lateral is None and selection.frontal_view == "AP"


def test_lateral_only_study():
    lat = image("LL")
    with pytest.raises(NoUsableImage, match="no frontal") as info:
        select_views([lat])
    assert info.value.selection.lateral is lat
    selection = select_views([lat], require_frontal=False)
    assert selection.frontal is None and selection.lateral is lat


def test_non_chest_study():
    knee = image("AP", body_part="KNEE")
    with pytest.raises(NoUsableImage, match="not a chest image") as info:
        select_views([knee])
    assert info.value.selection.skipped[0][0] == knee.SOPInstanceUID


def test_sr_only_study():
    with pytest.raises(NoUsableImage, match="structured report"):
        select_views([report()])


def test_empty_study():
    with pytest.raises(NoUsableImage, match="empty"):
        select_views([])


def test_pa_preferred_over_ap_and_latest_repeat_wins():
    ap = image("AP", number=1)
    pa_first = image("PA", number=2, AcquisitionDateTime="20240102101000")
    pa_repeat = image("PA", number=3, AcquisitionDateTime="20240102101500")
    derived = image("PA", image_type=("DERIVED", "SECONDARY"), number=4)
    selection = select_views([ap, pa_first, derived, pa_repeat])
    assert selection.frontal is pa_repeat
    reasons = dict(selection.skipped)
    assert reasons[ap.SOPInstanceUID] == "another frontal image was chosen"
    assert reasons[pa_first.SOPInstanceUID] == "another frontal image was chosen"
    assert "secondary image" in reasons[derived.SOPInstanceUID]


# --- real-world DERIVED\\PRIMARY radiographs ----------------------------------------------


def _factory_image(view: str, modality: str, image_type: tuple[str, ...], image: int = 1, **attributes):
    """A full CR / DX header from tests/dicom_factories.py with the given Image Type."""
    from dicom_factories import make_chest_image

    ds = make_chest_image(modality=modality, view=view, image=image)
    ds.ImageType = list(image_type)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def _lossy(ds):
    """What a lossy-compressed archive copy carries (e.g. the NEMA WG04 chest CRs)."""
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = [10.0]
    ds.LossyImageCompressionMethod = ["ISO_10918_1"]
    ds.DerivationDescription = "Lossy compression with JPEG baseline, IJG quality factor 75"
    ds.DerivationCodeSequence = [code_item(codes.DCM.LossyCompression)]
    return ds


@pytest.mark.parametrize("modality", ["CR", "DX"])
def test_lossy_derived_primary_radiograph_is_accepted(modality):
    frontal = _lossy(_factory_image("PA", modality, ("DERIVED", "PRIMARY")))
    lateral = _factory_image("LL", modality, ("DERIVED", "PRIMARY"), image=2,
                             DerivationDescription="Processed: edge enhancement, unsharp mask")
    assert skip_reason(frontal) is None and skip_reason(lateral) is None
    selection = select_views([frontal, lateral])
    assert selection.frontal is frontal and selection.lateral is lateral and selection.skipped == []


@pytest.mark.parametrize("modality", ["CR", "DX"])
def test_original_is_preferred_over_its_derived_copy_even_when_the_copy_is_newer(modality):
    original = _factory_image("PA", modality, ("ORIGINAL", "PRIMARY"), image=1, AcquisitionDateTime="20240102101000")
    copy = _lossy(_factory_image("PA", modality, ("DERIVED", "PRIMARY"), image=2,
                                 AcquisitionDateTime="20240102101500"))
    lat_copy = _lossy(_factory_image("LL", modality, ("DERIVED", "PRIMARY"), image=3))
    lat_original = _factory_image("LL", modality, ("ORIGINAL", "PRIMARY"), image=4)
    selection = select_views([copy, lat_copy, original, lat_original])
    assert selection.frontal is original and selection.lateral is lat_original
    reasons = dict(selection.skipped)
    assert reasons == {copy.SOPInstanceUID: "another frontal image was chosen",
                       lat_copy.SOPInstanceUID: "another lateral image was chosen"}
    # a derived PA still beats an original AP: the view comes first
    ap = _factory_image("AP", modality, ("ORIGINAL", "PRIMARY"), image=5)
    assert select_views([ap, copy]).frontal is copy


@pytest.mark.parametrize(
    ("attributes", "image_type"),
    [
        ({}, ("DERIVED", "PRIMARY", "SUBTRACTION")),
        ({}, ("DERIVED", "PRIMARY", "DUAL_ENERGY", "SOFT_TISSUE")),
        ({}, ("DERIVED", "PRIMARY", "BONE")),
        ({}, ("DERIVED", "PRIMARY", "KEY_IMAGE")),
        ({"DerivationDescription": "Annotated by workstation"}, ("DERIVED", "PRIMARY")),
        ({"DerivationCodeSequence": [code_item(codes.DCM.PixelByPixelSubtraction)]}, ("DERIVED", "PRIMARY")),
        ({"DerivationCodeSequence": [code_item(codes.DCM.MultiEnergyProportionalWeighting)]}, ("DERIVED", "PRIMARY")),
        ({"DerivationCodeSequence": [code_item(codes.DCM.SegmentationImageDerivation)]}, ("DERIVED", "PRIMARY")),
    ],
)
def test_derived_objects_that_are_not_the_radiograph_are_still_skipped(attributes, image_type):
    ds = _factory_image("PA", "DX", image_type, **attributes)
    reason = skip_reason(ds)
    assert reason is not None and reason.startswith("derived image that is not the radiograph")
    with pytest.raises(NoUsableImage, match="not the radiograph"):
        select_views([ds])


def test_secondary_and_secondary_capture_are_still_skipped():
    for image_type in (("DERIVED", "SECONDARY"), ("ORIGINAL", "SECONDARY")):
        assert skip_reason(_factory_image("PA", "CR", image_type)).startswith("secondary image")
    sc = _factory_image("PA", "DX", ("DERIVED", "PRIMARY"), SOPClassUID=SecondaryCaptureImageStorage)
    assert skip_reason(sc) == "secondary capture"
