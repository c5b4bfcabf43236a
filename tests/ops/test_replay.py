"""`cove replay` rebuilds a store from the stream and swaps it in under a running projection; `cove verify`
finds a corruption and says where."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from nats.js.api import ConsumerInfo

from benchmarks.replay import lifecycles, publish_all
from deploy.local.nats import NatsServer
from proto import subjects
from proto.envelope import new_envelope
from proto.events import ClusterCreateRequested, ClusterTemplate
from tests.ops.conftest import Ops
from tests.ops.stores import live_api_store, snapshot, table_oid

pytestmark = pytest.mark.integration


async def read_all(reader: Any, size: int, after_batch: Callable[[list[int]], Awaitable[None]] | None = None) -> list[int]:
    """The stream sequences a ``StreamReader`` hands out in batches of ``size``, from its start to its end (then it
    is stopped); ``after_batch`` is told what came so far after each batch."""
    await reader.start()
    got: list[int] = []
    try:
        while batch := await reader.next_batch(size):
            got.extend(m.seq for m in batch)
            if after_batch is not None:
                await after_batch(got)
    finally:
        await reader.stop()
    return got


async def test_a_replay_of_a_store_built_from_100000_events_equals_the_original(ops: Ops) -> None:
    last = await publish_all(ops.bus, lifecycles(100_000))
    assert last == 100_000
    live = await live_api_store(ops.bus, ops.database_url)
    try:
        await live.wait_applied(last)
        before = await snapshot(ops.database_url, "api")
        assert sum(len(rows) for rows in before.values()) > 6_000  # clusters, nodegroups, the template
        oid = await table_oid(ops.database_url, "api.clusters")

        # The live projection keeps running while the store is rebuilt and swapped under it.
        code, out, err = await ops.cove("replay", "api", "-f", "json")
        assert code == 0, err
        report = json.loads(out)
        assert report["events_applied"] == 100_000 and report["to_seq"] == last
        assert await table_oid(ops.database_url, "api.clusters") != oid, "the store was swapped for a new one"
        assert await snapshot(ops.database_url, "api") == before
        conn = await asyncpg.connect(ops.database_url)
        try:
            schemas = {r[0] for r in await conn.fetch("SELECT nspname FROM pg_namespace")}
            assert "api_replay" not in schemas and "api_replaced" not in schemas
            assert await conn.fetchval("SELECT stream_seq FROM api.checkpoint WHERE consumer = 'api'") == last
        finally:
            await conn.close()

        # The running projection goes on applying new events into the swapped-in store.
        template = ClusterTemplate(uuid=str(uuid.uuid4()), name="t", project_id="p-new", user_id="u", image_id="i",
                                   created_at=before_time())
        cid = str(uuid.uuid4())
        req = ClusterCreateRequested(uuid=cid, name="after-swap", project_id="p-new", user_id="u", template=template)
        ack = await ops.bus.publish(subjects.cluster_events("api", cid),
                                    new_envelope(req, project_id="p-new", cluster_id=cid))
        await live.wait_applied(ack.seq, timeout=30)
        conn = await asyncpg.connect(ops.database_url)
        try:
            assert await conn.fetchval("SELECT name FROM api.clusters WHERE uuid = $1", cid) == "after-swap"
        finally:
            await conn.close()
    finally:
        await live.stop()


def before_time():
    from datetime import UTC, datetime

    return datetime(2026, 1, 1, tzinfo=UTC)


async def test_verify_exits_0_on_a_clean_store_and_1_with_the_row_an_update_corrupted(ops: Ops) -> None:
    stream = lifecycles(40_000)
    last = await publish_all(ops.bus, (next(stream) for _ in range(3_000)))
    live = await live_api_store(ops.bus, ops.database_url)
    stop = asyncio.Event()

    async def keep_publishing() -> int:
        for item in stream:
            last = await publish_all(ops.bus, iter([item]))
            if stop.is_set():
                break
        return last

    try:
        await live.wait_applied(last)
        # a running service (events keep coming and being applied) is not a difference
        publisher = asyncio.create_task(keep_publishing())
        code, out, err = await ops.cove("verify", "api", "-f", "json")
        assert not publisher.done()
        stop.set()
        last = await publisher
        assert code == 0, err + out[:3000]
        assert json.loads(out) == []
        assert "no difference" in err
        await live.wait_applied(last)

        conn = await asyncpg.connect(ops.database_url)
        try:
            row_id, victim = await conn.fetchrow("SELECT id, uuid FROM api.clusters ORDER BY id LIMIT 1")
            original = await conn.fetchval("SELECT name FROM api.clusters WHERE uuid = $1", victim)
            await conn.execute("UPDATE api.clusters SET name = 'corrupted' WHERE uuid = $1", victim)
        finally:
            await conn.close()
        code, out, err = await ops.cove("verify", "api", "-f", "json")
        assert code == 1, err
        diffs = json.loads(out)
        assert diffs == [{"table": "clusters", "key": f"id={row_id}", "column": "name",
                          "live": "corrupted", "replayed": original}]
        # nothing left behind, the live store untouched
        conn = await asyncpg.connect(ops.database_url)
        try:
            assert await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = 'api_verify'") == 0
            assert await conn.fetchval("SELECT name FROM api.clusters WHERE uuid = $1", victim) == "corrupted"
        finally:
            await conn.close()
    finally:
        await live.stop()


async def test_a_replay_swapped_in_while_events_keep_coming_loses_and_repeats_none(ops: Ops) -> None:
    """Events are published during the whole replay and swap; afterwards the swapped-in store, which the running
    projection went on writing, equals a reference store built from the same stream by a projection of its own."""
    stream = lifecycles(60_000)
    first = [next(stream) for _ in range(6_000)]
    await publish_all(ops.bus, iter(first))
    live = await live_api_store(ops.bus, ops.database_url)
    reference = await live_api_store(ops.bus, ops.database_url, schema="reference")
    stop = asyncio.Event()

    async def keep_publishing() -> int:
        last = 0
        for item in stream:
            last = await publish_all(ops.bus, iter([item]))
            if stop.is_set():
                break
        return last

    try:
        await live.wait_applied(6_000)
        publisher = asyncio.create_task(keep_publishing())
        code, out, err = await ops.cove("replay", "api", "-f", "json")
        assert code == 0, err
        assert not publisher.done(), "events were still coming when the swap happened"
        stop.set()
        last = await publisher
        report = json.loads(out)
        assert report["to_seq"] > 6_000
        assert report["events_applied"] == report["to_seq"]  # the API reads every event: each applied once
        await live.wait_applied(last, timeout=120)
        await reference.wait_applied(last, timeout=120)
        assert await snapshot(ops.database_url, "api") == await snapshot(ops.database_url, "reference")
    finally:
        stop.set()
        await live.stop()
        await reference.stop()


async def test_replay_from_a_sequence_starts_the_fresh_store_there(ops: Ops) -> None:
    published = list(lifecycles(40))
    await publish_all(ops.bus, iter(published))
    code, _, err = await ops.cove("replay", "accounting")
    assert code == 1 and "no store accounting in this database" in err
    live = await live_api_store(ops.bus, ops.database_url)
    try:
        await live.wait_applied(len(published))
        requests = [(seq, env) for seq, (_, env) in enumerate(published, start=1)
                    if env.type == "ClusterCreateRequested"]
        (_, first), (start, second) = requests[0], requests[2]  # both kept (every other cluster is deleted)
        other = await asyncpg.connect(ops.database_url)  # as another `cove replay api` would hold it
        try:
            assert await other.fetchval("SELECT pg_try_advisory_lock(hashtext('cove-ops:api_replay'))")
            code, _, err = await ops.cove("replay", "api")
            assert code == 1 and "another cove command is building api_replay" in err
        finally:
            await other.close()
        code, out, err = await ops.cove("replay", "api", "--from", str(start), "-f", "json")
        assert code == 0, err
        assert json.loads(out)["from_seq"] == start
        conn = await asyncpg.connect(ops.database_url)
        try:
            uuids = {r[0] for r in await conn.fetch("SELECT uuid FROM api.clusters")}
        finally:
            await conn.close()
        assert second.cluster_id in uuids and first.cluster_id not in uuids
    finally:
        await live.stop()


async def test_a_read_of_the_stream_tail_hands_out_every_event_of_it(ops: Ops) -> None:
    """A verify's catch-up under the lock reads the few events the live store applied since the replay: the server
    pushes them all before it answers the reader's question of what is pending (0 then), and none may be lost."""
    from services.ops.streamreader import StreamReader

    class BusyReader(StreamReader):
        """A process busy elsewhere: each message reaches the reader a little after the server sent it, and the
        server has sent them all by the time it answers what is pending."""

        async def _take(self, *args: Any) -> None:
            await asyncio.sleep(0.002)
            await super()._take(*args)

        async def _consumer_info(self) -> ConsumerInfo | None:
            await asyncio.sleep(0.05)
            return await super()._consumer_info()

    last = await publish_all(ops.bus, lifecycles(400))
    for start in range(last - 40, last + 1):
        got = await read_all(BusyReader(ops.bus, [subjects.EVENTS_ALL], start, last), 1_000)
        assert got == list(range(start, last + 1)), f"from {start}"


