"""Concept codes the writer uses and the reader recognises (TID 2000, CID 7001 / 7002).

The writer uses the DCM headings: the Debian PixelMed (2022) validates them clean, while it warns
"Content Item not in template" for the LOINC headings of the current CID 7001. The reader accepts both.
"""

from __future__ import annotations

from pydicom.sr.coding import Code

#: Root concept of TID 2000 (CID 7000).
DIAGNOSTIC_IMAGING_REPORT = Code("18748-4", "LN", "Diagnostic Imaging Report")
#: TID 1204 language; the report text is written in English.
ENGLISH = Code("en-US", "RFC5646", "English (United States)")

# (heading CONTAINER from CID 7001, TEXT item from CID 7002) per section we write.
FINDINGS = (Code("121070", "DCM", "Findings"), Code("121071", "DCM", "Finding"))
IMPRESSION = (Code("121072", "DCM", "Impressions"), Code("121073", "DCM", "Impression"))
COMPARISON = (
    Code("121066", "DCM", "Prior Procedure Descriptions"),
    Code("121065", "DCM", "Procedure Description"),
)
INDICATION = (Code("121109", "DCM", "Indications for Procedure"), Code("121060", "DCM", "History"))
#: The research disclaimer goes under a "Summary" heading, first in the report.
DISCLAIMER = (Code("121111", "DCM", "Summary"), Code("121111", "DCM", "Summary"))

#: CID 270 observer types (TID 1002).
OBSERVER_TYPE = Code("121005", "DCM", "Observer Type")
PERSON = Code("121006", "DCM", "Person")
DEVICE = Code("121007", "DCM", "Device")
PERSON_OBSERVER_NAME = Code("121008", "DCM", "Person Observer Name")
DEVICE_OBSERVER_NAME = Code("121013", "DCM", "Device Observer Name")

#: Purpose of Reference of the model in ContributingEquipmentSequence.
PROCESSING_EQUIPMENT = Code("109102", "DCM", "Processing Equipment")

#: (code value, scheme) of headings and TEXT items -> ``ReportText`` field, for the reader.
SECTION_CODES: dict[tuple[str, str], str] = {
    **dict.fromkeys(
        [("121070", "DCM"), ("121071", "DCM"), ("59776-5", "LN")], "findings"
    ),
    **dict.fromkeys(
        [("121072", "DCM"), ("121073", "DCM"), ("19005-8", "LN"),
         ("121076", "DCM"), ("121077", "DCM"), ("55110-1", "LN")],
        "impression",
    ),
    **dict.fromkeys(
        [("121066", "DCM"), ("121068", "DCM"), ("121069", "DCM"), ("18834-2", "LN")],
        "comparison",
    ),
    **dict.fromkeys(
        [("121109", "DCM"), ("121060", "DCM"), ("121062", "DCM"),
         ("18785-6", "LN"), ("11329-0", "LN"), ("55115-0", "LN")],
        "indication",
    ),
}

#: Lower-cased concept meanings -> field, for codes from other schemes (e.g. "99LOCAL").
SECTION_MEANINGS: dict[str, str] = {
    **dict.fromkeys(["findings", "finding", "observations"], "findings"),
    **dict.fromkeys(
        ["impressions", "impression", "conclusions", "conclusion"], "impression"
    ),
    **dict.fromkeys(
        ["comparison", "comparisons", "comparison study", "prior procedure descriptions",
         "previous findings", "previous finding"],
        "comparison",
    ),
    **dict.fromkeys(
        ["indication", "indications", "indications for procedure", "clinical information",
         "clinical history", "history", "request", "reason for exam"],
        "indication",
    ),
}
