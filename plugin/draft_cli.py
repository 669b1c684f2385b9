"""``unirg draft``: draft the reports of one or more studies from files and write research-labelled SRs.

Several studies in one call share one model load, and their drafts are generated in batches
(``--batch-size``); a study that cannot be drafted is reported with its reason and skipped, the
others still get their SR, and the exit status is 1. ``--priors-from DIR`` indexes DIR once (headers
only) by PatientID and gives each study its priors by :mod:`unirg.plugin.prior_policy`, as the
listener does.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import click
from pydicom.dataset import Dataset

from unirg.plugin.paths import path_under, safe_component
from unirg.plugin.pipeline import DEFAULT_MODEL_ENV, default_model_path

if TYPE_CHECKING:
    from unirg.plugin.prior_policy import PriorCandidate
    from unirg.plugin.priors.core import PriorStudy

__all__ = ["DEFAULT_MODEL_ENV", "PriorIndex", "default_model_path", "draft", "read_study_files"]

log = logging.getLogger(__name__)

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


# -- the studies of one call -----------------------------------------------------------------------------
@dataclass
class _Study:
    """One current study of the call: its objects, and the arguments they came from."""

    uid: str
    patient_id: str
    datasets: list[Dataset]
    sources: list[Path]

    @property
    def label(self) -> str:
        first = str(self.sources[0])
        return first if len(self.sources) == 1 else f"{first} and {len(self.sources) - 1} more"


@dataclass
class _Failure:
    label: str
    reason: str
    uid: str = ""


def _gather(paths: tuple[Path, ...]) -> tuple[list[_Study], list[_Failure]]:
    """The studies in ``paths``: each argument holds one study (a folder, or files of it); arguments
    of the same StudyInstanceUID (files of one study) make one study. An argument that holds no
    readable DICOM object, several studies or several patients is a failure (with one argument, a
    usage error, as before)."""
    studies: dict[str, _Study] = {}
    failures: list[_Failure] = []
    for path in paths:
        datasets = read_study_files([path])
        if not datasets:
            if len(paths) == 1:
                raise click.UsageError(f"no DICOM files in {path}")
            failures.append(_Failure(str(path), "no readable DICOM file"))
            continue
        try:
            uid, patient_id = _one_study(datasets, "STUDY" if len(paths) == 1 else str(path))
        except click.UsageError as exc:
            if len(paths) == 1:
                raise
            failures.append(_Failure(str(path), exc.message))
            continue
        study = studies.setdefault(uid, _Study(uid, patient_id, [], []))
        if study.patient_id != patient_id:
            failures.append(_Failure(str(path), f"study {uid} is of patient {study.patient_id!r} in "
                                                f"{study.label}, of {patient_id!r} here", uid))
            continue
        seen = {str(ds.get("SOPInstanceUID", "")) for ds in study.datasets} - {""}
        study.datasets += [ds for ds in datasets if str(ds.get("SOPInstanceUID", "")) not in seen or
                           not ds.get("SOPInstanceUID")]
        study.sources.append(path)
    return list(studies.values()), failures


# -- --priors-from: the patients' earlier studies in a folder --------------------------------------------
@dataclass
class _IndexedStudy:
    uid: str
    date: str = ""
    time: str = ""
    accession: str = ""
    modalities: set[str] = field(default_factory=set)
    images: list[Path] = field(default_factory=list)
    reports: list[Path] = field(default_factory=list)


class PriorIndex:
    """The DICOM files under a folder, indexed once by PatientID -> StudyInstanceUID (headers only).

    :meth:`priors` gives a study its priors as the listener and the Orthanc worker do: candidates
    ranked by :func:`~unirg.plugin.prior_policy.rank_prior_studies` (earlier CR/DX studies of the same
    PatientID, exact match, never the study itself), the most recent ones with CR/DX images read in
    full, up to ``max_priors``, each a :class:`~unirg.plugin.priors.core.PriorStudy` whose report is
    :func:`~unirg.plugin.prior_policy.choose_report` of its SRs (a human report only).
    """

    def __init__(self, root: Path, *, max_priors: int | None = None, max_age: str | None = None) -> None:
        from pydicom import dcmread
        from pydicom.errors import InvalidDicomError

        from unirg.plugin.config import PriorsConfig
        from unirg.plugin.prior_policy import IMAGE_MODALITIES, is_sr

        defaults = PriorsConfig()
        self.root = Path(root)
        self.max_priors = defaults.max_priors if max_priors is None else max_priors
        self.max_age = defaults.max_age if max_age is None else max_age
        self.patients: dict[str, dict[str, _IndexedStudy]] = defaultdict(dict)
        self.files = self.unreadable = 0
        files = [self.root] if self.root.is_file() else sorted(
            p for p in self.root.rglob("*") if p.is_file() and not p.name.startswith("."))
        for file in files:
            try:
                ds = dcmread(file, stop_before_pixels=True)
            except (InvalidDicomError, OSError, ValueError, EOFError):
                self.unreadable += 1
                continue
            patient_id, uid = str(ds.get("PatientID", "") or ""), str(ds.get("StudyInstanceUID", "") or "")
            if not patient_id or not uid:
                continue
            self.files += 1
            study = self.patients[patient_id].setdefault(uid, _IndexedStudy(uid))
            modality = str(ds.get("Modality", "") or "").upper()
            if modality:
                study.modalities.add(modality)
            if ds.get("StudyDate") and not study.date:
                study.date, study.time = str(ds.StudyDate), str(ds.get("StudyTime", "") or "")
            study.accession = study.accession or str(ds.get("AccessionNumber", "") or "")
            if is_sr(ds):
                study.reports.append(file)
            elif modality in IMAGE_MODALITIES:
                study.images.append(file)

    @property
    def study_count(self) -> int:
        return sum(len(studies) for studies in self.patients.values())

    def _read(self, candidate: PriorCandidate) -> PriorStudy | None:
        """The indexed study of ``candidate`` read in full as a ``PriorStudy``; ``None`` when it has no
        readable CR/DX image (not a prior chest radiograph)."""
        from pydicom import dcmread

        from unirg.plugin.prior_policy import choose_report
        from unirg.plugin.priors.core import PriorStudy

        indexed: _IndexedStudy = candidate.data
        if not indexed.images:
            return None
        images, reports = [], []
        for file in indexed.images + indexed.reports:
            try:
                ds = dcmread(file)
            except Exception as exc:  # noqa: BLE001 - read when indexed, but a file can change
                log.warning("prior file %s not read: %s", file, exc)
                continue
            (reports if file in indexed.reports else images).append(ds)
        if not images:
            return None
        prior = PriorStudy(study_uid=indexed.uid, study_date=indexed.date, study_time=indexed.time,
                           accession_number=indexed.accession, images=images, report=choose_report(reports))
        log.info("event=prior_retrieved prior=%s source=%s images=%d srs=%d report=%s", indexed.uid,
                 self.root, len(images), len(reports),
                 prior.report.SOPInstanceUID if prior.report is not None else None)
        return prior

    def priors(self, current: list[Dataset]) -> tuple[list, str | None]:
        """``(prior studies, why none)`` for the study of ``current``: :class:`PriorStudy` objects, most
        recent first."""
        from unirg.plugin.prior_policy import PriorCandidate, rank_prior_studies
        from unirg.plugin.priors.core import PriorsUnavailable, current_patient, load_ranked

        try:
            patient_id, current_study = current_patient(current)
        except PriorsUnavailable as exc:
            return [], str(exc)
        if self.max_priors == 0:
            return [], "priors disabled (max_priors = 0)"
        known = self.patients.get(patient_id, {})
        ranked = rank_prior_studies(
            (PriorCandidate(s.uid, s.date, s.time, frozenset(s.modalities), s) for s in known.values()),
            current_study, len(known), self.max_age or None)
        priors = load_ranked(ranked, self._read, max_priors=self.max_priors)
        if not priors:
            return [], f"no earlier CR/DX study of patient {patient_id!r} in {self.root}"
        return priors, None


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


@click.command("draft")
@click.argument("study", nargs=-1, required=True, type=_PATH)
@click.option("--prior", "priors", multiple=True, type=_PATH,
              help="File or folder of an earlier study of the same patient (repeatable; one STUDY only); "
              "the most recent one with a frontal image is used, with its report SR.")
@click.option("--priors-from", "priors_from", type=click.Path(exists=True, path_type=Path),
              help="Folder (searched recursively) holding the patients' earlier studies: each STUDY gets "
              "its priors there by Patient ID (exact match), chosen as the listener chooses them.")
@click.option("--model", "model_path", type=click.Path(path_type=Path),
              help=f"Model directory (default ${DEFAULT_MODEL_ENV}, else var/models/unirg-demo).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the SRs (created; written atomically).")
@click.option("--batch-size", type=int, default=4, show_default=True,
              help="Studies per generate call when several are drafted.")
@click.option("--max-new-tokens", type=int, default=300, show_default=True, help="Generation limit.")
@click.option("--repetition-penalty", type=float, default=1.0, show_default=True,
              help="> 1 damps the loops small models fall into.")
@click.option("--indication", help="Reason for the exam (one STUDY only; default: read from the image header).")
@click.option("--device", help="cpu or cuda (default: cuda when available).")
@click.option("--trust-remote-code", is_flag=True, envvar="UNIRG_MODEL_TRUST_REMOTE_CODE",
              help="Run Python code shipped in the model checkpoint (MAIRA-2 needs it). Read its *.py files first.")
def draft(study, priors, priors_from, model_path, out_dir, batch_size, max_new_tokens, repetition_penalty,
          indication, device, trust_remote_code) -> None:
    """Draft the report of each STUDY (a study's folder, or its files) and write research-labelled SRs.

    \b
    RESEARCH PROTOTYPE - each SR is an unverified AI draft and is labelled as such.
    Several studies share one model load and are generated in batches; a study that cannot be
    drafted is reported and skipped (exit status 1), the others still get their SR.
    Examples:
      unirg draft var/testbed/SYN0-00001/ACC2 --prior var/testbed/SYN0-00001/ACC1 --out drafts/
      unirg draft var/testbed/*/ACC* --priors-from var/testbed --out drafts/
    """
    from unirg.model import GenerationConfig, load_model

    started = time.perf_counter()
    studies, failures = _gather(study)
    single = len(studies) == 1 and not failures
    if priors and priors_from:
        raise click.UsageError("give --prior (one study) or --priors-from DIR, not both")
    if priors and not single:
        raise click.UsageError("--prior is for one STUDY; for several, use --priors-from DIR")
    if indication and not single:
        raise click.UsageError("--indication is for one STUDY; several studies read theirs from the image headers")
    if batch_size < 1:
        raise click.UsageError(f"--batch-size must be >= 1, got {batch_size}")
    for failure in failures:
        click.echo(f"{failure.label}: FAILED: {failure.reason}", err=True)
    if not studies:
        raise click.ClickException(f"none of the {len(failures)} arguments holds a study that can be drafted")
    given = len(studies) + len(failures)
    fixed_priors = _priors(priors, studies[0].patient_id, studies[0].uid) if priors else None

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
                                      batch_size=1 if single else batch_size)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    index = None
    if priors_from is not None:
        index = PriorIndex(priors_from)
        click.echo(f"priors from {priors_from}: {index.study_count} studies of {len(index.patients)} patients "
                   f"in {index.files} DICOM files" + (f" ({index.unreadable} unreadable files skipped)"
                                                      if index.unreadable else ""))
    loading = time.perf_counter()
    try:
        model = load_model(path, device=device, trust_remote_code=trust_remote_code)
    except ValueError as exc:  # RemoteCodeNotTrusted, WeightsMismatch, UnsupportedModel: say what to do
        raise click.ClickException(str(exc)) from None
    load_s = time.perf_counter() - loading
    log.info("event=model_loaded model=%s version=%s seconds=%.2f", model.info.name, model.info.version, load_s)
    if not single:
        click.echo(f"model: {model.info.name} version {model.info.version} (loaded once in {load_s:.1f} s)")

    drafted = 0
    for chunk in _chunks(studies, generation.batch_size):
        for outcome in _draft_chunk(model, chunk, generation, out_dir, fixed_priors, index, indication):
            if isinstance(outcome, _Failure):
                if single:
                    raise click.ClickException(outcome.reason)
                failures.append(outcome)
                click.echo(f"{outcome.label}: FAILED: {outcome.reason}", err=True)
                continue
            drafted += 1
            _report(outcome, model, single, offered=bool(fixed_priors) or index is not None)
    if single:
        return
    click.echo(f"drafted {drafted} of {given} studies in {time.perf_counter() - started:.1f} s "
               f"(model loaded once in {load_s:.1f} s, batch size {generation.batch_size}); "
               f"{len(failures)} failed; SRs in {out_dir}")
    if failures:
        raise click.exceptions.Exit(1)


@dataclass
class _Drafted:
    study: _Study
    result: object
    sr: Dataset
    target: Path
    prior_note: str


def _draft_chunk(model, chunk: list[_Study], generation, out_dir: Path, fixed_priors, index, indication):
    """Prepare, generate (one ``model.draft`` call for the chunk), check and write; yields a
    :class:`_Drafted` or a :class:`_Failure` per study, in order."""
    from unirg.plugin.pipeline import DraftRejected, StudySkipped, prepare_study, sr_from_draft
    from unirg.sr_writer import SRInputError, check_research_labels, write_dataset_atomic

    outcomes: list[object] = []
    prepared = []
    for current in chunk:
        notes = ""
        if index is not None:
            offered, why_none = index.priors(current.datasets)
            notes = "" if offered else f" (no prior: {why_none})"
        else:
            offered = fixed_priors or []
        try:
            prep = prepare_study(current.datasets, offered, indication=indication)
        except StudySkipped as exc:
            outcomes.append(_Failure(current.label, f"study {current.uid} skipped: {exc.reason}", current.uid))
            continue
        except Exception as exc:  # noqa: BLE001 - an unreadable image fails its study, not the call
            log.warning("event=study_failed study=%s", current.uid, exc_info=True)
            outcomes.append(_Failure(current.label, f"study {current.uid} cannot be read: "
                                                    f"{type(exc).__name__}: {exc}", current.uid))
            continue
        outcomes.append((current, prep, offered, notes))
        prepared.append(prep)
    try:
        drafts = iter(model.draft([p.study_input for p in prepared], generation) if prepared else [])
    except Exception as exc:  # noqa: BLE001 - generation failed for this batch: its studies fail
        log.exception("event=batch_failed studies=%s", ",".join(str(p.study_uid) for p in prepared))
        drafts = None
        failure = f"generation failed: {type(exc).__name__}: {exc}"
    for outcome in outcomes:
        if isinstance(outcome, _Failure):
            yield outcome
            continue
        current, prep, offered, notes = outcome
        if drafts is None:
            yield _Failure(current.label, f"study {current.uid}: {failure}", current.uid)
            continue
        result = next(drafts)
        # the prompt carries report text (prior report, indication), never patient names
        log.debug("event=prompt study=%s model=%s prompt=%r", prep.study_uid, result.model_info.version,
                  result.prompt_text)
        try:
            sr = sr_from_draft(result, prep)
            check_research_labels(sr)  # the store door rule holds for local files too
            out_dir.mkdir(parents=True, exist_ok=True)
            target = write_dataset_atomic(sr, path_under(out_dir, safe_component(sr.SOPInstanceUID) + ".dcm"))
        except (DraftRejected, SRInputError, ValueError) as exc:  # ResearchLabelMissing, UnsafePath too
            yield _Failure(current.label, str(exc), current.uid)
            continue
        prior_note = ""
        if offered:
            used = list(sr.get("PertinentOtherEvidenceSequence", []))
            prior_note = f" (prior: {used[0].StudyInstanceUID})" if used else " (no usable prior)"
        yield _Drafted(current, result, sr, target, prior_note or notes)


def _report(done: _Drafted, model, single: bool, *, offered: bool) -> None:
    result = done.result
    if single:  # the one-study output, as it always was
        click.echo(f"model: {model.info.name} version {model.info.version}{done.prior_note if offered else ''}")
        indent = ""
    else:
        click.echo(f"study {done.study.uid} ({done.study.label}): drafted{done.prior_note}")
        indent = "  "
    if result.flags:
        click.echo(f"{indent}flags: {', '.join(result.flags)}")
    click.echo(f"{indent}Findings: {result.findings}")
    click.echo(f"{indent}Impression: {result.impression}")
    if result.comparison:
        click.echo(f"{indent}Comparison: {result.comparison}")
    click.echo(f"{indent}SR: {done.target}")
