"""Pick the frontal and lateral chest radiographs of a study.

Candidates are PRIMARY chest radiographs, ORIGINAL or DERIVED: lossy-compressed archives
(LossyImageCompression 01) and vendor-processed radiographs carry ImageType DERIVED\\PRIMARY and
are the radiograph a site has. ORIGINAL is preferred when a view has both. Skipped, each with a
stated reason: objects without pixel data, structured reports and other non-image objects,
Secondary Capture, SECONDARY images, derived objects that are not the radiograph (subtraction,
dual-energy, annotated, key images, segmentations, renderings: from Image Type values 3+,
Derivation Description or Derivation Code Sequence), modalities other than CR / DX, images of
another body part, and views that are neither frontal nor lateral (obliques, decubitus, unknown).

The view and skip rules (:func:`classify_view`, :func:`skip_reason`) live in :mod:`unirg.model.views`.

>>> from pydicom.dataset import Dataset
>>> ds = Dataset(); ds.ViewPosition = "PA"; ds.BodyPartExamined = "CHEST"
>>> classify_view(ds)
'PA'
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from unirg.model.views import FRONTAL_VIEWS, LATERAL, classify_view, is_chest, is_derived, skip_reason

__all__ = [
    "FRONTAL_VIEWS",
    "LATERAL",
    "NoUsableImage",
    "ViewSelection",
    "classify_view",
    "is_derived",
    "is_chest",
    "select_views",
    "skip_reason",
]


class NoUsableImage(ValueError):
    """A study holds no image the model can report on; ``reason`` says why.

    ``selection`` is the partial :class:`ViewSelection` (a lateral may have been found).
    """

    def __init__(self, reason: str, selection: ViewSelection | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.selection = selection


@dataclass
class ViewSelection:
    """The chosen images and what was left out.

    ``frontal_view`` is ``"PA"``, ``"AP"`` or ``"FRONTAL"`` (frontal, projection unknown).
    ``skipped`` lists ``(SOPInstanceUID, reason)`` for every object not chosen.
    """

    frontal: Dataset | None
    lateral: Dataset | None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    frontal_view: str | None = None


def _uid(ds: Dataset) -> str:
    return str(ds.get("SOPInstanceUID", "") or "?")


def _best_first(items: list[tuple[str, Dataset]]) -> list[tuple[str, Dataset]]:
    """PA before AP before unknown-projection frontal; within a view ORIGINAL before DERIVED (a
    lossy or processed copy of the same exposure), then the latest acquisition (then the highest
    Instance Number) first: a repeated exposure replaces a failed one."""

    def when(ds: Dataset) -> tuple[str, int]:
        stamp = (
            str(ds.get("AcquisitionDateTime", "") or "")
            or str(ds.get("AcquisitionDate", "") or "") + str(ds.get("AcquisitionTime", "") or "")
            or str(ds.get("ContentDate", "") or "") + str(ds.get("ContentTime", "") or "")
        )
        return stamp, int(ds.get("InstanceNumber", 0) or 0)

    preference = {"PA": 0, "AP": 1, "FRONTAL": 2, LATERAL: 0}
    by_time = sorted(items, key=lambda item: when(item[1]), reverse=True)
    return sorted(by_time, key=lambda item: (preference[item[0]], is_derived(item[1])))


def select_views(datasets: Iterable[Dataset], *, require_frontal: bool = True) -> ViewSelection:
    """Choose the frontal and lateral image of one study.

    Parameters
    ----------
    datasets : iterable of Dataset
        Every object of the study (images, SRs, ...), in any order.
    require_frontal : bool
        Raise :class:`NoUsableImage` when there is no frontal image (the default: the
        report models need one). With ``False`` a lateral-only selection is returned.

    Raises
    ------
    NoUsableImage
        No usable chest image (or no frontal one), with the reason.
    """
    frontals: list[tuple[str, Dataset]] = []
    laterals: list[tuple[str, Dataset]] = []
    skipped: list[tuple[str, str]] = []
    for ds in datasets:
        reason = skip_reason(ds)
        if reason:
            skipped.append((_uid(ds), reason))
            continue
        view = classify_view(ds)
        (laterals if view == LATERAL else frontals).append((view, ds))
    frontals = _best_first(frontals)
    laterals = _best_first(laterals)
    for _view, ds in frontals[1:]:
        skipped.append((_uid(ds), "another frontal image was chosen"))
    for _view, ds in laterals[1:]:
        skipped.append((_uid(ds), "another lateral image was chosen"))
    selection = ViewSelection(
        frontal=frontals[0][1] if frontals else None,
        lateral=laterals[0][1] if laterals else None,
        skipped=skipped,
        frontal_view=frontals[0][0] if frontals else None,
    )
    if selection.frontal is None and selection.lateral is None:
        reasons = sorted({reason for _uid_, reason in skipped})
        detail = "; ".join(reasons) if reasons else "the study is empty"
        raise NoUsableImage(f"no usable chest radiograph ({detail})", selection)
    if selection.frontal is None and require_frontal:
        raise NoUsableImage("no frontal (PA/AP) chest radiograph; only a lateral view", selection)
    return selection
