"""DX and CR image objects with the header a chest X-ray unit sends, in any of the lossless syntaxes.

``build_image`` makes the dataset (uncompressed); ``encode`` puts the pixels in the chosen transfer
syntax.  JPEG-LS, JPEG 2000 and RLE go through pydicom's encoders (pyjpegls, pylibjpeg-openjpeg,
pylibjpeg-rle); JPEG Lossless SV1 through :mod:`unirg.trainer.synth.jpeg_lossless`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sr.codedict import codes
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    PYDICOM_IMPLEMENTATION_UID,
    RLELossless,
)

from unirg.trainer.synth.anatomy import MM_PER_IMAGE
from unirg.trainer.synth.institutions import Institution, Station
from unirg.trainer.synth.jpeg_lossless import encode_sv1

IMPLEMENTATION_VERSION = "UNIRG_SYNTH_1"
_ENCODING_PLUGIN = {JPEGLSLossless: "pyjpegls", JPEG2000Lossless: "pylibjpeg", RLELossless: "pylibjpeg"}


@dataclass(frozen=True)
class StudyHeader:
    """Patient and study attributes shared by every object of a study."""

    patient_id: str
    patient_name: str
    birth_date: dt.date
    sex: str
    age: int
    ethnic_group: str
    height_m: float
    weight_kg: float
    study_uid: str
    accession: str
    study_id: str
    when: dt.datetime
    description: str
    referring: str
    institution: Institution


@dataclass(frozen=True)
class ImageSpec:
    """One image: where it comes from, how it is positioned and encoded."""

    station: Station
    view: str  # "PA" | "AP" | "LAT"
    series_uid: str
    series_number: int
    series_description: str
    sop_uid: str
    instance_number: int
    acquired: dt.datetime
    transfer_syntax: str
    exposure_seed: int

    @property
    def view_position(self) -> str:
        return self.station.lateral_view_position if self.view == "LAT" else self.view


def _code_item(code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def _ds_str(value: float) -> str:
    """A DS value of at most 16 characters."""
    return f"{value:.8g}"[:16]


def _da(day: dt.date) -> str:
    return day.strftime("%Y%m%d")


def _tm(t: dt.datetime) -> str:
    return t.strftime("%H%M%S")


def build_image(header: StudyHeader, spec: ImageSpec, pixels: np.ndarray, *, bits_stored: int,
                photometric: str) -> Dataset:
    """The image object with `pixels` (uint16) as native Explicit VR Little Endian pixel data."""
    st, inst = spec.station, header.institution
    dx = st.modality == "DX"
    rows, cols = pixels.shape
    sop_class = DigitalXRayImageStorageForPresentation if dx else ComputedRadiographyImageStorage
    rng = np.random.default_rng(spec.exposure_seed)

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = spec.sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    ds.file_meta.SourceApplicationEntityTitle = st.ae_title

    # SOP common, general image
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""] if dx else ["ORIGINAL", "PRIMARY"]
    ds.InstanceCreationDate = _da(spec.acquired)
    ds.InstanceCreationTime = _tm(spec.acquired)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = spec.sop_uid
    ds.StudyDate = _da(header.when)
    ds.SeriesDate = _da(spec.acquired)
    ds.AcquisitionDate = _da(spec.acquired)
    ds.ContentDate = _da(spec.acquired)
    ds.StudyTime = _tm(header.when)
    ds.SeriesTime = _tm(spec.acquired)
    ds.AcquisitionTime = _tm(spec.acquired)
    ds.ContentTime = _tm(spec.acquired)
    ds.AccessionNumber = header.accession
    ds.Modality = st.modality
    if dx:
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = st.manufacturer
    ds.InstitutionName = inst.name
    ds.InstitutionAddress = inst.address
    ds.ReferringPhysicianName = header.referring
    ds.StationName = st.name
    ds.StudyDescription = header.description
    ds.SeriesDescription = spec.series_description
    ds.InstitutionalDepartmentName = inst.department
    ds.ManufacturerModelName = st.model
    if dx:
        ds.AnatomicRegionSequence = [_code_item(codes.SCT.Chest)]

    # patient
    ds.PatientName = header.patient_name
    ds.PatientID = header.patient_id
    ds.IssuerOfPatientID = "UNIRG-SYNTH"
    ds.PatientBirthDate = _da(header.birth_date)
    ds.PatientSex = header.sex
    ds.PatientAge = f"{header.age:03d}Y"
    if inst.sends_size_weight:
        ds.PatientSize = _ds_str(header.height_m)
        ds.PatientWeight = _ds_str(header.weight_kg)
    ds.EthnicGroup = header.ethnic_group

    # acquisition: mobile AP films at a short distance and low kV, PA / lateral in the room
    ap, lateral = spec.view == "AP", spec.view == "LAT"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = spec.view_position
    kvp = 90 if ap else 125 if lateral else 120
    ma = int(rng.integers(160, 400))
    ms = int(rng.integers(4, 12) * (2 if lateral else 1))
    sid = 1000 if ap else 1800
    ds.KVP = _ds_str(kvp + int(rng.integers(-5, 6)))
    ds.DeviceSerialNumber = st.serial
    ds.SoftwareVersions = st.software
    ds.ProtocolName = header.description
    ds.DistanceSourceToDetector = _ds_str(sid)
    ds.DistanceSourceToPatient = _ds_str(sid - (150 if ap else 250))
    ds.ExposureTime = str(ms)
    ds.XRayTubeCurrent = str(ma)
    ds.Exposure = str(max(1, round(ma * ms / 1000)))
    detector_mm = MM_PER_IMAGE  # a 43 cm detector whatever the matrix: spacing follows --size
    imager_spacing = detector_mm / rows
    magnification = sid / (sid - (150 if ap else 250))
    ds.ImagerPixelSpacing = [_ds_str(imager_spacing), _ds_str(imager_spacing)]
    if dx:
        ds.DetectorType = st.detector_type
        ds.DetectorConfiguration = "AREA"
        ds.DetectorID = f"{st.serial}-D"
        ds.DetectorManufacturerName = st.manufacturer
        ds.DetectorManufacturerModelName = f"{st.model} detector"
        ds.FieldOfViewShape = "RECTANGLE"
        ds.FieldOfViewDimensions = [round(detector_mm), round(detector_mm)]
        ds.EstimatedRadiographicMagnificationFactor = _ds_str(magnification)
        ds.PositionerType = "COLUMN"
    else:
        ds.PlateID = f"PL{int(rng.integers(1000, 9999))}"
        ds.CassetteOrientation = "PORTRAIT"
        ds.CassetteSize = "35CMX43CM"
        ds.Sensitivity = _ds_str(int(rng.integers(150, 450)))

    # study / series / instance
    ds.StudyInstanceUID = header.study_uid
    ds.SeriesInstanceUID = spec.series_uid
    ds.StudyID = header.study_id
    ds.SeriesNumber = spec.series_number
    ds.InstanceNumber = spec.instance_number
    ds.PatientOrientation = ["P", "F"] if lateral else ["L", "F"]
    if dx:
        ds.ImageLaterality = "U"
        # CID 19: portable films are taken lying or half sitting, the others standing
        posture = codes.SCT.SemiErect if ap else codes.NCIt.Erect
        ds.PatientOrientationCodeSequence = [_code_item(posture)]
        view_code = {"PA": codes.SCT.PosteroAnterior, "AP": codes.SCT.AnteroPosterior,
                     "LAT": codes.SCT.LeftLateral}[spec.view]
        item = _code_item(view_code)
        item.ViewModifierCodeSequence = []
        ds.ViewCodeSequence = [item]
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"

    # image pixel and presentation
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = rows, cols
    if dx:  # calibrated to the patient plane; CR sends the detector spacing only
        ds.PixelSpacing = [_ds_str(imager_spacing / magnification)] * 2
        ds.PixelSpacingCalibrationType = "GEOMETRY"
        ds.PixelSpacingCalibrationDescription = "Estimated radiographic magnification at the patient plane"
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    lo, hi = np.percentile(pixels[rows // 8: -rows // 8, cols // 8: -cols // 8], [1, 99])
    ds.WindowCenter = _ds_str(round((lo + hi) / 2))
    ds.WindowWidth = _ds_str(max(2, round(hi - lo)))
    ds.WindowCenterWidthExplanation = "DEFAULT"
    if dx:
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1 if photometric == "MONOCHROME1" else -1
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.RescaleType = "US"
        ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
        ds.AcquisitionContextSequence = []
    ds.PixelData = pixels.astype("<u2").tobytes()
    return ds


def encode(ds: Dataset, pixels: np.ndarray, transfer_syntax: str) -> None:
    """Put `pixels` into `ds` in `transfer_syntax` (lossless only)."""
    if transfer_syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        ds.file_meta.TransferSyntaxUID = transfer_syntax
        return
    if transfer_syntax == JPEGLosslessSV1:
        ds.PixelData = encapsulate([encode_sv1(pixels, int(ds.BitsStored))])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        return
    try:
        plugin = _ENCODING_PLUGIN[transfer_syntax]
    except KeyError:
        raise ValueError(f"transfer_syntax {transfer_syntax!r} is not one of the testbed's lossless syntaxes") from None
    ds.compress(transfer_syntax, pixels, encoding_plugin=plugin, generate_instance_uid=False)
