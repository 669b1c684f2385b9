"""DICOM -> PIL pipeline (unirg.model.pixels) on every transfer syntax we meet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from unirg.model.pixels import PixelDataError, dataset_to_array, dataset_to_image, fit_image, window


def chest_array(rows: int = 96, columns: int = 80, bits: int = 12) -> np.ndarray:
    """A chest-like 12-bit image: dark lungs, bright mediastinum and a bright bottom edge."""
    y, x = np.mgrid[0:rows, 0:columns]
    top = (1 << bits) - 1
    arr = np.full((rows, columns), top * 0.2)
    arr[:, columns * 2 // 5 : columns * 3 // 5] = top * 0.8  # mediastinum
    arr[rows * 4 // 5 :, :] = top * 0.9  # diaphragm / abdomen
    arr += (x + y) % 7  # texture, so compression has something to do
    return np.clip(arr, 0, top).astype(np.uint16)


def dx_dataset(arr: np.ndarray, *, photometric: str = "MONOCHROME2", **attributes) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = "PIX"
    ds.Rows, ds.Columns = arr.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = arr.astype(np.uint16).tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def transcode_with_gdcm(src: Path, dst: Path, syntax_name: str) -> None:
    """pydicom has no JPEG Lossless encoder; GDCM has."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    assert reader.Read(), f"GDCM cannot read {src}"
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(getattr(gdcm.TransferSyntax, syntax_name)))
    change.SetInput(reader.GetImage())
    assert change.Change(), f"GDCM cannot transcode to {syntax_name}"
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(dst))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()


def encoded_file(tmp_path: Path, syntax, arr: np.ndarray, photometric: str = "MONOCHROME2") -> Path:
    ds = dx_dataset(arr, photometric=photometric)
    plain = tmp_path / "plain.dcm"
    ds.save_as(plain, enforce_file_format=True)
    out = tmp_path / f"{syntax.name[:20].replace(' ', '_')}.dcm"
    if syntax == ExplicitVRLittleEndian:
        return plain
    if syntax == JPEGLosslessSV1:
        transcode_with_gdcm(plain, out, "JPEGLosslessProcess14_1")
    elif syntax == ImplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.save_as(out, enforce_file_format=True)
    else:
        ds.compress(syntax)
        ds.save_as(out, enforce_file_format=True)
    return out


SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEG2000Lossless,
    RLELossless,
]


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
@pytest.mark.parametrize("syntax", SYNTAXES, ids=lambda s: s.name.split(" ")[0] + s[-4:])
def test_every_transfer_syntax_decodes_to_the_same_image(tmp_path, syntax, photometric):
    arr = chest_array()
    path = encoded_file(tmp_path, syntax, arr, photometric)
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == syntax
    reference = dataset_to_array(dx_dataset(arr, photometric=photometric))
    got = dataset_to_array(ds)
    assert got.dtype == np.uint8 and got.shape == arr.shape
    np.testing.assert_array_equal(got, reference)  # all lossless: identical after windowing
    mediastinum, lung = got[40, 40], got[40, 5]
    if photometric == "MONOCHROME2":
        assert mediastinum > lung  # dense = white
    else:
        assert mediastinum < lung  # stored values are read as MONOCHROME1: low = white
    image = dataset_to_image(path, size=64)
    assert image.size == (64, 64) and image.mode == "RGB"


def test_monochrome1_is_inverted():
    arr = chest_array()
    mono2 = dataset_to_array(dx_dataset(arr))
    mono1 = dataset_to_array(dx_dataset(arr, photometric="MONOCHROME1"))
    np.testing.assert_array_equal(mono1.astype(int), 255 - mono2.astype(int))


def test_window_center_width_is_applied():
    arr = chest_array()
    top = 4095
    # a narrow window around the lung value: lungs mid-grey, mediastinum saturated white
    ds = dx_dataset(arr, WindowCenter=int(top * 0.2) + 3, WindowWidth=40)
    out = dataset_to_array(ds)
    assert out[40, 40] == 255
    assert 60 < out[40, 5] < 200
    # SIGMOID function gives a smooth curve, never exactly 0 / 255 inside the window
    ds.VOILUTFunction = "SIGMOID"
    assert 0 < dataset_to_array(ds)[40, 5] < 255


