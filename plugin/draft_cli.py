"""``unirg draft``: draft one study's report from files and write the research-labelled SR."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import click
from pydicom.dataset import Dataset

from unirg.plugin.paths import path_under, safe_component
from unirg.plugin.pipeline import DEFAULT_MODEL_ENV, default_model_path

__all__ = ["DEFAULT_MODEL_ENV", "default_model_path", "draft", "read_study_files"]

_PATH = click.Path(exists=True, path_type=Path)


def read_study_files(paths: tuple[Path, ...] | list[Path]) -> list[Dataset]:
    """Every readable DICOM object under ``paths`` (files or folders, searched recursively);
    unreadable files are reported on stderr and skipped."""
    from unirg.sr_writer.io import iter_dicom_files

    datasets: list[Dataset] = []
    for path in paths:
        for file, ds in iter_dicom_files(path):
            if isinstance(ds, str):
                click.echo(f"skipping {file}: {ds}", err=True)
                continue
            datasets.append(ds)
    return datasets


def _one_study(datasets: list[Dataset], what: str) -> tuple[str, str]:
    studies = {str(ds.get("StudyInstanceUID", "")) for ds in datasets} - {""}
    patients = {str(ds.get("PatientID", "")) for ds in datasets}
    if len(studies) != 1:
        raise click.UsageError(
            f"{what} holds {len(studies)} studies; give the files or folder of exactly one study "
            "(pass earlier studies with --prior)"
        )
    if len(patients) != 1:
        raise click.UsageError(f"{what} mixes patients {sorted(patients)}")
    return studies.pop(), patients.pop()


def _priors(paths: tuple[Path, ...], patient_id: str, study_uid: str):
    from unirg.plugin.pipeline import Prior

    by_study: dict[str, list[Dataset]] = defaultdict(list)
    for ds in read_study_files(paths):
        uid = str(ds.get("StudyInstanceUID", ""))
        if not uid:
            continue
        if str(ds.get("PatientID", "")) != patient_id:
            raise click.UsageError(
                f"--prior study {uid} is of another patient ({ds.get('PatientID', '')!r}, the study's is "
                f"{patient_id!r}); priors must be of the same PatientID"
            )
        if uid == study_uid:
            continue  # the study itself, e.g. a patient folder passed as --prior
        by_study[uid].append(ds)
    return [Prior(images=objects) for objects in by_study.values()]


@click.command("draft")
@click.argument("study", nargs=-1, required=True, type=_PATH)
@click.option("--prior", "priors", multiple=True, type=_PATH,
              help="File or folder of an earlier study of the same patient (repeatable); the most "
              "recent one with a frontal image is used, with its report SR.")
@click.option("--model", "model_path", type=click.Path(path_type=Path),
              help=f"Model directory (default ${DEFAULT_MODEL_ENV}, else var/models/unirg-demo).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the SR (created; written atomically).")
@click.option("--max-new-tokens", type=int, default=300, show_default=True, help="Generation limit.")
@click.option("--repetition-penalty", type=float, default=1.0, show_default=True,
              help="> 1 damps the loops small models fall into.")
@click.option("--indication", help="Reason for the exam (default: read from the image header).")
@click.option("--device", help="cpu or cuda (default: cuda when available).")
@click.option("--trust-remote-code", is_flag=True, envvar="UNIRG_MODEL_TRUST_REMOTE_CODE",
              help="Run Python code shipped in the model checkpoint (MAIRA-2 needs it). Read its *.py files first.")
def draft(study, priors, model_path, out_dir, max_new_tokens, repetition_penalty, indication, device,
          trust_remote_code) -> None:
    """Draft the report of STUDY (its files or folder) and write a research-labelled SR.

    \b
    RESEARCH PROTOTYPE - the SR is an unverified AI draft and is labelled as such.
    Example:
      unirg draft var/testbed/SYN0-00001/ACC2 --prior var/testbed/SYN0-00001/ACC1 --out drafts/
    """
    from unirg.model import GenerationConfig, load_model
    from unirg.plugin.pipeline import DraftRejected, StudySkipped, draft_study
    from unirg.sr_writer import SRInputError, write_dataset_atomic

    current = read_study_files(study)
    if not current:
        raise click.UsageError(f"no DICOM files in {', '.join(map(str, study))}")
    study_uid, patient_id = _one_study(current, "STUDY")
    prior_studies = _priors(priors, patient_id, study_uid)

    path = model_path or default_model_path()
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        hint = (
            "build the demo model with scripts/build-demo-model.sh (a few minutes on 2 CPU cores), "
            f"or point --model (or ${DEFAULT_MODEL_ENV}) at a checkpoint such as a downloaded "
            "microsoft/UniRG-CXR"
        )
        raise click.ClickException(f"no model at {path}: {hint}")
    try:
        generation = GenerationConfig(max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty,
                                      batch_size=1)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        model = load_model(path, device=device, trust_remote_code=trust_remote_code)
    except ValueError as exc:  # RemoteCodeNotTrusted, WeightsMismatch, UnsupportedModel: say what to do
        raise click.ClickException(str(exc)) from None
    try:
        result, sr = draft_study(model, current, prior_studies, generation, indication=indication)
    except StudySkipped as exc:
        raise click.ClickException(f"study {study_uid} skipped: {exc.reason}") from None
    except (DraftRejected, SRInputError) as exc:
        raise click.ClickException(str(exc)) from None
    out_dir.mkdir(parents=True, exist_ok=True)
    target = write_dataset_atomic(sr, path_under(out_dir, safe_component(sr.SOPInstanceUID) + ".dcm"))
    prior_note = ""
    if prior_studies:
        used = [ref for ref in sr.get("PertinentOtherEvidenceSequence", [])]
        prior_note = f" (prior: {used[0].StudyInstanceUID})" if used else " (no usable prior)"
    click.echo(f"model: {model.info.name} version {model.info.version}{prior_note}")
    if result.flags:
        click.echo(f"flags: {', '.join(result.flags)}")
    click.echo(f"Findings: {result.findings}")
    click.echo(f"Impression: {result.impression}")
    if result.comparison:
        click.echo(f"Comparison: {result.comparison}")
    click.echo(f"SR: {target}")
