"""De-identification for ``unirg-trainer export``: DICOM PS3.15 Annex E Basic Application Level
Confidentiality Profile, with the Retain Longitudinal Temporal Information with Modified Dates option
(dates shifted by one offset per patient) and the Retain Patient Characteristics option (sex, age capped
at 90, size, weight).

Why dicognito (0.19, pinned in requirements.txt): it is a small, maintained, pure-Python library whose only
dependency is pydicom (it installs beside pydicom 3.0.2 with nothing else); it walks every element of the
data set, nested sequences and the file meta included; and its replacements are keyed on a seed, so the same
source UID maps to the same new UID in every file and in every run with that seed, which is what keeps the
links between studies (and the manifest's study ids) consistent. ``deid`` (pydicom/deid) drives the same work
from recipe files and pulls in more; highdicom has no de-identification. What dicognito leaves to the caller
(it fakes names, addresses and institution names instead of removing them, keeps private tags, free-text
descriptions and one date offset per run) is done here:

* before dicognito, :func:`strip_profile` removes private tags, overlay groups and the Annex E "X"
  attributes that matter for radiographs (:data:`REMOVE`: descriptions, comments, institution, operators,
  physicians, device serials, other patient ids, ...);
* two element handlers put ahead of dicognito's own: :class:`_Identity` writes the pseudonym into
  PatientID/PatientName and empties every other person name and id (:data:`EMPTY_IDS`: accession, study id,
  order numbers, ...): empty rather than a dummy that could collide with a real name; :class:`_PatientDates`
  shifts every DA/DT by the current patient's whole-day offset (times unchanged) and empties the birth date;
* dicognito then remaps every instance UID (``2.`` + a 40-digit keyed hash), leaving class and transfer
  syntax UIDs;
* :func:`mark_deidentified` sets PatientIdentityRemoved, DeidentificationMethod(CodeSequence) (CID 7050:
  113100 Basic profile, 113107 modified dates, 113108 patient characteristics) and
  LongitudinalTemporalInformationModified.

Report text: :func:`identifiers_of` collects the names (each component) and ids of the headers and
:func:`scrub_text` replaces them with ``___`` (as MIMIC-CXR does) and shifts the dates it can read by the same
offset. Pseudonyms and offsets are keyed hashes (HMAC-SHA256) of the secret seed: not reversible without it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Iterable, Iterator

from dicognito import __version__ as DICOGNITO_VERSION
from dicognito.anonymizer import Anonymizer
from dicognito.datetimeanonymizer import DateTimeAnonymizer
from dicognito.element_anonymizer import ElementAnonymizer
from dicognito.randomizer import Randomizer
from dicognito.uianonymizer import UIAnonymizer
from pydicom import DataElement
from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

__all__ = ["DICOGNITO_VERSION", "EMPTY_IDS", "METHOD_CODES", "REMOVE", "Deidentifier", "identifiers_of",
           "scrub_text", "shift_date", "strip_profile"]

MIN_OFFSET_DAYS, MAX_OFFSET_DAYS = 62, 730  # dicognito's own range: 2 months to 2 years back
REDACTED = "___"

REMOVE = frozenset("""
AcquisitionComments AcquisitionDeviceProcessingDescription AcquisitionProtocolDescription
ActualHumanPerformersSequence AdditionalPatientHistory AdmissionID AdmittingDiagnosesCodeSequence
AdmittingDiagnosesDescription AdmittingDate AdmittingTime Allergies AuthorObserverSequence BranchOfService
CassetteID CommentsOnThePerformedProcedureStep ConfidentialityConstraintOnPatientDataDescription
ContentCreatorIdentificationCodeSequence ContributionDescription CountryOfResidence CurrentPatientLocation
CustodialOrganizationSequence DataSetTrailingPadding DerivationDescription DetectorID DeviceSerialNumber
DigitalSignaturesSequence DischargeDiagnosisDescription DistributionAddress DistributionName EthnicGroup
FrameComments GantryID GeneratorID HumanPerformerName HumanPerformerOrganization IconImageSequence
IdentifyingComments ImageComments ImagePresentationComments ImagingServiceRequestComments InstitutionAddress
InstitutionalDepartmentName InstitutionName InstitutionCodeSequence InsurancePlanIdentification
IntendedRecipientsOfResultsIdentificationSequence InterpretationApproverSequence InterpretationAuthor
InterpretationIDIssuer InterpretationRecorder InterpretationText InterpretationTranscriber
IssuerOfAdmissionID IssuerOfPatientID IssuerOfPatientIDQualifiersSequence IssuerOfServiceEpisodeID
LastMenstrualDate MedicalAlerts MedicalRecordLocator MilitaryRank ModifiedAttributesSequence
ModifiedImageDescription ModifyingDeviceID NameOfPhysiciansReadingStudy NamesOfIntendedRecipientsOfResults
Occupation OperatorIdentificationSequence OperatorsName OrderCallbackPhoneNumber OrderEnteredBy
OrderEntererLocation OriginalAttributesSequence OtherPatientIDs OtherPatientIDsSequence OtherPatientNames
ParticipantSequence PatientAddress PatientBirthName PatientBirthTime PatientComments
PatientInstitutionResidence PatientInsurancePlanCodeSequence PatientMotherBirthName
PatientPrimaryLanguageCodeSequence PatientReligiousPreference PatientState PatientTelecomInformation
PatientTelephoneNumbers PerformedLocation PerformedProcedureStepDescription PerformedStationAETitle
PerformedStationGeographicLocationCodeSequence PerformedStationName PerformedStationNameCodeSequence
PerformingPhysicianIdentificationSequence PerformingPhysicianName PersonAddress PersonTelephoneNumbers
PhysicianApprovingInterpretation PhysiciansOfRecord PhysiciansOfRecordIdentificationSequence
PhysiciansReadingStudyIdentificationSequence PlateID PreMedication ProtocolName ReasonForStudy
ReasonForTheImagingServiceRequest ReasonForTheRequestedProcedure ReferencedPatientAliasSequence
ReferencedPatientPhotoSequence ReferringPhysicianAddress ReferringPhysicianIdentificationSequence
ReferringPhysicianTelephoneNumbers RegionOfResidence RequestAttributesSequence RequestedContrastAgent
RequestedProcedureComments RequestedProcedureDescription RequestedProcedureLocation RequestingPhysician
RequestingService ResponsibleOrganization ResponsiblePerson ResultsComments ResultsDistributionListSequence
ResultsIDIssuer ScheduledHumanPerformersSequence ScheduledPatientInstitutionResidence
ScheduledPerformingPhysicianIdentificationSequence ScheduledProcedureStepDescription
ScheduledProcedureStepLocation ScheduledStationAETitle ScheduledStationGeographicLocationCodeSequence
ScheduledStationName ScheduledStationNameCodeSequence SeriesDescription ServiceEpisodeDescription
ServiceEpisodeID SpecialNeeds StationName StudyComments StudyDescription TextComments TextString TopicAuthor
TopicKeywords TopicSubject TopicTitle VerifyingObserverIdentificationCodeSequence VerifyingObserverName
VerifyingObserverSequence VerifyingOrganization VisitComments
""".split())
"""Annex E attributes removed outright ("X", and "X/Z/D" where removing is allowed)."""

EMPTY_IDS = frozenset("""
AccessionNumber StudyID FillerOrderNumberImagingServiceRequest PlacerOrderNumberImagingServiceRequest
FillerOrderNumberProcedure PlacerOrderNumberProcedure PerformedProcedureStepID RequestedProcedureID
ScheduledProcedureStepID
""".split())
"""Annex E "Z" identifiers (type 2 in many IODs): kept, emptied."""

ID_KEYWORDS = EMPTY_IDS | {"PatientID", "OtherPatientIDs", "IssuerOfPatientID", "AdmissionID",
                           "ServiceEpisodeID", "RequestedProcedureID", "MedicalRecordLocator"}
"""Header values collected as identifiers to scrub from report text."""

METHOD_CODES = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    ("113108", "Retain Patient Characteristics Option"),
)
"""CID 7050 codes (DCM) written to DeidentificationMethodCodeSequence."""

_WORD = r"(?<![A-Za-z0-9]){}(?![A-Za-z0-9])"


def _keyed(secret: str, purpose: str, value: str) -> bytes:
    return hmac.new(secret.encode(), f"{purpose}\x00{value}".encode(), hashlib.sha256).digest()


META_REMOVE = ("SourceApplicationEntityTitle", "SendingApplicationEntityTitle", "ReceivingApplicationEntityTitle",
               "PrivateInformationCreatorUID", "PrivateInformation")
"""File meta elements removed (AE titles name stations and sites)."""


def strip_profile(ds: Dataset) -> None:
    """Remove private tags, overlay/curve groups and :data:`REMOVE` attributes, in nested sequences too,
    and the :data:`META_REMOVE` file meta elements."""
    meta = getattr(ds, "file_meta", None)
    for keyword in META_REMOVE if meta is not None else ():
        if keyword in meta:
            delattr(meta, keyword)
    doomed = []
    for elem in ds:
        group = elem.tag.group
        if elem.tag.is_private or 0x5000 <= group <= 0x60FF or elem.keyword in REMOVE:
            doomed.append(elem.tag)
        elif elem.VR == "SQ":
            for item in elem.value:
                strip_profile(item)
    for tag in doomed:
        del ds[tag]


def _cap_age(value: str) -> str:
    """PatientAge with ages over 89 reported as 090Y (HIPAA Safe Harbor)."""
    m = re.fullmatch(r"(\d{3})Y", value or "")
    return "090Y" if m and int(m.group(1)) > 89 else value


class _Identity(ElementAnonymizer):
    """PatientID/PatientName := the pseudonym; every other person name and :data:`EMPTY_IDS` emptied."""

    def __init__(self) -> None:
        self.pseudonym = ""

    def __call__(self, dataset: Dataset, data_element: DataElement) -> bool:
        keyword = data_element.keyword
        if keyword in ("PatientID", "PatientName"):
            data_element.value = self.pseudonym
            return True
        if data_element.VR == "PN" or keyword in EMPTY_IDS:
            data_element.value = ""
            return True
        return False

    def describe_actions(self) -> Iterator[str]:
        yield "Replace PatientID and PatientName with the patient's keyed pseudonym"
        yield "Empty every other PN element and " + ", ".join(sorted(EMPTY_IDS))


class _PatientDates(ElementAnonymizer):
    """Every DA/DT shifted by the current patient's offset (whole days, so times stay); birth date emptied."""

    def __init__(self) -> None:
        self.shifter = DateTimeAnonymizer(0)

    def set_offset(self, days: int) -> None:
        self.shifter = DateTimeAnonymizer(days * 24)

    def __call__(self, dataset: Dataset, data_element: DataElement) -> bool:
        if data_element.keyword == "PatientBirthDate":
            data_element.value = ""
            return True
        return self.shifter(dataset, data_element)

    def describe_actions(self) -> Iterator[str]:
        yield "Empty PatientBirthDate"
        yield "Shift every DA and DT element by one whole-day offset per patient"


