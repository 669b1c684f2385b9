"""The three synthetic sites: names, stations (modality, detector, pixel encoding) and staff.

Each site sends from its own stations, so the testbed mixes DX and CR objects, MONOCHROME1 and
MONOCHROME2, 10 to 16 bits stored and six transfer syntaxes the way a real PACS receives them.
The reporting style of each site lives in :mod:`unirg.trainer.synth.report`.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

@dataclass(frozen=True)
class Station:
    """One X-ray unit and the way it encodes what it sends."""

    name: str  # StationName
    ae_title: str
    modality: str  # "DX" | "CR"
    manufacturer: str
    model: str
    software: str
    serial: str
    portable: bool  # a mobile unit: takes the AP films on the wards and in the ICU
    photometric: str  # "MONOCHROME1" | "MONOCHROME2"
    bits_stored: int
    transfer_syntaxes: tuple[tuple[str, float], ...]  # (UID, weight)
    detector_type: str | None = None  # DX only: DIRECT | SCINTILLATOR | STORAGE
    lateral_view_position: str = "LL"  # ViewPosition of a lateral; an old CR reader writes "LATERAL"


@dataclass(frozen=True)
class Institution:
    code: str  # "A" | "B" | "C"
    name: str
    address: str
    department: str
    stations: tuple[Station, ...]
    radiologists: tuple[str, ...]  # PN values of the signing radiologists
    referring: tuple[str, ...]  # PN values of referring physicians
    accession_format: str  # str.format with yy, yyyy, patient (index), study (index)
    sends_size_weight: bool  # PatientSize / PatientWeight are optional; not every RIS fills them
    study_descriptions: dict[str, str]  # "PA+LAT" | "PA" | "AP" | "AP+LAT" -> StudyDescription
    series_descriptions: dict[str, str]  # "PA" | "AP" | "LAT" | "*" (one series for all views) -> text

    def stations_for(self, views: tuple[str, ...]) -> tuple[Station, ...]:
        """Portable units take the AP films, fixed rooms the PA (and lateral) ones."""
        portable = "AP" in views
        return tuple(s for s in self.stations if s.portable == portable) or self.stations


INSTITUTIONS: dict[str, Institution] = {
    "A": Institution(
        code="A",
        name="Aurelia University Hospital",
        address="1 Campus Drive, Aurelia",
        department="Radiology",
        stations=(
            Station(
                name="AUH-XR-ROOM1", ae_title="AUH_DX1", modality="DX",
                manufacturer="Northwind Imaging", model="Lumen DR 4343", software="4.2.1",
                serial="NW4343-1187", portable=False,
                photometric="MONOCHROME2", bits_stored=12,
                transfer_syntaxes=((JPEGLosslessSV1, 0.55), (ExplicitVRLittleEndian, 0.35), (JPEG2000Lossless, 0.1)),
                detector_type="SCINTILLATOR",
            ),
            Station(
                name="AUH-PORT-ICU2", ae_title="AUH_PORT2", modality="DX",
                manufacturer="Northwind Imaging", model="Lumen Mobile W", software="3.9.0",
                serial="NWM-0442", portable=True,
                photometric="MONOCHROME2", bits_stored=14,
                transfer_syntaxes=((JPEG2000Lossless, 0.3), (JPEGLosslessSV1, 0.4), (RLELossless, 0.3)),
                detector_type="SCINTILLATOR",
            ),
        ),
        radiologists=("Okafor^Adaeze^^Dr", "Lindgren^Paul^^Dr", "Ramanathan^Priya^^Dr"),
        referring=("Becker^Thomas", "Nguyen^Linh", "Alvarez^Sofia", "Haddad^Karim"),
        accession_format="A{yy}{patient:05d}{study:02d}",
        sends_size_weight=True,
        study_descriptions={"PA+LAT": "XR CHEST PA AND LATERAL", "PA": "XR CHEST PA",
                            "AP": "XR CHEST AP PORTABLE", "AP+LAT": "XR CHEST AP AND LATERAL"},
        series_descriptions={"PA": "PA", "AP": "AP PORTABLE", "LAT": "LATERAL"},
    ),
    "B": Institution(
        code="B",
        name="Bayview Community Hospital",
        address="200 Harbor Road, Bayview",
        department="Diagnostic Imaging",
        stations=(
            Station(
                name="BCH-CR01", ae_title="BCH_CR01", modality="CR",
                manufacturer="Harbor Medical Systems", model="PlateReader CR-35", software="2.11",
                serial="HMS-CR35-0081", portable=False,
                photometric="MONOCHROME1", bits_stored=10,
                transfer_syntaxes=((RLELossless, 0.4), (ImplicitVRLittleEndian, 0.3), (ExplicitVRLittleEndian, 0.3)),
                lateral_view_position="LATERAL",
            ),
            Station(
                name="BCH-MOBILE", ae_title="BCH_DR02", modality="DX",
                manufacturer="Harbor Medical Systems", model="MobiDR 2", software="1.6.3",
                serial="HMS-MDR-2210", portable=True,
                photometric="MONOCHROME1", bits_stored=12,
                transfer_syntaxes=((JPEGLSLossless, 0.6), (RLELossless, 0.2), (ImplicitVRLittleEndian, 0.2)),
                detector_type="DIRECT",
            ),
        ),
        radiologists=("Lindqvist^Erik^^Dr", "Osei^Grace^^Dr"),
        referring=("Murphy^Sean", "Patel^Anjali", "Kowalski^Marta"),
        accession_format="BCH{yyyy}{patient:05d}{study}",
        sends_size_weight=False,
        study_descriptions={"PA+LAT": "CHEST 2 VIEWS", "PA": "CHEST 1 VIEW", "AP": "CHEST 1 VIEW PORTABLE",
                            "AP+LAT": "CHEST 2 VIEWS PORTABLE"},
        series_descriptions={"*": "CHEST"},
    ),
    "C": Institution(
        code="C",
        name="Castlebrook Regional Medical Centre",
        address="Castle Street 14, Castlebrook",
        department="Medical Imaging",
        stations=(
            Station(
                name="CRMC-XR3", ae_title="CRMC_XR3", modality="DX",
                manufacturer="Stellar Radiography", model="Vega DR", software="VE20A",
                serial="SR-VEGA-5531", portable=False,
                photometric="MONOCHROME2", bits_stored=16,
                transfer_syntaxes=((JPEGLSLossless, 0.5), (JPEG2000Lossless, 0.25), (ExplicitVRLittleEndian, 0.25)),
                detector_type="DIRECT",
            ),
            Station(
                name="CRMC-ED-CR", ae_title="CRMC_CRED", modality="CR",
                manufacturer="Stellar Radiography", model="Digiplate 500", software="5.0.2",
                serial="SR-DP5-0172", portable=True,
                photometric="MONOCHROME2", bits_stored=12,
                transfer_syntaxes=((JPEGLosslessSV1, 0.4), (ImplicitVRLittleEndian, 0.3), (JPEGLSLossless, 0.3)),
            ),
        ),
        radiologists=("Moreau^Camille^^Dr", "Fitzgerald^Aoife^^Dr", "Sato^Kenji^^Dr"),
        referring=("Brennan^Liam", "Dubois^Claire", "Mensah^Kwame", "Ito^Yuki"),
        accession_format="C{patient:06d}{study}XR",
        sends_size_weight=True,
        study_descriptions={"PA+LAT": "Chest X-ray PA + lateral", "PA": "Chest X-ray PA",
                            "AP": "Chest X-ray AP (mobile)", "AP+LAT": "Chest X-ray AP + lateral"},
        series_descriptions={"PA": "Thorax PA", "AP": "Thorax AP mobile", "LAT": "Thorax lateral"},
    ),
}

TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEG2000Lossless,
    RLELossless,
)
"""Every transfer syntax the testbed writes (all lossless)."""
