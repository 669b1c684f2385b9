"""Draft/final pairs: the table the plugin writes when a signed final report meets its draft, and the
trainer's export reads (the one data contract between them; it lives here because both import ``model``).

One row per study (``study_uid`` is the key): the latest human final report paired with the latest draft.
A newer final (later ``final_time``) replaces an older one and every score is recomputed.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Float, Index, MetaData, String, Table, Text, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from unirg.model.chexpert import OBSERVATIONS, POSITIVE, UNCERTAIN

log = logging.getLogger(__name__)

QUEUE_FILE = "unirg.sqlite3"
"""The embedded queue database (this table's home) under a data dir, when ``[queue] url`` is empty."""


def default_queue_url(data_dir: str | os.PathLike[str]) -> str:
    """``sqlite:///<data_dir>/unirg.sqlite3``: the queue database the plugin uses when no URL is configured."""
    return f"sqlite:///{Path(data_dir).resolve() / QUEUE_FILE}"


metadata = MetaData()

feedback = Table(
    "unirg_feedback",
    metadata,
    Column("study_uid", String(64), primary_key=True),
    Column("patient_id", String(64)),           # needed to link priors; never exported (de-identified)
    Column("study_date", String(8)),            # YYYYMMDD of the current study
    Column("model_version", String(128), nullable=False),
    Column("draft_sop_uid", String(64), nullable=False),
    Column("final_sop_uid", String(64), nullable=False),
    Column("final_time", Float, nullable=False),  # the final's ContentDate/Time (else receive time), epoch s
    Column("source", String(16), nullable=False),  # listener, orthanc, dicomweb, import
    Column("draft_text", Text, nullable=False),
    Column("final_text", Text, nullable=False),
    Column("scores", Text, nullable=False),     # JSON: see score_pair
    Column("label_agreement", Float, nullable=False),
    Column("images", Text, nullable=False, default="[]"),       # JSON [{"path", "view"}] of the current study
    Column("priors", Text, nullable=False, default="[]"),       # JSON [prior study UIDs]
    Column("drafted_at", Float),
    Column("paired_at", Float, nullable=False),
    Index("ix_unirg_feedback_version", "model_version"),
    Index("ix_unirg_feedback_paired", "paired_at"),
)


@dataclass
class FeedbackRecord:
    """One paired study (a row of ``unirg_feedback``), with its JSON columns decoded."""

    study_uid: str
    model_version: str
    draft_sop_uid: str
    final_sop_uid: str
    final_time: float
    source: str
    draft_text: str
    final_text: str
    scores: dict[str, Any]
    label_agreement: float
    paired_at: float
    patient_id: str | None = None
    study_date: str | None = None
    images: list[dict[str, Any]] = field(default_factory=list)
    priors: list[str] = field(default_factory=list)
    drafted_at: float | None = None

    @classmethod
    def from_row(cls, row: Any) -> FeedbackRecord:
        m = dict(row._mapping)
        for key in ("scores", "images", "priors"):
            m[key] = json.loads(m[key] or ("{}" if key == "scores" else "[]"))
        return cls(**m)


def create_schema(engine: Engine) -> None:
    metadata.create_all(engine, checkfirst=True)


def read_pairs(engine: Engine, *, since: float | None = None,
               model_version: str | None = None) -> list[FeedbackRecord]:
    """Every paired study (oldest pairing first), optionally paired at or after ``since`` (epoch s) and of
    one model version."""
    query = select(feedback).order_by(feedback.c.paired_at, feedback.c.study_uid)
    if since is not None:
        query = query.where(feedback.c.paired_at >= since)
    if model_version is not None:
        query = query.where(feedback.c.model_version == model_version)
    create_schema(engine)
    with engine.connect() as c:
        return [FeedbackRecord.from_row(r) for r in c.execute(query)]


# -- scoring ----------------------------------------------------------------------------------------------
#: ``embed(draft_text, final_text) -> cosine``; ``judge(draft_text, final_text) -> errors`` (JSON-able).
Embed = Callable[[str, str], float]
Judge = Callable[[str, str], Any]


def _state(value: int | None) -> int:
    """A label as agreement compares it: not mentioned counts as negative (0)."""
    return 0 if value is None else int(value)


def discordant(draft_labels: Mapping[str, int | None], final_labels: Mapping[str, int | None]) -> dict[str, list[str]]:
    """The observations on which draft and final disagree, in CheXpert order.

    ``missed``: positive in the final, not in the draft; ``false``: positive in the draft, not in the final;
    ``uncertain``: uncertain in one of them only (and positive in neither).

    >>> discordant({"Edema": 1, "Pneumothorax": -1}, {"Cardiomegaly": 1, "Edema": 1})
    {'missed': ['Cardiomegaly'], 'false': [], 'uncertain': ['Pneumothorax']}
    """
    out: dict[str, list[str]] = {"missed": [], "false": [], "uncertain": []}
    for obs in OBSERVATIONS:
        d, f = _state(draft_labels.get(obs)), _state(final_labels.get(obs))
        if d == f:
            continue
        if f == POSITIVE:
            out["missed"].append(obs)
        elif d == POSITIVE:
            out["false"].append(obs)
        elif UNCERTAIN in (d, f):
            out["uncertain"].append(obs)
    return out


def label_agreement(draft_labels: Mapping[str, int | None], final_labels: Mapping[str, int | None]) -> float:
    """Share of the 14 observations with the same label (1, -1, or negative/not mentioned) in both.

    >>> label_agreement({"Edema": 1}, {"Edema": 1, "Cardiomegaly": 0})
    1.0
    >>> round(label_agreement({"Edema": 1}, {}), 4)
    0.9286
    """
    same = sum(_state(draft_labels.get(o)) == _state(final_labels.get(o)) for o in OBSERVATIONS)
    return same / len(OBSERVATIONS)


#: ``scores["embedding_skipped"]``: why ``embedding_similarity`` is ``None`` (``None``: it was computed).
EMBEDDING_DISABLED = "disabled"
EMBEDDING_UNAVAILABLE = "unavailable"


def score_pair(draft_text: str, final_text: str, *, embed: Embed | None = None, judge: Judge | None = None,
               embedding: bool = True) -> dict[str, Any]:
    """Every score of one draft against its final report (what the ``scores`` column holds).

    Keys: ``draft_labels``, ``final_labels`` (CheXpert-14 by :func:`unirg.model.labeler.label_report`),
    ``label_agreement`` (:func:`label_agreement`), ``discordant`` (:func:`discordant`), ``bleu2`` and
    ``rouge_l`` (:mod:`unirg.model.textmetrics`, draft as candidate, final as reference),
    ``embedding_similarity`` (``embed`` or the shipped MiniLM sentence model; ``None`` with
    ``embedding=False``, which loads no model, or when the model cannot be loaded), ``embedding_skipped``
    (why it is ``None``: :data:`EMBEDDING_DISABLED` or :data:`EMBEDDING_UNAVAILABLE`; ``None`` when it was
    computed) and ``judge_errors`` (``judge(draft, final)``; ``None`` without a judge or when it fails).
    """
    from unirg.model.labeler import label_report  # imported here: readers of the table need neither
    from unirg.model.textmetrics import bleu2, embedding_similarity, rouge_l

    draft_labels = label_report(draft_text)
    final_labels = label_report(final_text)
    similarity: float | None = None
    skipped: str | None = None
    if not embedding:
        skipped = EMBEDDING_DISABLED
    else:
        try:
            similarity = (embed or embedding_similarity)(draft_text, final_text)
        except (FileNotFoundError, ImportError, OSError) as exc:
            log.warning("event=feedback_embedding_unavailable reason=%r", str(exc))
            skipped = EMBEDDING_UNAVAILABLE
    judge_errors = None
    if judge is not None:
        try:
            judge_errors = judge(draft_text, final_text)
        except Exception as exc:  # a judge is optional: its failure must not lose the pair
            log.warning("event=feedback_judge_failed reason=%r", f"{type(exc).__name__}: {exc}")
    return {
        "draft_labels": dict(draft_labels),
        "final_labels": dict(final_labels),
        "label_agreement": label_agreement(draft_labels, final_labels),
        "discordant": discordant(draft_labels, final_labels),
        "bleu2": bleu2(draft_text, final_text),
        "rouge_l": rouge_l(draft_text, final_text),
        "embedding_similarity": None if similarity is None else float(similarity),
        "embedding_skipped": skipped,
        "judge_errors": judge_errors,
    }


# -- writing a pair ---------------------------------------------------------------------------------------
def _current(engine: Engine, study_uid: str) -> Any:
    with engine.connect() as c:
        return c.execute(select(feedback.c.final_time, feedback.c.final_sop_uid, feedback.c.draft_sop_uid,
                                feedback.c.draft_text, feedback.c.final_text)
                         .where(feedback.c.study_uid == study_uid)).first()


def _keeps(row: Any, final_time: float, final_sop_uid: str, draft_sop_uid: str, draft_text: str,
           final_text: str) -> bool:
    """Whether the stored pair stays: its final is newer, or it is this very pair already."""
    if row is None:
        return False
    if row.final_time > final_time:
        return True
    return (row.final_time == final_time and row.final_sop_uid == final_sop_uid
            and row.draft_sop_uid == draft_sop_uid and row.draft_text == draft_text
            and row.final_text == final_text)


def record_pair(engine: Engine, *, study_uid: str, model_version: str, draft_sop_uid: str, final_sop_uid: str,
                final_time: float, source: str, draft_text: str, final_text: str,
                images: Sequence[Mapping[str, Any]] = (), priors: Sequence[str] = (),
                patient_id: str | None = None, study_date: str | None = None, drafted_at: float | None = None,
                embed: Embed | None = None, judge: Judge | None = None, embedding: bool = True,
                now: float | None = None) -> str:
    """Upsert the pair of ``study_uid``; returns ``"inserted"``, ``"replaced"`` or ``"kept"``.

    The newer final wins (by ``final_time``): a final older than the stored one changes nothing
    (``"kept"``), and so does the very same pair again; otherwise every score is recomputed
    (:func:`score_pair`, with ``embed``, ``judge`` and ``embedding``) and the row replaced. Scoring runs
    outside the transaction; the check is repeated inside it, so two writers racing keep the newer final.
    """
    if not study_uid or not final_text.strip():
        raise ValueError("record_pair needs a study_uid and a non-blank final_text")
    create_schema(engine)
    if _keeps(_current(engine, study_uid), final_time, final_sop_uid, draft_sop_uid, draft_text, final_text):
        return "kept"
    scores = score_pair(draft_text, final_text, embed=embed, judge=judge, embedding=embedding)
    values = dict(
        model_version=model_version, draft_sop_uid=draft_sop_uid, final_sop_uid=final_sop_uid,
        final_time=float(final_time), source=source, draft_text=draft_text, final_text=final_text,
        scores=json.dumps(scores), label_agreement=scores["label_agreement"],
        images=json.dumps([dict(i) for i in images]), priors=json.dumps(list(priors)),
        patient_id=patient_id, study_date=study_date, drafted_at=drafted_at,
        paired_at=time.time() if now is None else now,
    )
    for _ in range(2):  # a concurrent first insert: read again and decide again
        try:
            with engine.begin() as c:
                row = c.execute(select(feedback.c.final_time, feedback.c.final_sop_uid, feedback.c.draft_sop_uid,
                                       feedback.c.draft_text, feedback.c.final_text)
                                .where(feedback.c.study_uid == study_uid).with_for_update()).first()
                if _keeps(row, final_time, final_sop_uid, draft_sop_uid, draft_text, final_text):
                    return "kept"
                if row is None:
                    c.execute(feedback.insert().values(study_uid=study_uid, **values))
                    outcome = "inserted"
                else:
                    c.execute(feedback.update().where(feedback.c.study_uid == study_uid).values(**values))
                    outcome = "replaced"
            log.info("event=feedback_paired study=%s outcome=%s model_version=%s agreement=%.3f source=%s",
                     study_uid, outcome, model_version, scores["label_agreement"], source)
            return outcome
        except IntegrityError:
            continue
    return "kept"