def mark_deidentified(ds: Dataset) -> None:
    """PatientIdentityRemoved, DeidentificationMethod(CodeSequence), LongitudinalTemporalInformationModified."""
    if "PatientAge" in ds:
        ds.PatientAge = _cap_age(str(ds.PatientAge))
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = ["PS3.15 E.1 BASIC PROFILE", f"DICOGNITO {DICOGNITO_VERSION}",
                                 "UNIRG-TRAINER EXPORT"]
    items = []
    for value, meaning in METHOD_CODES:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        items.append(item)
    ds.DeidentificationMethodCodeSequence = items
    ds.LongitudinalTemporalInformationModified = "MODIFIED"


class Deidentifier:
    """Keyed pseudonyms, per-patient date offsets and UID remapping from one secret ``seed``.

    >>> d = Deidentifier("s3cret")
    >>> d.pseudonym("MRN-1") == d.pseudonym("MRN-1") != Deidentifier("other").pseudonym("MRN-1")
    True
    >>> 62 <= -d.offset_days("MRN-1") <= 730
    True
    """

    def __init__(self, seed: str) -> None:
        if not seed:
            raise ValueError("seed must be a non-empty secret string")
        self._seed = seed
        uid_seed = _keyed(seed, "dicognito", "").hex()
        self._anonymizer = Anonymizer(seed=uid_seed)
        self._dates = _PatientDates()
        self._identity = _Identity()
        self._anonymizer.add_element_handler(self._dates)
        self._anonymizer.add_element_handler(self._identity)  # runs first
        self._uids = UIAnonymizer(Randomizer(uid_seed))  # the anonymizer's own UID mapping

    def pseudonym(self, patient_id: str) -> str:
        """``P`` + 12 digits keyed on ``patient_id`` (digits only: never collides with a name)."""
        return "P" + str(int.from_bytes(_keyed(self._seed, "patient", patient_id)[:8], "big") % 10**12).zfill(12)

    def offset_days(self, patient_id: str) -> int:
        """The patient's date shift: minus 62 to 730 days, the same for all their studies."""
        n = int.from_bytes(_keyed(self._seed, "date-offset", patient_id)[:8], "big")
        return -(MIN_OFFSET_DAYS + n % (MAX_OFFSET_DAYS - MIN_OFFSET_DAYS + 1))

    def uid(self, uid: str) -> str:
        """The new UID of ``uid``: the one dicognito writes into every file for it."""
        ds = Dataset()
        ds.StudyInstanceUID = uid
        self._uids(ds, ds["StudyInstanceUID"])
        return str(ds.StudyInstanceUID)

    def deidentify(self, ds: Dataset, patient_id: str) -> Dataset:
        """De-identify ``ds`` in place as a study of ``patient_id`` (the source PatientID); returns it."""
        strip_profile(ds)
        self._identity.pseudonym = self.pseudonym(patient_id)
        self._dates.set_offset(self.offset_days(patient_id))
        self._anonymizer.anonymize(ds)
        mark_deidentified(ds)
        return ds


