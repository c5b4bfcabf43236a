from __future__ import annotations

import uuid

import pytest

from proto import subjects
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
