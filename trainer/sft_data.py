"""SFT's data: :class:`TrainingExample` from :mod:`unirg.trainer.data` samples, the :class:`StudyInputCache` and
the :class:`SFTCollator` that turn examples into model inputs and batches.

Examples come from the one sample format (:class:`~unirg.trainer.data.Sample`, e.g. :func:`load_testbed`); the
frontal image follows :data:`unirg.model.views.FRONTAL_VIEWS` (PA, then AP, then projection unknown, as the
plugin's view selection); the evaluation split is :func:`unirg.trainer.data.holdout_split`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unirg.model.families import FamilyAdapter
from unirg.model.prompt import format_target
from unirg.model.study import StudyInput, comparison_from_date, indication_from_dataset
from unirg.model.views import FRONTAL_VIEWS
from unirg.trainer.data import Sample, holdout_split, load_dataset

__all__ = [
    "SFTCollator",
    "StudyInputCache",
    "TrainingExample",
    "approximate_length",
    "examples_from_samples",
    "index_dataset",
    "patient_split",
    "testbed_examples",
]


@dataclass(frozen=True)
class TrainingExample:
    """One study to learn from: image paths, the prior, the reference report.

    Paths are absolute. ``target`` is the answer the model is trained to write
    (:func:`format_target` of the reference findings and impression).
    """

    study_uid: str
    patient_id: str
    institution: str
    frontal: str
    target: str
    labels: dict[str, int | None] = field(default_factory=dict, compare=False)
    prior_frontal: str | None = None
    prior_report: str | None = None
    study_date: str = ""


def _frontal_path(sample: Sample) -> str | None:
    """The study's frontal image file: PA before AP before projection unknown (as ``select_views``)."""
    frontals = [ref for ref in sample.images if ref.view in FRONTAL_VIEWS and ref.path is not None]
    frontals.sort(key=lambda ref: FRONTAL_VIEWS.index(ref.view))
    return str(frontals[0].path) if frontals else None


def examples_from_samples(
    samples: Sequence[Sample],
    *,
    institutions: Iterable[str] | None = None,
    priors: bool = True,
) -> list[TrainingExample]:
    """Training examples of ``samples`` (their institutions in ``institutions``, when given).

    Studies without a frontal image are left out (the plugin skips them too). With ``priors``, a study
    whose prior (among ``samples``) has a frontal image gets that image and the prior's report, which is
    what the plugin sends for the most recent prior.
    """
    by_id = {s.study_id: s for s in samples}
    wanted = set(institutions) if institutions else None
    examples = []
    for sample in samples:
        if wanted is not None and sample.institution not in wanted:
            continue
        frontal = _frontal_path(sample)
        if frontal is None:
            continue
        prior_frontal = prior_report = None
        prior = by_id.get(sample.prior.study_id) if sample.prior is not None else None
        if priors and prior is not None:
            prior_frontal = _frontal_path(prior)
            if prior_frontal is not None:
                prior_report = format_target(prior.findings, prior.impression)
        examples.append(
            TrainingExample(
                study_uid=sample.study_id,
                patient_id=sample.patient_id,
                institution=sample.institution or "",
                frontal=frontal,
                target=format_target(sample.findings, sample.impression),
                labels=dict(sample.labels or {}),
                prior_frontal=prior_frontal,
                prior_report=prior_report,
                study_date=str(sample.study_date or ""),
            )
        )
    return examples


def testbed_examples(
    data_dir: str | Path,
    *,
    institutions: Iterable[str] | None = None,
    priors: bool = True,
) -> list[TrainingExample]:
    """Training examples from a synthetic testbed (:func:`~unirg.trainer.data.load_testbed`) or a JSONL
    manifest folder such as ``unirg-trainer export`` writes (:func:`~unirg.trainer.data.load_jsonl_manifest`),
    see :func:`examples_from_samples`."""
    root = Path(data_dir).resolve()
    manifest = root / "manifest.jsonl"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest} not found: make a testbed with `unirg-trainer synth --out {root}`")
    return examples_from_samples(load_dataset(root), institutions=institutions, priors=priors)


testbed_examples.__test__ = False  # not a pytest test, whatever its name

