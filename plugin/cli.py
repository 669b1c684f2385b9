"""The ``unirg`` command: draft chest X-ray reports as research-labelled DICOM SR."""

import logging

import click

from unirg.plugin.demo import demo
from unirg.plugin.dicomweb_cli import dicomweb
from unirg.plugin.draft_cli import draft
from unirg.plugin.feedback_cli import feedback
from unirg.plugin.listen_cli import listen, status, worker
from unirg.plugin.orthanc_cli import orthanc
from unirg.plugin.viewer import viewer
from unirg.sr_writer.cli import sr


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """unirg: AI chest X-ray report drafts inside a PACS, as DICOM Structured Reports.

    RESEARCH PROTOTYPE - NOT FOR CLINICAL USE. Every report it writes is an
    unverified, preliminary AI draft and is labelled as such.

    \b
    Typical use:
      unirg demo                          # Orthanc + plugin + worker + OHIF, one study drafted
      unirg draft STUDY_DIR --out drafts/ # one study from files, default demo model
      unirg listen --port 11112 ...       # DICOM C-STORE listener
    """
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)],
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


main.add_command(draft)
main.add_command(sr)
main.add_command(viewer)
main.add_command(listen)
main.add_command(worker)
main.add_command(status)
main.add_command(orthanc)
main.add_command(demo)
main.add_command(dicomweb)
main.add_command(feedback)
