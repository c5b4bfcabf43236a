from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest
from nats.aio.msg import Msg

from deploy.local.nats import NatsServer
from proto import streams, subjects
from proto.envelope import Envelope, decode, new_envelope
from proto.events import ClusterRejected
from services.runtime.bus import Bus, ConcurrencyConflict

pytestmark = pytest.mark.integration


def _env(cluster: str) -> Envelope:
    return new_envelope(
        ClusterRejected(uuid=cluster, project_id="p", reason="quota"), project_id="p", cluster_id=cluster
    )


async def test_publish_is_deduplicated_by_msg_id(bus: Bus) -> None:
    cluster = str(uuid.uuid4())
    subject = subjects.cluster_events("scheduler", cluster)
    env = _env(cluster)
    first = await bus.publish(subject, env)
    again = await bus.publish(subject, env)
    assert not first.duplicate
    assert again.duplicate and again.seq == first.seq
    other = await bus.publish(subject, _env(cluster))
    assert not other.duplicate and other.seq > first.seq
    # Explicit msg id overrides the envelope id.
    a = await bus.publish(subject, _env(cluster), msg_id=f"fixed-{cluster}")
    b = await bus.publish(subject, _env(cluster), msg_id=f"fixed-{cluster}")
    assert b.duplicate and a.seq == b.seq
    msg = await bus.js.get_last_msg(subjects.EVENTS_STREAM, subject)
    assert decode(msg.data).cluster_id == cluster


async def test_expected_last_subject_sequence(bus: Bus) -> None:
    cluster = str(uuid.uuid4())
    subject = subjects.cluster_events("provisioner", cluster)
    first = await bus.publish(subject, _env(cluster), expected_last_subject_seq=0)
    second = await bus.publish(subject, _env(cluster), expected_last_subject_seq=first.seq)
    with pytest.raises(ConcurrencyConflict) as err:
        await bus.publish(subject, _env(cluster), expected_last_subject_seq=first.seq)
    assert err.value.subject == subject and err.value.expected == first.seq
    with pytest.raises(ConcurrencyConflict):
        await bus.publish(subject, _env(cluster), expected_last_subject_seq=0)
    assert second.seq > first.seq


async def test_ensure_streams_is_idempotent(bus: Bus) -> None:
    await bus.ensure_streams()
    info = await bus.js.stream_info(subjects.EVENTS_STREAM)
    assert info.config.duplicate_window == 120
    hb = await bus.js.stream_info(subjects.HEARTBEATS_STREAM)
    assert hb.config.max_msgs_per_subject == 1


async def test_the_events_stream_re_announces_each_stored_decision(bus: Bus) -> None:
    """Headers only, once stored, with the stream sequence: what a cluster create answers on (services/api/
    decisions.py). Other producers' events and a deduplicated publish are not re-announced."""
    heard: asyncio.Queue[Msg] = asyncio.Queue()
    sub = await bus.nc.subscribe(subjects.stored_decisions(), cb=heard.put)
    try:
        cluster = str(uuid.uuid4())
        await bus.publish(subjects.cluster_events("api", cluster), _env(cluster))
        env = _env(cluster)
        ack = await bus.publish(subjects.cluster_events("scheduler", cluster), env)
        again = await bus.publish(subjects.cluster_events("scheduler", cluster), env)
        assert again.duplicate
        msg = await asyncio.wait_for(heard.get(), 5)
        assert msg.subject == f"cove.stored.scheduler.cluster.{cluster}"
        assert msg.data == b""
        assert msg.headers is not None
        assert msg.headers["Cove-Event-Type"] == "ClusterRejected"
        assert int(msg.headers["Nats-Sequence"]) == ack.seq
        # The stream re-announces in the order it stores: a decision stored after them comes next if neither the
        # api event nor the duplicate was re-announced.
        later = str(uuid.uuid4())
        await bus.publish(subjects.cluster_events("scheduler", later), _env(later))
        after = await asyncio.wait_for(heard.get(), 5)
        assert after.subject == f"cove.stored.scheduler.cluster.{later}", "the api event and the duplicate are not"
    finally:
        await sub.unsubscribe()


async def test_ensure_streams_adds_the_re_announcing_to_an_existing_stream(
    make_nats_server: Callable[..., NatsServer],
) -> None:
    """A deployment whose events stream predates the re-announcing gets it on the next start."""
    server = make_nats_server()
    b = await Bus.connect(server.url, name="test-upgrade")
    try:
        older = streams.events_stream()
        older.republish = None
        await b.js.add_stream(older)
        await b.ensure_streams()
        info = await b.js.stream_info(subjects.EVENTS_STREAM)
        assert info.config.republish is not None
        assert info.config.republish.src == subjects.decisions_source()
        assert info.config.republish.headers_only
    finally:
        await b.close()