patient_split = holdout_split
"""``(train, held_out)`` of training examples: :func:`unirg.trainer.data.holdout_split`."""


class StudyInputCache:
    """Builds the :class:`StudyInput` of an example, decoding each DICOM file once.

    The fields follow :meth:`StudyInput.from_datasets`' rules (:func:`indication_from_dataset`,
    :func:`comparison_from_date` for a prior); ``decode_size`` is the square the pixels are fitted to before the
    processor's own resize (512 in the plugin; a smaller square changes nothing once the
    processor has resized to a smaller model input, and saves memory).
    """

    def __init__(self, decode_size: int = 512) -> None:
        self.decode_size = decode_size
        self._images: dict[str, Any] = {}
        self._headers: dict[str, tuple[str | None, str]] = {}

    def _load(self, path: str) -> None:
        import pydicom

        from unirg.model.pixels import dataset_to_image

        ds = pydicom.dcmread(path)
        self._images[path] = dataset_to_image(ds, size=self.decode_size)
        self._headers[path] = (indication_from_dataset(ds), str(getattr(ds, "StudyDate", "") or ""))

    def image(self, path: str):
        if path not in self._images:
            self._load(path)
        return self._images[path]

    def header(self, path: str) -> tuple[str | None, str]:
        if path not in self._headers:
            self._load(path)
        return self._headers[path]

    def study(self, example: TrainingExample) -> StudyInput:
        indication, _date = self.header(example.frontal)
        comparison = None
        prior_image = None
        if example.prior_frontal is not None:
            prior_image = self.image(example.prior_frontal)
            comparison = comparison_from_date(self.header(example.prior_frontal)[1])
        return StudyInput(
            frontal=self.image(example.frontal),
            indication=indication,
            comparison=comparison,
            prior_frontal=prior_image,
            prior_report=example.prior_report if prior_image is not None else None,
            study_uid=example.study_uid,
        )


class SFTCollator:
    """Turns dataset rows ``{"index": i}`` into a training batch of ``examples[i]``.

    The batch is :meth:`FamilyAdapter.training_inputs` (right-padded, ``labels`` -100 on
    prompt and padding), so the prompt is byte for byte the inference prompt.
    """

    def __init__(
        self,
        adapter: FamilyAdapter,
        processor: Any,
        examples: Sequence[TrainingExample],
        cache: StudyInputCache | None = None,
    ) -> None:
        self.adapter = adapter
        self.processor = processor
        self.examples = list(examples)
        self.cache = cache or StudyInputCache()

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        chosen = [self.examples[int(feature["index"])] for feature in features]
        studies = [self.cache.study(example) for example in chosen]
        batch = self.adapter.training_inputs(self.processor, studies, [e.target for e in chosen])
        return dict(batch)


def approximate_length(example: TrainingExample) -> int:
    """A cheap proxy of an example's token count (words), for length-grouped batches."""
    words = len(example.target.split())
    if example.prior_frontal is not None:
        words += 40 + len((example.prior_report or "").split())  # second image + prior report
    return words


def index_dataset(examples: Sequence[TrainingExample], start: int = 0):
    """A ``datasets.Dataset`` of rows ``{"index", "length"}`` (``index`` is what
    :class:`SFTCollator` reads, counted from ``start``; ``length`` feeds length grouping)."""
    from datasets import Dataset

    return Dataset.from_dict(
        {
            "index": list(range(start, start + len(examples))),
            "length": [approximate_length(example) for example in examples],
        }
    )


def _processor_side(processor: Any) -> int | None:
    """Side in pixels of the square the image processor resizes to, when it says."""
    image_processor = getattr(processor, "image_processor", None)
    size = getattr(image_processor, "size", None) or {}
    if isinstance(size, dict):
        if "longest_edge" in size and "shortest_edge" in size and size["longest_edge"] > 4096:
            return int(round(size["longest_edge"] ** 0.5))  # Qwen-VL: pixel counts
        if "height" in size:
            return int(size["height"])
    max_pixels = getattr(image_processor, "max_pixels", None)
    if max_pixels:
        return int(round(max_pixels**0.5))
    return None
