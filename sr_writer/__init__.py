"""Research-labelled TID 2000 report SRs: build AI drafts and reference reports, read any report.

RESEARCH PROTOTYPE - NOT FOR CLINICAL USE: every draft is labelled as such.
"""

from unirg.sr_writer.build import RESEARCH_LABEL, build_draft_sr, build_reference_sr
from unirg.sr_writer.inputs import (
    MAX_TEXT_BYTES,
    DraftReport,
    ModelInfo,
    ReportSections,
    SRInputError,
)
from unirg.sr_writer.io import write_dataset_atomic
from unirg.sr_writer.labels import ResearchLabelMissing, check_research_labels, missing_research_labels
from unirg.sr_writer.read import ReportText, read_report

__all__ = [
    "MAX_TEXT_BYTES",
    "RESEARCH_LABEL",
    "DraftReport",
    "ModelInfo",
    "ReportSections",
    "ReportText",
    "ResearchLabelMissing",
    "SRInputError",
    "build_draft_sr",
    "build_reference_sr",
    "check_research_labels",
    "missing_research_labels",
    "read_report",
    "write_dataset_atomic",
]

import logging  # noqa: E402

# A library: log records go nowhere until the application (our CLIs) configures logging.
logging.getLogger(__name__).addHandler(logging.NullHandler())