@pytest.mark.parametrize("vr", ["US", "OW"])
def test_voi_lut_sequence_is_preferred_over_window(vr):
    arr = chest_array()
    table = (np.arange(4096) >= 2000).astype(np.uint16) * 255  # a threshold LUT, 8-bit output
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 8]
    item.add_new("LUTData", vr, table.tobytes() if vr == "OW" else table.tolist())
    ds = dx_dataset(arr, WindowCenter=100, WindowWidth=10)
    ds.VOILUTSequence = [item]
    out = dataset_to_array(ds)
    assert set(np.unique(out)) <= {0, 255}
    assert out[40, 40] == 255 and out[40, 5] == 0


def test_rescale_then_percentile_window_when_no_voi():
    arr = chest_array()
    plain = dataset_to_array(dx_dataset(arr))
    rescaled = dataset_to_array(dx_dataset(arr, RescaleSlope=2, RescaleIntercept=-1000))
    np.testing.assert_array_equal(plain, rescaled)  # a linear rescale does not change a percentile window
    assert plain.min() == 0 and plain.max() == 255


def test_constant_image_does_not_divide_by_zero():
    out = dataset_to_array(dx_dataset(np.full((16, 16), 7, np.uint16)))
    assert out.shape == (16, 16) and out.max() == 0


def test_multiframe_uses_first_frame():
    frames = np.stack([chest_array(32, 32), np.zeros((32, 32), np.uint16)])
    ds = dx_dataset(frames, NumberOfFrames=2)
    out = dataset_to_array(ds)
    assert out.shape == (32, 32) and out.max() == 255


def test_no_pixel_data_raises():
    ds = dx_dataset(chest_array(8, 8))
    del ds.PixelData
    with pytest.raises(PixelDataError, match="no pixel data"):
        dataset_to_array(ds)


def test_aspect_ratio_is_kept_and_padded():
    tall = Image.fromarray(np.full((200, 100), 255, np.uint8))
    square = fit_image(tall, 64)
    assert square.size == (64, 64)
    pixels = np.asarray(square)
    assert pixels[:, 0].max() == 0 and pixels[:, -1].max() == 0  # black side bars
    assert pixels[:, 32].min() == 255  # image in the middle, not stretched
    assert fit_image(tall, 64, fit="longest").size == (32, 64)
    with pytest.raises(ValueError, match="fit"):
        fit_image(tall, 64, fit="stretch")


def test_unirg_default_is_512_square():
    image = dataset_to_image(dx_dataset(chest_array(300, 250)))
    assert image.size == (512, 512)
    assert dataset_to_image(dx_dataset(chest_array(30, 25)), size=None, mode="L").size == (25, 30)


def test_window_function_linear_matches_dicom_formula():
    # PS3.3 C.11.2.1.2.1: c=2048, w=4096 maps 0 -> 0 and 4095 -> 1
    values = window(np.array([0, 2048, 4095]), 2048, 4096)
    assert values[0] == pytest.approx(0.0, abs=1e-3) and values[-1] == pytest.approx(1.0, abs=1e-3)
    assert window(np.array([10, 11]), 10.5, 1).tolist() == [0.0, 1.0]


def test_study_input_from_datasets():
    from unirg.model.study import StudyInput

    current = dx_dataset(
        chest_array(), ReasonForTheRequestedProcedure="Fever and cough", StudyInstanceUID="1.2.3"
    )
    lateral = dx_dataset(chest_array(), photometric="MONOCHROME1")
    prior = dx_dataset(chest_array(), StudyDate="20240102")
    study = StudyInput.from_datasets(current, lateral, prior_frontal=prior, prior_report="Findings: Clear.")
    assert study.indication == "Fever and cough"
    assert study.comparison == "Chest radiograph 2024-01-02."
    assert study.study_uid == "1.2.3"
    assert study.frontal.size == study.lateral.size == study.prior_frontal.size == (512, 512)
    assert study.prior_report == "Findings: Clear."
    # a prior report without a prior image is dropped, as the prompt would ignore it anyway
    alone = StudyInput.from_datasets(current, prior_report="Findings: Clear.", size=64)
    assert alone.prior_report is None and alone.comparison is None and alone.frontal.size == (64, 64)