def _name_parts(values: Iterable[object]) -> Iterator[str]:
    """Family, given and middle name words of PN values (2+ letters; prefixes and suffixes left)."""
    for value in values:
        pn = value if isinstance(value, PersonName) else PersonName(str(value))
        for part in (pn.family_name, pn.given_name, pn.middle_name):
            for word in re.split(r"[\s,]+", part or ""):
                if len(word.strip(".")) >= 2:
                    yield word.strip(".")


def identifiers_of(ds: Dataset) -> set[str]:
    """Names (each component of every PN), ids (:data:`ID_KEYWORDS`) and the institution name of ``ds``
    and its sequences: what must not survive in the report text."""
    found: set[str] = set()

    def visit(d: Dataset, elem: DataElement) -> None:
        if not elem.value or elem.tag.is_private:
            return
        values = elem.value if elem.VM > 1 else [elem.value]
        if elem.VR == "PN":
            found.update(_name_parts(values))
        elif elem.keyword in ID_KEYWORDS or elem.keyword == "InstitutionName":
            found.update(str(v).strip() for v in values if len(str(v).strip()) >= 3)

    ds.walk(visit)
    return found


_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
           "november", "december")
_MONTH = r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|" \
         r"oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
_ORD = r"(?:st|nd|rd|th)?"
_DATES = re.compile(
    r"(?<![\dA-Za-z])(?:"
    rf"(?P<iy>\d{{4}})-(?P<im>\d{{2}})-(?P<id>\d{{2}})"
    rf"|(?P<dy>\d{{4}})(?P<dm>\d{{2}})(?P<dd>\d{{2}})"
    rf"|(?P<um>\d{{1,2}})/(?P<ud>\d{{1,2}})/(?P<uy>\d{{4}})"
    rf"|(?P<ed>\d{{1,2}})\.(?P<em>\d{{1,2}})\.(?P<ey>\d{{4}})"
    rf"|(?P<wd>\d{{1,2}}){_ORD}\s+(?:of\s+)?(?P<wm>{_MONTH})\.?,?\s+(?P<wy>\d{{4}})"
    rf"|(?P<vm>{_MONTH})\.?\s+(?P<vd>\d{{1,2}}){_ORD}(?P<vc>,?)\s+(?P<vy>\d{{4}})"
    rf"|(?P<xm>{_MONTH})\.?\s+(?P<xy>\d{{4}})"
    r")(?![\dA-Za-z])", re.IGNORECASE)
