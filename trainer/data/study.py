"""A :class:`Sample` as the model sees it: the same :class:`StudyInput` the plugin builds from DICOM.

Used by RL and eval, so training, evaluation and the running plugin prompt the model alike.
"""

from __future__ import annotations

from unirg.model.study import StudyInput

__all__ = ["study_input"]


def _header_indication(ref) -> tuple[str | None, str | None]:
    """(indication, StudyDate) from a DICOM image's header, ``(None, None)`` for other files."""
    if ref is None or ref.path is None or not ref.is_dicom:
        return None, None
    import pydicom

    from unirg.model.study import indication_from_dataset

    ds = pydicom.dcmread(ref.path, stop_before_pixels=True)
    return indication_from_dataset(ds), str(getattr(ds, "StudyDate", "") or "") or None


def study_input(sample, *, size: int = 512, longitudinal: bool = True) -> StudyInput:
    """The :class:`StudyInput` the plugin would build for ``sample`` (see the module docstring).

    Indication: for DICOM images the header's (as :meth:`StudyInput.from_datasets`, ``None`` when the header has
    none), for other images the sample's. Comparison:
    ``"Chest radiograph YYYY-MM-DD."`` of the prior when there is one (never the reference report's
    comparison text, which describes the answer).
    """
    frontal = sample.frontal
    if frontal is None:
        raise ValueError(f"sample {sample.sample_id} has no frontal image")
    # DICOM: the header's reason for the exam, as the plugin reads it (even when the header has none);
    # other files (JPG datasets) have no header, so the dataset's indication stands in for it
    indication = _header_indication(frontal)[0] if frontal.is_dicom else sample.indication
    prior_image = prior_report = comparison = None
    prior = sample.prior if longitudinal else None
    if prior is not None and prior.image is not None:
        prior_image = prior.image.load(size=size)
        prior_report = prior.report
        _, header_date = _header_indication(prior.image)
        date = header_date or prior.study_date or ""
        if len(date) == 8 and date.isdigit():
            comparison = f"Chest radiograph {date[:4]}-{date[4:6]}-{date[6:]}."
    return StudyInput(frontal=frontal.load(size=size), indication=indication, comparison=comparison,
                      prior_frontal=prior_image, prior_report=prior_report if prior_image is not None else None,
                      study_uid=sample.study_id)
