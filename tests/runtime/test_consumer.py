from __future__ import annotations

import asyncio
import json
import math
import uuid

import pytest
from nats.aio.msg import Msg

from proto import subjects
from proto.envelope import Envelope, decode, new_envelope
from proto.events import ClusterRejected
from proto.streams import ConsumerSettings
from services.runtime import consumer as cmod
from services.runtime.bus import Bus
from services.runtime.consumer import Consumer
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

FAST = ConsumerSettings(ack_wait=5, max_deliver=3, backoff=(0.1, 0.2), fetch_timeout=0.2)


def _event(cluster: str, reason: str = "quota") -> Envelope:
    return new_envelope(
        ClusterRejected(uuid=cluster, project_id="p", reason=reason), project_id="p", cluster_id=cluster
    )


async def _dlq_last(bus: Bus, durable: str) -> object:
    try:
        return await bus.js.get_last_msg(subjects.DLQ_STREAM, subjects.dlq_subject(durable))
    except Exception:  # noqa: BLE001 - not there yet
        return None


async def test_malformed_message_goes_to_dlq_and_consumer_carries_on(bus: Bus) -> None:
    producer = f"t{uuid.uuid4().hex[:8]}"
    durable = f"c_{producer}"
    seen: list[str] = []

    async def handler(env: Envelope, msg: Msg) -> None:
        seen.append(env.id)

    c = Consumer(
        bus, durable=durable, filter_subjects=[f"cove.evt.{producer}.>"], handler=handler, settings=FAST
    )
    await c.start()
    try:
        cluster = str(uuid.uuid4())
        subject = subjects.cluster_events(producer, cluster)
        bad = await bus.publish_raw(subject, b'{"not": "an envelope"}', {"X-Origin": "test"})
        good = _event(cluster)
        await bus.publish(subject, good)
        await wait_for(lambda: good.id in seen)
        dead = await wait_for(lambda: _dlq_last(bus, durable))
        assert dead.data == b'{"not": "an envelope"}'  # type: ignore[attr-defined]
        headers = dead.headers  # type: ignore[attr-defined]
        assert headers[cmod.DLQ_REASON].startswith("malformed:")
        assert headers[cmod.DLQ_STREAM_SEQ] == str(bad.seq)
        assert headers[cmod.DLQ_SUBJECT] == subject
        assert headers["X-Origin"] == "test"
        assert seen == [good.id]
    finally:
        await c.stop()


async def test_handler_failing_until_max_deliver_is_dead_lettered(bus: Bus) -> None:
    producer = f"t{uuid.uuid4().hex[:8]}"
    durable = f"c_{producer}"
    attempts: dict[str, int] = {}
    done: list[str] = []

    async def handler(env: Envelope, msg: Msg) -> None:
        attempts[env.id] = attempts.get(env.id, 0) + 1
        if env.payload.reason == "poison":  # type: ignore[union-attr]
            raise RuntimeError("cannot handle this one")
        done.append(env.id)

    c = Consumer(
        bus, durable=durable, filter_subjects=[f"cove.evt.{producer}.>"], handler=handler, settings=FAST
    )
    await c.start()
    try:
        cluster = str(uuid.uuid4())
        subject = subjects.cluster_events(producer, cluster)
        poison, fine = _event(cluster, "poison"), _event(cluster, "fine")
        await bus.publish(subject, poison)
        await bus.publish(subject, fine)
        dead = await wait_for(lambda: _dlq_last(bus, durable))
        assert attempts[poison.id] == FAST.max_deliver
        headers = dead.headers  # type: ignore[attr-defined]
        assert "cannot handle this one" in headers[cmod.DLQ_REASON]
        assert headers[cmod.DLQ_DELIVERIES] == str(FAST.max_deliver)
        await wait_for(lambda: fine.id in done)
        # The poison message is settled: no further deliveries.
        info = await bus.js.consumer_info(subjects.EVENTS_STREAM, durable)
        await wait_for(lambda: _ack_pending_zero(bus, durable))
        assert info.num_pending == 0
        assert attempts[poison.id] == FAST.max_deliver
    finally:
        await c.stop()