"""The dates :func:`scrub_text` shifts, in one pass (so nothing is shifted twice)."""


def shift_date(yyyymmdd: str | None, days: int) -> str | None:
    """A DICOM date shifted by ``days`` (``None``/invalid stays ``None``).

    >>> shift_date("20240301", -1), shift_date("", 3)
    ('20240229', None)
    """
    try:
        when = dt.datetime.strptime(str(yyyymmdd or "")[:8], "%Y%m%d").date()
    except ValueError:
        return None
    return (when + dt.timedelta(days=days)).strftime("%Y%m%d")


def _month(name: str) -> int:
    return next(i for i, full in enumerate(_MONTHS, 1) if full.startswith(name.lower()[:3]))


def _month_name(number: int, like: str) -> str:
    full = _MONTHS[number - 1]
    name = full if len(like) > 3 or like.lower() == "may" else full[:3]
    return name.upper() if like.isupper() and len(like) > 1 else name.title()


def _pad(value: int, like: str) -> str:
    return f"{value:02d}" if len(like) == 2 else str(value)


def _shift_one(m: re.Match, days: int) -> str:
    g = m.groupdict()
    try:
        if g["iy"]:
            when = dt.date(int(g["iy"]), int(g["im"]), int(g["id"]))
        elif g["dy"]:
            when = dt.date(int(g["dy"]), int(g["dm"]), int(g["dd"]))
        elif g["uy"]:
            when = dt.date(int(g["uy"]), int(g["um"]), int(g["ud"]))
        elif g["ey"]:
            when = dt.date(int(g["ey"]), int(g["em"]), int(g["ed"]))
        elif g["wy"]:
            when = dt.date(int(g["wy"]), _month(g["wm"]), int(g["wd"]))
        elif g["vy"]:
            when = dt.date(int(g["vy"]), _month(g["vm"]), int(g["vd"]))
        else:
            when = dt.date(int(g["xy"]), _month(g["xm"]), 15)  # month and year: shift its middle
    except (ValueError, StopIteration):
        return m.group(0)
    if not 1900 <= when.year <= 2100:
        return m.group(0)
    new = when + dt.timedelta(days=days)
    if g["iy"]:
        return new.strftime("%Y-%m-%d")
    if g["dy"]:
        return new.strftime("%Y%m%d")
    if g["uy"]:
        return f"{_pad(new.month, g['um'])}/{_pad(new.day, g['ud'])}/{new.year}"
    if g["ey"]:
        return f"{_pad(new.day, g['ed'])}.{_pad(new.month, g['em'])}.{new.year}"
    if g["wy"]:
        return f"{_pad(new.day, g['wd'])} {_month_name(new.month, g['wm'])} {new.year}"
    if g["vy"]:
        return f"{_month_name(new.month, g['vm'])} {_pad(new.day, g['vd'])}{g['vc']} {new.year}"
    return f"{_month_name(new.month, g['xm'])} {new.year}"


