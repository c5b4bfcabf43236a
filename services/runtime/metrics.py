"""Prometheus metrics shared by every consumer (one process-wide registry, labelled by consumer)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import structlog
from prometheus_client import Counter, Gauge, Histogram

log = structlog.get_logger(__name__)

MESSAGES_HANDLED = Counter(
    "cove_messages_handled_total", "Messages handled successfully", ["consumer", "type"]
)
MESSAGES_FAILED = Counter(
    "cove_messages_failed_total", "Handler failures (each nak counts)", ["consumer", "type"]
)
MESSAGES_DEAD_LETTERED = Counter(
    "cove_messages_dead_lettered_total", "Messages sent to the dead-letter stream", ["consumer", "reason"]
)
MESSAGES_DUPLICATE = Counter(
    "cove_messages_duplicate_total", "Redelivered events already applied (inbox hit)", ["consumer"]
)
HANDLER_SECONDS = Histogram("cove_handler_seconds", "Handler latency", ["consumer"])
HANDLER_DEADLINE_EXCEEDED = Counter(
    "cove_handler_deadline_exceeded_total", "Handlers (or batches) cancelled at their deadline", ["consumer"]
)
CONSUMER_LAG = Gauge("cove_consumer_lag", "Messages pending for the consumer at last delivery", ["consumer"])
CONSUMER_ACK_PENDING = Gauge(
    "cove_consumer_ack_pending", "Messages delivered to the consumer and not yet acknowledged", ["consumer"]
)


async def collect_consumer_lag(js: Any, consumers: Iterable[tuple[str, str]]) -> None:
    """Set ``cove_consumer_lag`` (``num_pending``: stored and not yet delivered) and ``cove_consumer_ack_pending``
    from each (stream, durable)'s consumer info, at scrape time: the gauge set on delivery stops moving when a
    consumer stops fetching, the consumer info does not."""
    for stream, durable in consumers:
        try:
            info = await js.consumer_info(stream, durable)
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail for one consumer; the last value stays
            log.debug("consumer_info_failed", consumer=durable, error=repr(exc))
            continue
        CONSUMER_LAG.labels(durable).set(info.num_pending or 0)
        CONSUMER_ACK_PENDING.labels(durable).set(info.num_ack_pending or 0)


# ------------------------------------------------------------------------------------------------ API

CLUSTERS_BY_STATUS = Gauge("cove_clusters", "Clusters in the API's read model, by status", ["status"])
SSE_CLIENTS = Gauge("cove_sse_clients", "Clients connected to GET /v1/events")
SSE_EVENTS_SENT = Counter("cove_sse_events_sent_total", "Events written to GET /v1/events clients")
SSE_DISCONNECTED_SLOW = Counter(
    "cove_sse_disconnected_slow_total", "GET /v1/events clients ended because their queue was full (they resume)"
)
AUDIT_PUBLISHED = Counter("cove_audit_events_total", "CADF audit records published", ["outcome"])
AUDIT_FAILED = Counter("cove_audit_publish_failures_total", "CADF audit records that could not be published")

# ------------------------------------------------------------------------------------------------ provisioner

BUILDS_IN_FLIGHT = Gauge(
    "cove_provisioner_builds_in_flight", "Clusters this provisioner is building (create path running)"
)
TIME_TO_CREATE_COMPLETE = Histogram(
    "cove_provisioner_time_to_create_complete_seconds",
    "From ClusterCreateRequested to ClusterCreateCompleted (the events' times)",
    buckets=(5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 450, 600, 900, 1200, 1800, 3600),
)
CLOUD_CALL_SECONDS = Histogram(
    "cove_cloud_call_seconds", "Provisioner cloud calls (openstacksdk, retries included)", ["service", "operation"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
CLOUD_CALL_ERRORS = Counter(
    "cove_cloud_call_errors_total", "Provisioner cloud calls that failed", ["service", "operation", "kind"]
)