async def test_a_handler_past_its_deadline_is_cancelled_retried_and_dead_lettered(bus: Bus) -> None:
    """A handler stuck (say, on a dead connection) is cancelled at its deadline, well before ack_wait would hand the
    message to another replica: retried with backoff, dead-lettered after max_deliver, and the next message flows."""
    producer = f"t{uuid.uuid4().hex[:8]}"
    durable = f"c_{producer}"
    attempts: dict[str, int] = {}
    cancelled: list[str] = []
    done: list[str] = []

    async def handler(env: Envelope, msg: Msg) -> None:
        attempts[env.id] = attempts.get(env.id, 0) + 1
        if env.payload.reason == "stuck":  # type: ignore[union-attr]
            try:
                await asyncio.Event().wait()  # never set
            except asyncio.CancelledError:
                cancelled.append(env.id)
                raise
        done.append(env.id)

    settings = ConsumerSettings(ack_wait=30, max_deliver=2, backoff=(0.05,), fetch_timeout=0.2, handler_deadline=0.3)
    c = Consumer(bus, durable=durable, filter_subjects=[f"cove.evt.{producer}.>"], handler=handler, settings=settings)
    await c.start()
    try:
        cluster = str(uuid.uuid4())
        subject = subjects.cluster_events(producer, cluster)
        stuck, fine = _event(cluster, "stuck"), _event(cluster, "fine")
        await bus.publish(subject, stuck)
        await bus.publish(subject, fine)
        dead = await wait_for(lambda: _dlq_last(bus, durable), timeout=10)  # far less than ack_wait (30 s)
        headers = dead.headers  # type: ignore[attr-defined]
        assert "HandlerDeadlineExceeded" in headers[cmod.DLQ_REASON], headers
        assert attempts[stuck.id] == 2 and cancelled == [stuck.id, stuck.id]
        await wait_for(lambda: fine.id in done)
    finally:
        await c.stop()


async def _ack_pending_zero(bus: Bus, durable: str) -> bool:
    info = await bus.js.consumer_info(subjects.EVENTS_STREAM, durable)
    return info.num_ack_pending == 0


async def test_consumer_continues_the_producers_trace(bus: Bus) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from services.runtime import tracing

    exporter = InMemorySpanExporter()
    tracing.setup_tracing("test", span_exporter=exporter)
    producer = f"t{uuid.uuid4().hex[:8]}"
    seen: list[tuple[str | None, dict[str, object]]] = []

    async def handler(env: Envelope, msg: Msg) -> None:
        import structlog

        seen.append((tracing.current_ids()[0], structlog.contextvars.get_contextvars()))

    c = Consumer(
        bus,
        durable=f"c_{producer}",
        filter_subjects=[f"cove.evt.{producer}.>"],
        handler=handler,
        settings=FAST,
    )
    await c.start()
    try:
        cluster = str(uuid.uuid4())
        with tracing.tracer("test").start_as_current_span("api request") as span:
            trace_id = format(span.get_span_context().trace_id, "032x")
            env = _event(cluster)
            await bus.publish(subjects.cluster_events(producer, cluster), env)
        await wait_for(lambda: seen)
        handled_trace, ctx = seen[0]
        assert handled_trace == trace_id
        assert ctx["event_id"] == env.id and ctx["cluster_id"] == cluster and ctx["trace_id"] == trace_id
        assert env.trace["traceparent"].split("-")[1] == trace_id
        await wait_for(
            lambda: any(s.name == "consume ClusterRejected" for s in exporter.get_finished_spans())
        )
    finally:
        await c.stop()


# A process hung beyond cancellation (blocked outside the event loop): only ack timeouts can count its deliveries.
HANGS = ConsumerSettings(ack_wait=0.5, max_deliver=2, backoff=(), fetch_batch=1, fetch_timeout=0.1,
                         handler_deadline=math.inf)
"""Tiny ack_wait, two deliveries, one message per fetch (so a hung replica holds only the message it hangs on)."""


async def dlq_count(bus: Bus, durable: str) -> int:
    subject = subjects.dlq_subject(durable)
    info = await bus.js.stream_info(subjects.DLQ_STREAM, subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)


