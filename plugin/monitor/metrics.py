"""Prometheus metrics computed from the queue database at scrape time (``prometheus-client``).

The worker, the listener and the web server may be different processes, so nothing is counted in
process: a custom collector reads a fresh :mod:`~unirg.plugin.monitor.snapshot` on every scrape and turns
it into metric families. Served at ``/metrics`` by ``unirg status --serve`` and at ``/unirg/metrics`` by
the Orthanc plugin.

==============================================  =========  ====================  ===============================
metric                                          type       labels                what
==============================================  =========  ====================  ===============================
``unirg_queue_jobs``                            gauge      state                 queued, retrying (part of
                                                                                 queued), in_flight, done, failed
``unirg_studies``                               gauge      state                 studies per ledger state
``unirg_drafts_total``                          counter    model_version         SRs stored (done jobs)
``unirg_draft_failures_total``                  counter    reason                dead-lettered jobs, by reason
``unirg_draft_latency_seconds``                 histogram                        study stable -> SR stored
``unirg_model_seconds``                         histogram                        model time per draft
``unirg_job_seconds``                           histogram                        worker time per draft
``unirg_feedback_pairs_total``                  counter    model_version         drafts paired with a final
``unirg_label_agreement``                       histogram  model_version         CheXpert-14 agreement per pair
``unirg_label_agreement_mean``                  gauge      model_version         mean agreement
``unirg_observation_agreement``                 gauge      observation           share of pairs that agree
``unirg_observation_discordant_total``          counter    observation, kind     missed / false / uncertain
==============================================  =========  ====================  ===============================
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

__all__ = ["CONTENT_TYPE", "SnapshotCollector", "metric_families", "metrics_text", "registry_for"]

#: The Content-Type of :func:`metrics_text` (Prometheus text exposition format).
CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCIES = (
    ("unirg_draft_latency_seconds", "stable_to_stored_s",
     "Seconds from the study judged complete (stable) and queued to its SR stored (retries included)."),
    ("unirg_model_seconds", "model_s", "Seconds the report model took per draft."),
    ("unirg_job_seconds", "job_s", "Seconds the worker took per draft (read, priors, model, store)."),
)


def _hist_buckets(summary: Mapping[str, Any]) -> list[tuple[str, float]]:
    return [("+Inf" if le == "+Inf" else repr(float(le)), float(n)) for le, n in summary["buckets"]]


def metric_families(snapshot: Mapping[str, Any]) -> Iterator[Metric]:
    """The metric families of ``snapshot`` (pure: :func:`unirg.plugin.monitor.snapshot.build_snapshot`'s dict)."""
    queue = GaugeMetricFamily("unirg_queue_jobs", "Jobs in the queue by state (retrying: queued jobs that "
                              "already failed at least once, part of queued).", labels=["state"])
    for state in ("queued", "retrying", "in_flight", "done", "failed"):
        queue.add_metric([state], float(snapshot["queue"].get(state, 0)))
    yield queue

    studies = GaugeMetricFamily("unirg_studies", "Studies by state in unirg's ledger.", labels=["state"])
    for state, n in sorted(snapshot.get("studies", {}).items()):
        studies.add_metric([state], float(n))
    yield studies

    drafts = CounterMetricFamily("unirg_drafts", "Draft SRs stored, by model version.", labels=["model_version"])
    for version, n in snapshot["drafts"]["by_model_version"].items():
        drafts.add_metric([version], float(n))
    yield drafts

    failures = CounterMetricFamily("unirg_draft_failures", "Jobs dead-lettered (given up), by reason.",
                                   labels=["reason"])
    for reason, n in snapshot["failures"]["by_reason"].items():
        failures.add_metric([reason], float(n))
    yield failures

    for name, key, doc in _LATENCIES:
        summary = snapshot["latency"][key]
        hist = HistogramMetricFamily(name, doc)
        hist.add_metric([], _hist_buckets(summary), float(summary["sum"]))
        yield hist

    agreement = snapshot["agreement"]
    pairs = CounterMetricFamily("unirg_feedback_pairs", "Drafts paired with their signed final report.",
                                labels=["model_version"])
    hist = HistogramMetricFamily("unirg_label_agreement", "CheXpert-14 label agreement of draft and final "
                                 "(share of the 14 observations), per paired study.", labels=["model_version"])
    mean = GaugeMetricFamily("unirg_label_agreement_mean", "Mean CheXpert-14 label agreement of draft and "
                             "final, by model version.", labels=["model_version"])
    for version, s in agreement["by_version"].items():
        pairs.add_metric([version], float(s["n"]))
        hist.add_metric([version], _hist_buckets(s), float(s["sum"]))
        if s["mean"] is not None:
            mean.add_metric([version], float(s["mean"]))
    yield pairs
    yield hist
    yield mean

    obs_agree = GaugeMetricFamily("unirg_observation_agreement", "Share of paired studies whose draft and "
                                  "final agree on the observation.", labels=["observation"])
    obs_disc = CounterMetricFamily("unirg_observation_discordant", "Paired studies discordant on the "
                                   "observation: missed (final positive, draft not), false (draft positive, "
                                   "final not), uncertain.", labels=["observation", "kind"])
    for obs, row in agreement["by_observation"].items():
        if row["agreement"] is not None:
            obs_agree.add_metric([obs], float(row["agreement"]))
        for kind in ("missed", "false", "uncertain"):
            if agreement["pairs"]:
                obs_disc.add_metric([obs, kind], float(row[kind]))
    yield obs_agree
    yield obs_disc


class SnapshotCollector:
    """A prometheus-client collector that reads a fresh snapshot (``read()``) on every scrape."""

    def __init__(self, read: Callable[[], Mapping[str, Any]]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        yield from metric_families(self.read())

    def describe(self) -> list[Metric]:
        return []  # nothing to read at registration time


def registry_for(read: Callable[[], Mapping[str, Any]]) -> CollectorRegistry:
    """A registry of its own (not the process-global one) holding only unirg's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(read))
    return registry


def metrics_text(snapshot: Mapping[str, Any]) -> bytes:
    """The Prometheus text exposition of ``snapshot``."""
    return generate_latest(registry_for(lambda: snapshot))
