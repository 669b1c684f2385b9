"""Small synthetic chest radiographs (DX / CR) for tests, built with pydicom only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    PYDICOM_IMPLEMENTATION_UID,
    generate_uid,
)

# CID 4010 "DX View" codes for ViewCodeSequence
VIEW_CODES = {
    "PA": ("272479007", "postero-anterior"),
    "AP": ("399348003", "antero-posterior"),
    "LL": ("399173006", "left lateral"),
    "RL": ("399198007", "right lateral"),
}

SOP_CLASS = {
    "DX": DigitalXRayImageStorageForPresentation,
    "CR": ComputedRadiographyImageStorage,
}


def uid_for(*parts: object) -> str:
    """A UID derived from ``parts``: the same parts give the same UID."""
    return generate_uid(entropy_srcs=["unirg-tests", *map(str, parts)])


def make_chest_image(
    *,
    patient_id: str = "P001",
    patient_name: str = "Doe^Jane",
    study: str = "S1",
    image: int = 1,
    modality: str = "DX",
    view: str = "PA",
    study_date: str = "20240102",
    charset: str | None = None,
    size: int = 64,
) -> FileDataset:
    """A ``size``-square 12-bit chest image of one patient's study.

    Parameters
    ----------
    patient_id, patient_name : str
        Patient identity.
    study : str
        Short study key; Study / Series / SOP Instance UIDs are derived from it
        (with ``patient_id`` and ``image``), so equal arguments give equal UIDs.
    image : int
        Image number within the study.
    modality : {"DX", "CR"}
        DX builds a DX Image "For Presentation", CR a CR Image.
    view : str
        View Position (PA, AP, LL...).
    study_date : str
        Study date, ``YYYYMMDD``.
    charset : str, optional
        Specific Character Set of the image (e.g. ``"ISO_IR 100"``).
    size : int
        Rows and columns.
    """
    sop_class = SOP_CLASS[modality]
    sop_uid = uid_for(patient_id, study, image)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    if charset:
        ds.SpecificCharacterSet = charset
    # SOP Common, Patient, General Study
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.PatientName, ds.PatientID = patient_name, patient_id
    ds.PatientBirthDate, ds.PatientSex = "19600101", "F"
    ds.StudyInstanceUID = uid_for(patient_id, study)
    ds.StudyDate, ds.StudyTime = study_date, "101500"
    ds.AccessionNumber, ds.StudyID = f"A{study}", study
    ds.ReferringPhysicianName = "Ref^Doctor"
    ds.StudyDescription = "XR CHEST"
    # General Series / DX Series / General Equipment
    ds.Modality = modality
    ds.SeriesInstanceUID = uid_for(patient_id, study, "series", modality)
    ds.SeriesNumber, ds.InstanceNumber = 1, image
    ds.Manufacturer = "Acme Radiography"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    ds.ContentDate, ds.ContentTime = study_date, "101600"
    ds.PatientOrientation = ["P", "F"] if view != "LL" else ["A", "F"]
    # Image Pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ramp = np.add.outer(np.arange(size), np.arange(size)) * (4095 // (2 * size))
    ds.PixelData = ramp.astype(np.uint16).tobytes()
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.AcquisitionDeviceProcessingDescription = ""
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
        ds.PresentationLUTShape = "IDENTITY"
        ds.LossyImageCompression = "00"
        ds.BurnedInAnnotation = "NO"
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
        ds.DetectorType = "DIRECT"
        ds.ImagerPixelSpacing = [0.2, 0.2]
        ds.ImageLaterality = "U"
        ds.AnatomicRegionSequence = [_code("51185008", "Chest")]
        ds.ViewCodeSequence = [_code(*VIEW_CODES[view])] if view in VIEW_CODES else []
        ds.AcquisitionContextSequence = []
        ds.PositionerType = ""
        ds.FrameOfReferenceUID = uid_for(patient_id, study, "for")
        ds.PositionReferenceIndicator = ""
        ds.PatientPosition = ""
    else:
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    return ds


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "SCT", meaning
    return item


def write_image(ds: FileDataset, folder: Path) -> Path:
    """Write ``ds`` into ``folder`` as ``<SOPInstanceUID>.dcm``; return the path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path