def _shift_dates_in(text: str, days: int) -> str:
    return _DATES.sub(lambda m: _shift_one(m, days), text)


def scrub_text(text: str, identifiers: Iterable[str], offset_days: int = 0) -> str:
    """``text`` with every identifier (whole words, any case) replaced by ``___`` and its dates
    (2024-03-01, 20240301, 3/1/2024, 1.3.2024, 1 March 2024, Mar 1st, 2024, March 2024) shifted by
    ``offset_days``.

    >>> scrub_text("Mr SMITH (MRN 12-34), seen 2024-03-01.", {"Smith", "12-34"}, -1)
    'Mr ___ (MRN ___), seen 2024-02-29.'
    >>> scrub_text("Improved since 1 March 2024 (Mar 1, 2024; March 2024).", (), -20)
    'Improved since 10 February 2024 (Feb 10, 2024; February 2024).'
    """
    words = sorted({w for w in identifiers if w}, key=len, reverse=True)  # longest first: "Ann Lee" before "Ann"
    if words:
        pattern = re.compile("|".join(_WORD.format(re.escape(w)) for w in words), re.IGNORECASE)
        text = pattern.sub(REDACTED, text)
    return _shift_dates_in(text, offset_days) if offset_days else text


def leaked(text: str, identifiers: Iterable[str]) -> list[str]:
    """The identifiers still present in ``text`` as whole words (any case): empty when clean."""
    return sorted(w for w in set(identifiers) if w and re.search(_WORD.format(re.escape(w)), text, re.IGNORECASE))
