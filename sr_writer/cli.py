"""``unirg sr``: write a research-labelled draft SR for a study from given report text."""

from __future__ import annotations

from pathlib import Path

import click
from pydicom.dataset import Dataset

from unirg.sr_writer.build import build_draft_sr
from unirg.sr_writer.inputs import ModelInfo, ReportSections, SRInputError, image_headers
from unirg.sr_writer.io import iter_dicom_files, write_dataset_atomic

_PATH = click.Path(exists=True, path_type=Path)


def _load_images(paths: tuple[Path, ...], option: str) -> list[Dataset]:
    """Read the image instances under ``paths``; report every skipped file on stderr."""
    images = []
    for path in paths:
        found = 0
        for file, ds in iter_dicom_files(path):
            if isinstance(ds, str):
                click.echo(f"skipping {file}: {ds}", err=True)
                continue
            try:
                image_headers(option, [ds])
            except SRInputError as exc:
                click.echo(f"skipping {file}: {str(exc).removeprefix(f'{option}[0] ')}", err=True)
                continue
            images.append(ds)
            found += 1
        if not found:
            raise click.BadParameter(f"no DICOM images found in {path}", param_hint=f"'--{option}'")
    return images


@click.command("sr")
@click.option("--study", "studies", multiple=True, required=True, type=_PATH,
              help="Image file or folder of the study being reported (repeatable).")
@click.option("--findings", required=True, help="Findings text ('' if none).")
@click.option("--impression", required=True, help="Impression text ('' if none).")
@click.option("--comparison", default=None, help="Comparison text (default: generated from --prior).")
@click.option("--indication", default=None, help="Indication / clinical information.")
@click.option("--prior", "priors", multiple=True, type=_PATH,
              help="Image file or folder of a prior study used for comparison (repeatable).")
@click.option("--model-name", default="manual-import", show_default=True,
              help="Name of the model (or process) that wrote the text.")
@click.option("--model-version", default="0", show_default=True, help="Its version.")
@click.option("--weights-sha256", default="", help="SHA-256 of the model weights, if any.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Output SR file (written atomically).")
def sr(
    studies: tuple[Path, ...],
    findings: str,
    impression: str,
    comparison: str | None,
    indication: str | None,
    priors: tuple[Path, ...],
    model_name: str,
    model_version: str,
    weights_sha256: str,
    out: Path,
) -> None:
    """Write an AI DRAFT (research only) TID 2000 report SR for a study.

    \b
    Example:
      unirg sr --study STUDY_DIR --findings "No effusion." --impression "Normal." --out draft.dcm
    """
    if not out.parent.is_dir():
        raise click.BadParameter(f"folder {out.parent} does not exist", param_hint="'--out'")
    current = _load_images(studies, "study")
    prior_images = _load_images(priors, "prior")
    try:
        model = ModelInfo(model_name, model_version, weights_sha256)
        report = ReportSections(findings, impression, comparison=comparison, indication=indication)
        draft = build_draft_sr(report, model, current, prior_images)
    except SRInputError as exc:
        raise click.ClickException(str(exc)) from exc
    write_dataset_atomic(draft, out)
    click.echo(f"wrote {out} (SOP Instance UID {draft.SOPInstanceUID})")