async def test_a_read_that_misses_a_delivery_starts_again_after_the_last_message_it_took(ops: Ops) -> None:
    """A delivery lost on the way (a reconnect, a slow connection) is seen by its gap in delivery sequences: the
    reader makes a new consumer from the message after the last one it took, and hands out each event once."""
    from services.ops.streamreader import StreamReader

    class LossyReader(StreamReader):
        """Loses the 150th and the 700th message delivered to it."""

        lost = seen = 0

        async def _take(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
            if data and sid == self._sid:
                self.seen += 1
                if self.seen in (150, 700):
                    self.lost += 1
                    return
            await super()._take(sid, subject, reply, data, headers)

    last = await publish_all(ops.bus, lifecycles(1_500))
    reader = LossyReader(ops.bus, [subjects.EVENTS_ALL], 1, last)
    got = await read_all(reader, 100)
    assert reader.lost == 2 and reader.resets == 2
    assert got == list(range(1, last + 1))


async def test_a_slow_reader_holds_the_server_back_and_loses_nothing(
    ops: Ops, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past its bound the reader answers the server's flow-control requests only once its caller has taken half of
    what waits: a caller slower than the stream still gets every event, in order, from one consumer."""
    from services.ops import streamreader

    monkeypatch.setattr(streamreader, "BUFFER", 50)
    last = await publish_all(ops.bus, lifecycles(3_000))
    reader = streamreader.StreamReader(ops.bus, [subjects.EVENTS_ALL], 1, last)
    held = 0

    async def slowly(_got: list[int]) -> None:
        nonlocal held
        held += reader._held_flow is not None
        await asyncio.sleep(0.001)

    got = await read_all(reader, 20, slowly)
    assert got == list(range(1, last + 1))
    assert held > 0 and reader.resets == 0


async def test_a_read_goes_on_after_its_server_restarted_without_its_consumer(
    ops: Ops, private_nats: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server restarts in the middle of a read and loses the reader's consumer (kept in memory): once the server
    has been quiet for ``QUIET_CHECK`` the reader asks for its consumer, finds none, and reads on from the message
    after the last one it took. Every event comes once, in order. (The server pushes several thousand messages ahead
    of a reader before it waits for flow control: the stream is longer than that.)"""
    from services.ops import streamreader

    monkeypatch.setattr(streamreader, "BUFFER", 50)
    monkeypatch.setattr(streamreader, "QUIET_CHECK", 1.0)
    last = await publish_all(ops.bus, lifecycles(12_000))
    reader = streamreader.StreamReader(ops.bus, [subjects.EVENTS_ALL], 1, last)
    restarted = False

    async def restart_once(got: list[int]) -> None:
        nonlocal restarted
        if not restarted and len(got) >= 300:
            await asyncio.to_thread(private_nats.restart)
            restarted = True

    got = await read_all(reader, 20, restart_once)
    assert got == list(range(1, last + 1))
    assert restarted and reader.resets >= 1


async def test_a_replay_applies_an_event_the_stream_holds_twice_once(
    ops: Ops, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replay tells a duplicate (an event published again after JetStream's deduplication window, under a
    Nats-Msg-Id of its own) without asking PostgreSQL (``ReplayProjection.seen``): next to its first copy in the same
    batch, a batch later, and in a later run (a swap's catch-up). Each event is applied once and its id is in the
    scratch inbox once, as the live projection's inbox claim would have it."""
    from services.ops import replay
    from services.ops.connect import Settings
    from services.ops.targets import ProjectionSpec, Target

    monkeypatch.setattr(replay, "BATCH", BATCH := 1000)  # (a stream of a few batches, published one by one)

    async def count(env, tx) -> None:
        await tx.execute("INSERT INTO applied (event_id) VALUES ($1)", env.id)

    (tmp_path / "0001_init.sql").write_text("CREATE TABLE applied (event_id text NOT NULL);\n")
    target = Target(service="counting", schema="counting", migrations_dir=tmp_path,
                    projections=[ProjectionSpec("counting", count, [subjects.EVENTS_ALL], None)])
    events = list(lifecycles(2 * BATCH + 500))
    again = {1: 0, BATCH + 10: 5, 2 * BATCH + 400: 7}
    """Where a copy goes (index in the stream) -> the index of the event it repeats."""
    sent = 0
    for i, (subject, env) in enumerate(events):
        ack = await ops.bus.publish(subject, env)
        sent = ack.seq
        if i in again:
            copy_subject, copy = events[again[i]]
            sent = (await ops.bus.publish(copy_subject, copy, msg_id=f"again-{copy.id}")).seq
    assert sent == len(events) + len(again)
    replayer = replay.Replayer(ops.bus, Settings(nats_url=ops.nats_url, database_url=ops.database_url), target)
    await replayer.prepare()
    try:
        first = await replayer.run(until=BATCH + 300)  # the first pass, then what came since (a catch-up)
        rest = await replayer.run(until=sent)
        assert first.read + rest.read == sent
        assert first.skipped == [] and rest.skipped == []  # no copy failed its batch (e.g. on the inbox's key)
        conn = await asyncpg.connect(ops.database_url)
        try:
            applied = [r[0] for r in await conn.fetch("SELECT event_id FROM counting_replay.applied")]
            inbox = [r[0] for r in await conn.fetch("SELECT event_id FROM counting_replay.inbox")]
            checkpoint = await conn.fetchval("SELECT stream_seq FROM counting_replay.checkpoint")
        finally:
            await conn.close()
        assert sorted(applied) == sorted(env.id for _, env in events)  # every event once, the copies not
        assert sorted(inbox) == sorted(applied)
        assert checkpoint == sent
    finally:
        await replayer.close()
