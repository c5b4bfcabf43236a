"""JetStream stream and consumer settings, in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RePublish,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from proto import subjects

DUPLICATE_WINDOW_S = 120.0
HEARTBEAT_MAX_AGE_S = 60.0


def replicas() -> int:
    return int(os.environ.get("COVE_STREAM_REPLICAS", "1"))


def events_stream() -> StreamConfig:
    """The event log: kept forever (replay rebuilds stores), deduplicated on ``Nats-Msg-Id``. The scheduler's
    decisions are re-announced, headers only, the moment they are stored (``subjects.stored_decisions``): a cluster
    create answers on them instead of waiting for the API's projection to apply them (services/api/decisions.py)."""
    return StreamConfig(
        name=subjects.EVENTS_STREAM,
        description="Cove domain events (the source of truth for every projection)",
        subjects=[subjects.EVENTS_ALL],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        num_replicas=replicas(),
        duplicate_window=DUPLICATE_WINDOW_S,
        republish=RePublish(
            src=subjects.decisions_source(),
            dest=subjects.stored_decisions_destination(),
            headers_only=True,
        ),
    )


def dlq_stream() -> StreamConfig:
    return StreamConfig(
        name=subjects.DLQ_STREAM,
        description="Messages a consumer could not decode or handle, with the reason in headers",
        subjects=[subjects.DLQ_ALL],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=replicas(),
        duplicate_window=DUPLICATE_WINDOW_S,
        max_age=30 * 24 * 3600.0,
    )


def heartbeats_stream() -> StreamConfig:
    """Last heartbeat per service only, expiring quickly: a service that stops vanishes."""
    return StreamConfig(
        name=subjects.HEARTBEATS_STREAM,
        description="Latest ServiceHeartbeat per service",
        subjects=[subjects.HEARTBEATS_ALL],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=replicas(),
        max_msgs_per_subject=1,
        max_age=HEARTBEAT_MAX_AGE_S,
        allow_direct=True,
    )


def advisories_stream() -> StreamConfig:
    """The server's MAX_DELIVERIES advisories, kept: a message dropped while every replica of its consumer was down
    is still dead-lettered when one comes back (core NATS advisories reach only those listening)."""
    return StreamConfig(
        name=subjects.ADVISORIES_STREAM,
        description="JetStream MAX_DELIVERIES advisories (messages the server dropped after ack timeouts)",
        subjects=[subjects.MAX_DELIVERIES_ALL],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=replicas(),
        max_age=7 * 24 * 3600.0,
        max_msgs=100_000,
    )


def audit_stream() -> StreamConfig:
    """CADF audit records of the API's writes (``proto/audit.py``), kept a year; no Cove service consumes them."""
    return StreamConfig(
        name=subjects.AUDIT_STREAM,
        description="CADF audit events of API writes (cove.audit.api)",
        subjects=[subjects.AUDIT_ALL],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=replicas(),
        duplicate_window=DUPLICATE_WINDOW_S,
        max_age=365 * 24 * 3600.0,
    )


def all_streams() -> list[StreamConfig]:
    return [events_stream(), dlq_stream(), heartbeats_stream(), advisories_stream(), audit_stream()]


def dropped_consumer_config(durable: str, stream: str, ack_wait: float = 30.0) -> ConsumerConfig:
    """The durable push consumer (a queue group: one replica per advisory) through which the consumer ``durable``
    learns of the messages the server dropped from it. It starts at creation time: the events consumer it watches
    is created after it, so nothing can have been dropped before."""
    name = f"{durable}_dropped"
    return ConsumerConfig(
        durable_name=name,
        deliver_subject=f"{subjects.DROPPED_DELIVER_PREFIX}.{stream}.{durable}",
        deliver_group=name,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.NEW,
        ack_wait=ack_wait,
        max_deliver=-1,
        filter_subject=subjects.max_deliveries_subject(stream, durable),
    )


@dataclass(frozen=True)
class ConsumerSettings:
    """Delivery settings for a durable pull consumer.

    ``ack_wait`` is how long every delivery may stay unacknowledged before the server hands the message out again
    (the holder is taken as dead). ``backoff`` is the consumer's ``nak`` delay after a handler error (delivery n
    waits ``backoff[min(n-1, len-1)]``); it is NOT given to the server, whose BackOff would replace ``ack_wait``
    (the first delivery's ack wait becomes BackOff[0]: with (1, 5, ...) a message still queued behind a batch after
    one second would be delivered again). After ``max_deliver`` deliveries the message is dead-lettered.
    """

    ack_wait: float = 30.0
    max_deliver: int = 5
    backoff: tuple[float, ...] = (1.0, 5.0, 15.0, 30.0)
    max_ack_pending: int = 256
    fetch_batch: int = 32
    fetch_timeout: float = 1.0
    handler_deadline: float | None = None
    """Seconds a handler (or a batch) may run before it is cancelled and counted as a failure: nak with backoff,
    dead letter after ``max_deliver``. A handler stuck on a dead connection must not hold its message past
    ``ack_wait``, when the server hands it to another replica while this one still sits on it. None: 0.8 x
    ``ack_wait``; ``math.inf``: no deadline."""
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def deadline(self) -> float:
        return self.handler_deadline if self.handler_deadline is not None else 0.8 * self.ack_wait

    def nak_delay(self, num_delivered: int) -> float:
        if not self.backoff:
            return 0.0
        return self.backoff[min(max(num_delivered, 1) - 1, len(self.backoff) - 1)]

    def consumer_config(
        self,
        durable: str,
        filter_subjects: list[str],
        *,
        start_seq: int | None = None,
    ) -> ConsumerConfig:
        if start_seq is not None and start_seq > 1:
            policy, opt = DeliverPolicy.BY_START_SEQUENCE, start_seq
        else:
            policy, opt = DeliverPolicy.ALL, None
        cfg = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=policy,
            opt_start_seq=opt,
            ack_wait=self.ack_wait,
            max_deliver=self.max_deliver,
            max_ack_pending=self.max_ack_pending,
        )
        if len(filter_subjects) == 1:
            cfg.filter_subject = filter_subjects[0]
        else:
            cfg.filter_subjects = list(filter_subjects)
        return cfg


DEFAULT_CONSUMER = ConsumerSettings()
PROVISIONER_CONSUMER = ConsumerSettings(ack_wait=10.0)
"""The provisioner's projection: its reconcile tasks wait for the store to apply their own events, and after a
crash the events the dead process held come back only after ``ack_wait``; its handlers are a statement or two per
event, so 10 s (a deadline of 8 s a batch) is ample and a restart holds clusters back for 10 s, not 30."""


LEASE_TTL_S = float(os.environ.get("COVE_LEASE_TTL", "3"))
"""Seconds a lease lives after its last renewal (the bucket's max age): how long a dead holder's work waits."""


def leases_bucket() -> KeyValueConfig:
    """``COVE_LEASES``: one revision per key (a renewal replaces the last), every value gone ``LEASE_TTL_S`` after
    it was written unless renewed; replicated like the streams (a lease must survive the loss of a NATS node)."""
    return KeyValueConfig(
        bucket=subjects.LEASES_BUCKET, description="Cove leases (services/runtime/lease.py)", history=1,
        ttl=LEASE_TTL_S, storage=StorageType.FILE, replicas=replicas(), direct=False,
    )