async def test_message_dropped_after_ack_timeouts_is_dead_lettered_once(bus: Bus) -> None:
    """Three replicas of one durable; the handler hangs on the poison message every time it gets it, so only ack
    timeouts use up max_deliver and the server drops it. One replica acts on the (stored) advisory; one dead
    letter, however often the advisory comes."""
    from prometheus_client import REGISTRY

    producer = f"t{uuid.uuid4().hex[:8]}"
    durable = f"c_{producer}"
    release = asyncio.Event()
    hung: list[int] = []
    done: list[str] = []

    async def handler(env: Envelope, msg: Msg) -> None:
        if env.payload.reason == "poison":  # type: ignore[union-attr]
            hung.append(msg.metadata.num_delivered)
            await release.wait()  # never settles in time: a hung or crashed process
            return
        done.append(env.id)

    replicas = [
        Consumer(
            bus, durable=durable, filter_subjects=[f"cove.evt.{producer}.>"], handler=handler, settings=HANGS
        )
        for _ in range(3)
    ]
    for c in replicas:
        await c.start()
    try:
        cluster = str(uuid.uuid4())
        subject = subjects.cluster_events(producer, cluster)
        poison, first = _event(cluster, "poison"), _event(cluster, "fine")
        poison_seq = (await bus.publish(subject, poison)).seq
        await bus.publish(subject, first)

        await wait_for(lambda: dlq_count(bus, durable), timeout=10)
        dead = await bus.js.get_last_msg(subjects.DLQ_STREAM, subjects.dlq_subject(durable))
        headers = dead.headers or {}
        assert headers[cmod.DLQ_REASON] == cmod.ACK_TIMEOUT_REASON == "max deliveries exceeded (ack timeouts)"
        assert headers[cmod.DLQ_STREAM_SEQ] == str(poison_seq)
        assert headers[cmod.DLQ_SUBJECT] == subject
        assert headers[cmod.DLQ_DELIVERIES] == str(HANGS.max_deliver)
        assert headers[cmod.DLQ_CONSUMER] == durable
        assert headers["Cove-Event-Type"] == "ClusterRejected"  # the original headers are kept
        assert headers["Nats-Msg-Id"] == cmod.dlq_msg_id(durable, subjects.EVENTS_STREAM, poison_seq)
        assert decode(dead.data or b"").id == poison.id
        assert sorted(hung) == [1, 2]  # delivered max_deliver times, each timing out

        # One replica of the queue group got the advisory.
        await wait_for(lambda: sum(c.advisories_handled for c in replicas) == 1)
        # The same advisory again (as if redelivered) adds nothing either.
        advisory = {
            "type": "io.nats.jetstream.advisory.v1.max_deliver",
            "stream": subjects.EVENTS_STREAM,
            "consumer": durable,
            "stream_seq": poison_seq,
            "deliveries": HANGS.max_deliver,
        }
        await bus.nc.publish(
            subjects.max_deliveries_subject(subjects.EVENTS_STREAM, durable), json.dumps(advisory).encode()
        )
        await wait_for(lambda: sum(c.advisories_handled for c in replicas) == 2)
        assert await dlq_count(bus, durable) == 1
        sample = REGISTRY.get_sample_value(
            "cove_messages_dead_lettered_total", {"consumer": durable, "reason": "ack_timeouts"}
        )
        assert sample == 1.0

        # The consumer carries on: the message after the poison, and one published now, are handled.
        later = _event(cluster, "later")
        await bus.publish(subject, later)
        await wait_for(lambda: first.id in done and later.id in done)
        await wait_for(lambda: _ack_pending_zero(bus, durable))
        assert sorted(hung) == [1, 2]
    finally:
        release.set()
        for c in replicas:
            await c.stop(timeout=5)
    assert await dlq_count(bus, durable) == 1  # the hung handlers finishing late changes nothing


async def test_a_drop_while_every_replica_is_down_is_dead_lettered_when_one_comes_back(bus: Bus) -> None:
    """Both replicas hang on the poison message and die; the server drops it (at the next pull after its last ack
    timeout: here one a dying replica left behind) with nobody listening. The advisory is kept (COVE_ADVISORIES),
    so the replica started later dead-letters it; a core-NATS advisory would have been lost."""
    producer = f"t{uuid.uuid4().hex[:8]}"
    durable = f"c_{producer}"
    hung: list[int] = []
    done: list[str] = []

    async def handler(env: Envelope, msg: Msg) -> None:
        if env.payload.reason == "poison":  # type: ignore[union-attr]
            hung.append(msg.metadata.num_delivered)
            await asyncio.Event().wait()  # hangs until the process dies
        done.append(env.id)

    def replica() -> Consumer:
        return Consumer(bus, durable=durable, filter_subjects=[f"cove.evt.{producer}.>"], handler=handler,
                        settings=HANGS)

    down = [replica(), replica()]
    for c in down:
        await c.start()
    cluster = str(uuid.uuid4())
    subject = subjects.cluster_events(producer, cluster)
    poison_seq = (await bus.publish(subject, _event(cluster, "poison"))).seq
    await wait_for(lambda: sorted(hung) == [1, 2], timeout=10)
    for c in down:  # both die holding it (well within the 0.5 s ack_wait of the second delivery)
        await c.stop(timeout=0.01)
    # The server acts on an expired ack wait when someone pulls: here pull requests from a replica that died right
    # after sending them (no_wait: each is answered at once and none lingers to take later messages).
    async def pulled_and_dropped() -> bool:
        await bus.nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{subjects.EVENTS_STREAM}.{durable}",
                             json.dumps({"batch": 1, "no_wait": True}).encode(), reply=bus.nc.new_inbox())
        return await _dropped_advisory_stored(bus, durable)

    await wait_for(pulled_and_dropped, timeout=10)
    assert await dlq_count(bus, durable) == 0  # nobody was listening when it was dropped

    back = replica()
    await back.start()
    try:
        await wait_for(lambda: dlq_count(bus, durable), timeout=10)
        dead = await bus.js.get_last_msg(subjects.DLQ_STREAM, subjects.dlq_subject(durable))
        headers = dead.headers or {}
        assert headers[cmod.DLQ_REASON] == cmod.ACK_TIMEOUT_REASON
        assert headers[cmod.DLQ_STREAM_SEQ] == str(poison_seq)
        assert back.advisories_handled == 1
        later = _event(cluster, "later")
        await bus.publish(subject, later)
        await wait_for(lambda: later.id in done)
    finally:
        await back.stop()
    assert await dlq_count(bus, durable) == 1


async def _dropped_advisory_stored(bus: Bus, durable: str) -> bool:
    try:
        await bus.js.get_last_msg(subjects.ADVISORIES_STREAM,
                                  subjects.max_deliveries_subject(subjects.EVENTS_STREAM, durable))
    except Exception:  # noqa: BLE001 - not there yet
        return False
    return True
