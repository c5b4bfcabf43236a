"""Prometheus metrics shared by every consumer (one process-wide registry, labelled by consumer)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
