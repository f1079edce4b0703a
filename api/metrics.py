"""`/metrics` in the Prometheus text format, computed at scrape time from the databases.

Every number is read from the durable records (message log, outbound queue, worklist,
projection positions, DICOM associations), not counted in process memory: the API may run as
several processes (and the listener and worker are others), and each scrape of any of them gives
the same, complete answer.

Latencies, from what the logs store:
- `radflow_hl7_inbound_ack_latency_seconds`: frame read (`received_at`) to the ACK written to
  the peer's socket (`acked_at`): what the sending system waits for.
- `radflow_hl7_inbound_apply_latency_seconds`: received to applied by the exam or patient
  (`applied_at`), which happens after the ACK, through the workflow.
- `radflow_hl7_outbound_ack_latency_seconds`: handed to the lane (`dispatched_at`) to the peer's
  accepting ACK recorded (`finished_at`), for delivered messages.

Only loopback callers are answered (`loopback_only`), like /healthz.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from adapters.sql import Database
from api.authz import loopback_only
from domain.provenance import instant

log = logging.getLogger("radflow.metrics")

# seconds; inbound apply is milliseconds when healthy and minutes when Temporal is down
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


def histogram(
    name: str, doc: str, samples: Iterable[float], buckets: tuple[float, ...] = LATENCY_BUCKETS
) -> Metric:
    counts = [0] * len(buckets)
    total, count = 0.0, 0
    for value in samples:
        count += 1
        total += value
        for i, bound in enumerate(buckets):
            if value <= bound:
                counts[i] += 1
    cumulative = [(repr(float(bound)), counts[i]) for i, bound in enumerate(buckets)]
    family = HistogramMetricFamily(name, doc)
    family.add_metric([], [*cumulative, ("+Inf", count)], total)
    return family


def _seconds_between(rows: Iterable[dict[str, Any]], start: str, end: str) -> Iterator[float]:
    for row in rows:
        try:
            yield max((instant(row[end]) - instant(row[start])).total_seconds(), 0.0)
        except (TypeError, ValueError):
            continue


class RadflowCollector(Collector):
    """Reads the databases at each scrape; a part whose table is missing (a process that never
    created it) is left out rather than failing the scrape."""

    def __init__(self, messages_db: Database, projections_db: Database, head: Callable[[], int]) -> None:
        self.messages_db = messages_db
        self.projections_db = projections_db
        self.head = head

    def collect(self) -> Iterator[Metric]:
        for part in (self._inbound, self._outbound, self._exams, self._projections, self._dicom, self._ops):
            try:
                yield from part()
            except Exception as error:  # one missing table must not hide the rest
                log.warning("metrics part failed", extra={"part": part.__name__, "error": str(error)[:200]})

    def _inbound(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "radflow_hl7_inbound_messages",
            "Inbound HL7 messages by type, ACK outcome (accepted, rejected, error, duplicate) and what "
            "the exam or patient made of them (applied, refused, duplicate, pending)",
            labels=["type", "status", "applied"],
        )
        for row in self.messages_db.query(
            "SELECT message_type, status, COALESCE(applied_status, '') AS applied, COUNT(*) AS n "
            "FROM hl7_messages GROUP BY message_type, status, COALESCE(applied_status, '')"
        ):
            applied = row["applied"] or ("pending" if row["status"] == "accepted" else "")
            family.add_metric([row["message_type"], row["status"], applied], int(row["n"]))
        yield family
        for end, name, doc in (
            ("acked_at", "ack", "Inbound HL7: frame received to the ACK written to the sender"),
            ("applied_at", "apply", "Inbound HL7: received to applied by the exam or patient"),
        ):
            rows = self.messages_db.query(
                f"SELECT received_at, {end} FROM hl7_messages WHERE {end} IS NOT NULL"
            )
            yield histogram(
                f"radflow_hl7_inbound_{name}_latency_seconds", doc, _seconds_between(rows, "received_at", end)
            )

    def _outbound(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "radflow_hl7_outbound_messages",
            "Outbound HL7 messages by type, destination and status (queued, delivered, dead, discarded)",
            labels=["type", "destination", "status"],
        )
        dead = GaugeMetricFamily(
            "radflow_hl7_dead_letters",
            "Outbound messages dead (awaiting retry or discard)",
            labels=["destination"],
        )
        for row in self.messages_db.query(
            "SELECT message_type, destination, status, COUNT(*) AS n FROM outbound_messages "
            "GROUP BY message_type, destination, status"
        ):
            family.add_metric([row["message_type"], row["destination"], row["status"]], int(row["n"]))
        for row in self.messages_db.query(
            "SELECT destination, COUNT(*) AS n FROM outbound_messages WHERE status = 'dead' GROUP BY destination"
        ):
            dead.add_metric([row["destination"]], int(row["n"]))
        yield family
        yield dead
        rows = self.messages_db.query(
            "SELECT dispatched_at, finished_at FROM outbound_messages "
            "WHERE status = 'delivered' AND dispatched_at IS NOT NULL AND finished_at IS NOT NULL"
        )
        yield histogram(
            "radflow_hl7_outbound_ack_latency_seconds",
            "Outbound HL7: handed to the destination's lane to the peer's accepting ACK",
            _seconds_between(rows, "dispatched_at", "finished_at"),
        )

    def _exams(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "radflow_exams", "Exams by lifecycle state (worklist projection)", labels=["state"]
        )
        for row in self.projections_db.query("SELECT state, COUNT(*) AS n FROM worklist GROUP BY state"):
            family.add_metric([row["state"]], int(row["n"]))
        yield family

    def _projections(self) -> Iterator[Metric]:
        head = self.head()
        lag = GaugeMetricFamily(
            "radflow_projection_lag_events",
            "Events stored but not yet applied, per projection",
            labels=["projection"],
        )
        position = GaugeMetricFamily(
            "radflow_projection_position",
            "Last notification id applied, per projection",
            labels=["projection"],
        )
        seen: set[str] = set()
        for db in (self.projections_db, self.messages_db):
            try:
                rows = db.query("SELECT name, position FROM projection_tracking")
            except Exception:  # not created in this database yet
                continue
            for row in rows:
                if row["name"] in seen:
                    continue
                seen.add(row["name"])
                lag.add_metric([row["name"]], max(head - int(row["position"]), 0))
                position.add_metric([row["name"]], int(row["position"]))
        yield lag
        yield position
        yield GaugeMetricFamily(
            "radflow_event_store_head", "Highest notification id in the event store", value=head
        )

    def _dicom(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "radflow_dicom_associations",
            "DICOM associations by calling AE and how they ended",
            labels=["calling_ae", "status"],
        )
        stored = CounterMetricFamily(
            "radflow_dicom_instances_stored",
            "Instances stored through DICOM associations",
            labels=["calling_ae"],
        )
        for row in self.messages_db.query(
            "SELECT calling_ae, status, COUNT(*) AS n, SUM(stored) AS stored FROM dicom_associations "
            "GROUP BY calling_ae, status"
        ):
            family.add_metric([row["calling_ae"], row["status"]], int(row["n"]))
        for row in self.messages_db.query(
            "SELECT calling_ae, SUM(stored) AS stored FROM dicom_associations GROUP BY calling_ae"
        ):
            stored.add_metric([row["calling_ae"]], int(row["stored"] or 0))
        yield family
        yield stored

    def _ops(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "radflow_ops_actions", "Operations actions by action and outcome", labels=["action", "outcome"]
        )
        for row in self.messages_db.query(
            "SELECT action, outcome, COUNT(*) AS n FROM ops_actions GROUP BY action, outcome"
        ):
            family.add_metric([row["action"], row["outcome"]], int(row["n"]))
        yield family


def metrics_router(collector: RadflowCollector) -> APIRouter:
    router = APIRouter(tags=["operations"])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)

    @router.get("/metrics", dependencies=[Depends(loopback_only)], response_class=Response)
    def metrics() -> Response:
        """Prometheus text format; answered on the loopback interface only."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router
