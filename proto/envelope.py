"""The envelope every event travels in: identity, causality, tracing, and the typed payload."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import msgspec
from opentelemetry import propagate

from proto.events import Event, event_type

SCHEMA_VERSION = 1
"""Envelope schema version written by this code. Readers accept any version (additive evolution)."""


class MalformedMessage(Exception):
    """Raised for any bytes that do not decode into a valid message (bad JSON, unknown type, wrong field)."""


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    type: str
    schema_version: int
    occurred_at: datetime
    project_id: str | None
    cluster_id: str | None
    correlation_id: str
    causation_id: str | None = None
    trace: dict[str, str] = msgspec.field(default_factory=dict)
    """W3C trace context (``traceparent``/``tracestate``) of the producer when it emitted the event."""
    payload: Event


def new_envelope(
    payload: Event,
    *,
    project_id: str | None,
    cluster_id: str | None,
    correlation_id: str | None = None,
    causation: Envelope | None = None,
    id: str | None = None,
    trace: dict[str, str] | None = None,
    occurred_at: datetime | None = None,
) -> Envelope:
    """Wrap ``payload``. Correlation is inherited from ``causation`` unless given; a fresh chain otherwise."""
    env_id = id or str(uuid.uuid4())
    if correlation_id is None:
        correlation_id = causation.correlation_id if causation is not None else env_id
    if trace is None:
        trace = {}
        propagate.inject(trace)
    return Envelope(
        id=env_id,
        type=event_type(payload),
        schema_version=SCHEMA_VERSION,
        occurred_at=occurred_at or datetime.now(UTC),
        project_id=project_id,
        cluster_id=cluster_id,
        correlation_id=correlation_id,
        causation_id=causation.id if causation is not None else None,
        trace=trace,
        payload=payload,
    )


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Envelope)


def encode(env: Envelope) -> bytes:
    return _encoder.encode(env)


def decode(data: bytes) -> Envelope:
    """Decode and validate; any failure is one ``MalformedMessage``."""
    try:
        env = _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, TypeError, ValueError) as exc:
        raise MalformedMessage(str(exc)) from exc
    if env.type != event_type(env.payload):
        raise MalformedMessage(
            f"envelope type {env.type!r} does not match payload type {event_type(env.payload)!r}"
        )
    return env
