from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import asyncpg
import pytest
from nats.aio.msg import Msg

from proto import subjects
from proto.envelope import Envelope, new_envelope
from proto.events import ClusterCreateFailed, ClusterRejected
from proto.streams import ConsumerSettings
from services.runtime import consumer as cmod
from services.runtime import db
from services.runtime import projection as pmod
from services.runtime.bus import Bus
from services.runtime.projection import Outgoing, Projection, ProjectionHandler
from tests.conftest import stream_events, wait_for
from tests.runtime.test_consumer import dlq_count

pytestmark = pytest.mark.integration

MIGRATIONS = Path(__file__).parent / "migrations"
FAST = ConsumerSettings(ack_wait=5, max_deliver=5, backoff=(0.1, 0.2), fetch_timeout=0.2)


class Fixture:
    def __init__(self, pool: asyncpg.Pool, bus: Bus, schema: str, producer: str) -> None:
        self.pool, self.bus, self.schema, self.producer = pool, bus, schema, producer
        self.out_producer = f"{producer}out"

    async def handle(self, env: Envelope, tx: asyncpg.Connection) -> Sequence[Outgoing]:
        p = env.payload
        assert isinstance(p, ClusterRejected)
        await tx.execute(
            "INSERT INTO rejections (cluster_id, project_id, times, reasons, last_event_id) VALUES ($1, $2, 1, $3, $4)"
            " ON CONFLICT (cluster_id) DO UPDATE SET times = rejections.times + 1,"
            " reasons = rejections.reasons || ',' || EXCLUDED.reasons, last_event_id = EXCLUDED.last_event_id",
            p.uuid,
            p.project_id,
            p.reason,
            env.id,
        )
        return [
            Outgoing(
                subjects.cluster_events(self.out_producer, p.uuid),
                ClusterCreateFailed(uuid=p.uuid, project_id=p.project_id, status_reason=p.reason),
            )
        ]

    def projection(
        self,
        name: str | None = None,
        *,
        handler: ProjectionHandler | None = None,
        settings: ConsumerSettings = FAST,
        inbox_pruning: pmod.InboxPruning | None = None,
    ) -> Projection:
        """A projection of this fixture's events into its schema (``handle`` unless another handler is given)."""
        extra = {"inbox_pruning": inbox_pruning} if inbox_pruning is not None else {}
        return Projection(
            name=name or f"proj_{self.producer}",
            schema=self.schema,
            pool=self.pool,
            bus=self.bus,
            handler=handler or self.handle,
            filter_subjects=[f"cove.evt.{self.producer}.>"],
            settings=settings,
            migrations_dir=MIGRATIONS,
            **extra,
        )

    async def rows(self) -> list[tuple[object, ...]]:
        async with self.pool.acquire() as conn:
            recs = await conn.fetch(f"SELECT * FROM {self.schema}.rejections ORDER BY cluster_id")
        return [tuple(r.values()) for r in recs]

    async def publish(self, cluster: str, reason: str) -> Envelope:
        env = new_envelope(
            ClusterRejected(uuid=cluster, project_id="p", reason=reason), project_id="p", cluster_id=cluster
        )
        await self.bus.publish(subjects.cluster_events(self.producer, cluster), env)
        return env

    async def outgoing(self) -> list[Envelope]:
        """Every event the projection published (read back from the stream)."""
        return await stream_events(self.bus, f"cove.evt.{self.out_producer}.>")


@pytest.fixture
async def fx(database_url: str, bus: Bus) -> AsyncIterator[Fixture]:
    producer = f"t{uuid.uuid4().hex[:8]}"
    schema = f"rt_{producer}"
    pool = await db.create_pool(database_url, schema)
    await db.migrate(pool, schema, MIGRATIONS)
    yield Fixture(pool, bus, schema, producer)
    await db.drop_schema(pool, schema)
    await pool.close()


async def _checkpoint_at(p: Projection, seq: int) -> bool:
    return await p.checkpoint() >= seq


async def test_migrate_is_forward_only_and_idempotent(fx: Fixture) -> None:
    assert await db.migrate(fx.pool, fx.schema, MIGRATIONS) == []
    async with fx.pool.acquire() as conn:
        names = [
            r["name"] for r in await conn.fetch(f"SELECT name FROM {fx.schema}.schema_migrations ORDER BY 1")
        ]
    assert names == ["0001_init.sql", "0002_seen.sql"]


async def test_copies_starting_together_make_the_tracking_tables_once(fx: Fixture) -> None:
    """Two copies of a service starting at once both ensure the inbox and checkpoint: neither fails."""
    other = f"{fx.schema}_copies"
    try:
        await asyncio.gather(*(pmod.ensure_tracking_tables(fx.pool, other) for _ in range(6)))
        async with fx.pool.acquire() as conn:
            tables = {r["table_name"] for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", other)}
        assert {"inbox", "checkpoint"} <= tables, tables
    finally:
        await db.drop_schema(fx.pool, other)


async def test_redelivered_and_republished_events_change_the_store_once(fx: Fixture) -> None:
    p = fx.projection()
    await p.start()
    try:
        c1, c2 = str(uuid.uuid4()), str(uuid.uuid4())
        e1 = await fx.publish(c1, "quota")
        await fx.publish(c2, "quota")
        # The same event id published again under another Nats-Msg-Id gets past JetStream dedup:
        again = await fx.bus.publish(subjects.cluster_events(fx.producer, c1), e1, msg_id=f"other-{e1.id}")
        assert not again.duplicate
        await wait_for(lambda: _checkpoint_at(p, again.seq))
        before = await fx.rows()
        assert [(r[0], r[2]) for r in before] == sorted([(c1, 1), (c2, 1)])
        # Redeliver everything: rewind the durable consumer to the start of the stream.
        await p.consumer.stop()
        await p.consumer.recreate(start_seq=1)
        await p.consumer.start(ensure=False)
        await wait_for(lambda: _consumer_caught_up(fx.bus, p.name))
        assert await fx.rows() == before
        out = await fx.outgoing()
        assert sorted(e.cluster_id for e in out if e.cluster_id) == sorted([c1, c2])
        first = next(e for e in out if e.cluster_id == c1)
        assert first.causation_id == e1.id and first.correlation_id == e1.correlation_id
        assert first.id == pmod.outgoing_id(e1.id, 0)
    finally:
        await p.stop()


async def test_the_same_event_twice_in_one_batch_is_applied_once(fx: Fixture) -> None:
    p = fx.projection()
    assert p.batching
    c1, c2 = str(uuid.uuid4()), str(uuid.uuid4())
    e1 = await fx.publish(c1, "quota")
    again = await fx.bus.publish(subjects.cluster_events(fx.producer, c1), e1, msg_id=f"other-{e1.id}")
    await fx.publish(c2, "quota")
    last = await _last_seq(fx, c2)
    assert again.seq < last
    await p.start()
    try:
        await wait_for(lambda: _checkpoint_at(p, last))
        await wait_for(lambda: _consumer_caught_up(fx.bus, p.name))
        assert p.consumer.batches_applied == 1 and p.consumer.batches_split == 0  # all three in one batch
        assert [(r[0], r[2]) for r in await fx.rows()] == sorted([(c1, 1), (c2, 1)])
        assert [e.cluster_id for e in await fx.outgoing()] == [c1, c2]
    finally:
        await p.stop()


async def test_crash_between_publish_and_commit_is_deduplicated(
    fx: Fixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = fx.projection()
    real_advance = p._advance
    crashes = {"left": 1}

    async def crashing_advance(conn: asyncpg.Connection, seq: int) -> None:
        if crashes["left"]:
            crashes["left"] -= 1
            raise ConnectionError("simulated crash before commit")
        await real_advance(conn, seq)

    monkeypatch.setattr(p, "_advance", crashing_advance)
    await p.start()
    try:
        cluster = str(uuid.uuid4())
        env = await fx.publish(cluster, "quota")
        seq = (
            await fx.bus.js.get_last_msg(
                subjects.EVENTS_STREAM, subjects.cluster_events(fx.producer, cluster)
            )
        ).seq
        await wait_for(lambda: _checkpoint_at(p, seq))  # advances only when a delivery commits
        assert crashes["left"] == 0
        assert env.id
        rows = await fx.rows()
        assert [(r[0], r[2]) for r in rows] == [(cluster, 1)]
        out = await fx.outgoing()
        assert len(out) == 1  # published twice, stored once
    finally:
        await p.stop()


async def test_store_dropped_and_rebuilt_by_replay_equals_original(fx: Fixture) -> None:
    p = fx.projection()
    await p.start()
    clusters = [str(uuid.uuid4()) for _ in range(4)]
    last = None
    for i in range(10):
        last = await fx.publish(clusters[i % 4], f"r{i}")
    last_seq = (
        await fx.bus.js.get_last_msg(
            subjects.EVENTS_STREAM, subjects.cluster_events(fx.producer, clusters[1])
        )
    ).seq
    await wait_for(lambda: _checkpoint_at(p, last_seq))
    original = await fx.rows()
    assert len(original) == 4 and sum(r[2] for r in original) == 10  # type: ignore[misc]
    out_before = await fx.outgoing()

    # 1. Explicit rebuild: drop the schema, migrate, replay from sequence 1.
    await p.rebuild()
    await wait_for(lambda: _checkpoint_at(p, last_seq))
    assert await fx.rows() == original
    assert p.suppressed == 10  # replayed events do not publish their consequences again
    await p.stop()

    # 2. A store emptied behind the projection's back: a new process notices checkpoint 0 < consumer position.
    await db.drop_schema(fx.pool, fx.schema)
    await db.migrate(fx.pool, fx.schema, MIGRATIONS)
    p2 = fx.projection()
    await p2.start()
    try:
        await wait_for(lambda: _checkpoint_at(p2, last_seq))
        assert await fx.rows() == original
        assert p2.suppressed == 10
        # Replays did not re-publish the outgoing events: still one per cause.
        assert len(await fx.outgoing()) == len(out_before) == 10
        assert last is not None
    finally:
        await p2.stop()


async def _consumer_caught_up(bus: Bus, durable: str) -> bool:
    info = await bus.js.consumer_info(subjects.EVENTS_STREAM, durable)
    return info.num_pending == 0 and info.num_ack_pending == 0


# A process hung beyond cancellation (blocked outside the event loop): only ack timeouts can count its deliveries.
HANGS = ConsumerSettings(ack_wait=0.5, max_deliver=2, backoff=(), fetch_batch=1, fetch_timeout=0.1,
                         handler_deadline=math.inf)


async def test_event_dropped_after_ack_timeouts_moves_the_checkpoint_past_it(fx: Fixture) -> None:
    """Replicas hang (holding the transaction open) on one event until the server drops it: it is dead-lettered
    with the ack-timeout reason, the checkpoint moves past it, and the next event is applied."""
    release = asyncio.Event()

    async def handle(env: Envelope, tx: asyncpg.Connection) -> Sequence[Outgoing]:
        if env.payload.reason == "hang":  # type: ignore[union-attr]
            await release.wait()
            raise RuntimeError("the process died: this transaction never commits")
        return await fx.handle(env, tx)

    name = f"proj_{fx.producer}"
    replicas = [fx.projection(name, handler=handle, settings=HANGS) for _ in range(3)]
    for p in replicas:
        await p.start()
    try:
        stuck, fine = str(uuid.uuid4()), str(uuid.uuid4())
        await fx.publish(stuck, "hang")
        stuck_seq = (
            await fx.bus.js.get_last_msg(subjects.EVENTS_STREAM, subjects.cluster_events(fx.producer, stuck))
        ).seq
        await wait_for(lambda: _checkpoint_at(replicas[0], stuck_seq))
        assert await replicas[0].checkpoint() == stuck_seq  # moved by the dead letter, nothing was applied
        assert await dlq_count(fx.bus, name) == 1
        dead = await fx.bus.js.get_last_msg(subjects.DLQ_STREAM, subjects.dlq_subject(name))
        assert (dead.headers or {})[cmod.DLQ_REASON] == cmod.ACK_TIMEOUT_REASON
        await fx.publish(fine, "quota")
        fine_seq = (
            await fx.bus.js.get_last_msg(subjects.EVENTS_STREAM, subjects.cluster_events(fx.producer, fine))
        ).seq
        await wait_for(lambda: _checkpoint_at(replicas[0], fine_seq))
        assert [(r[0], r[2]) for r in await fx.rows()] == [(fine, 1)]
    finally:
        release.set()
        for p in replicas:
            await p.stop()
    assert await dlq_count(fx.bus, name) == 1
    assert [(r[0], r[2]) for r in await fx.rows()] == [(fine, 1)]


async def _inbox(fx: Fixture, consumer: str) -> dict[int, str]:
    async with fx.pool.acquire() as conn:
        recs = await conn.fetch(
            f"SELECT stream_seq, event_id FROM {fx.schema}.inbox WHERE consumer = $1", consumer
        )
    return {r["stream_seq"]: r["event_id"] for r in recs}


async def _age_inbox(fx: Fixture, consumer: str, except_seq: int) -> None:
    async with fx.pool.acquire() as conn:
        await conn.execute(
            f"UPDATE {fx.schema}.inbox SET applied_at = now() - interval '2 hours'"
            " WHERE consumer = $1 AND stream_seq <> $2",
            consumer,
            except_seq,
        )
        # Another projection's old rows in the same schema: not this pruner's business.
        await conn.execute(
            f"INSERT INTO {fx.schema}.inbox (consumer, event_id, stream_seq, applied_at)"
            " VALUES ('other', 'ancient', 1, now() - interval '2 days')"
        )


async def _applied(fx: Fixture, p: Projection, count: int) -> dict[int, str]:
    envs = [await fx.publish(str(uuid.uuid4()), f"r{i}") for i in range(count)]
    last_seq = (
        await fx.bus.js.get_last_msg(
            subjects.EVENTS_STREAM, subjects.cluster_events(fx.producer, envs[-1].cluster_id or "")
        )
    ).seq
    await wait_for(lambda: _checkpoint_at(p, last_seq))
    return await _inbox(fx, p.name)


async def test_inbox_pruning_keeps_recent_rows_and_the_last_keep_sequences(fx: Fixture) -> None:
    p = fx.projection(inbox_pruning=pmod.InboxPruning(keep=5, retention=3600, interval=None, batch=2, pause=0))
    await p.start()
    try:
        rows = await _applied(fx, p, 8)
        assert len(rows) == 8
        assert await p.prune_inbox() == 0  # all younger than the retention
        checkpoint = await p.checkpoint()
        oldest = min(rows)
        await _age_inbox(fx, p.name, except_seq=oldest)
        expected = {s: e for s, e in rows.items() if s >= checkpoint - 5 or s == oldest}
        assert 1 < len(expected) < len(rows)
        assert await p.prune_inbox() == len(rows) - len(expected)  # in several batches of 2
        assert await _inbox(fx, p.name) == expected
        assert await _inbox(fx, "other") == {1: "ancient"}
        assert await p.prune_inbox() == 0

        # A copy of a recent event under another msg id is still caught by the rows kept.
        newest = max(rows)
        raw = await fx.bus.js.get_msg(subjects.EVENTS_STREAM, seq=newest)
        before = await fx.rows()
        copy = await fx.bus.publish_raw(raw.subject or "", raw.data or b"", {"Nats-Msg-Id": "copy"})
        await wait_for(lambda: _checkpoint_at(p, copy.seq))
        assert await fx.rows() == before
    finally:
        await p.stop()


async def test_inbox_is_pruned_in_the_background(fx: Fixture) -> None:
    p = fx.projection(inbox_pruning=pmod.InboxPruning(keep=2, retention=60, interval=0.1, batch=2, pause=0))
    await p.start()
    try:
        rows = await _applied(fx, p, 5)
        checkpoint = await p.checkpoint()
        await _age_inbox(fx, p.name, except_seq=min(rows))
        expected = {s: e for s, e in rows.items() if s >= checkpoint - 2 or s == min(rows)}
        await wait_for(lambda: _inbox_is(fx, p.name, expected), timeout=5)
    finally:
        await p.stop()
    assert p._pruner is None


async def _inbox_is(fx: Fixture, consumer: str, expected: dict[int, str]) -> bool:
    return await _inbox(fx, consumer) == expected


# ---------------------------------------------------------------------------------------------- batches


async def _last_seq(fx: Fixture, cluster: str) -> int:
    return (
        await fx.bus.js.get_last_msg(subjects.EVENTS_STREAM, subjects.cluster_events(fx.producer, cluster))
    ).seq


async def test_fetched_batch_is_applied_in_one_transaction_with_one_checkpoint_write(
    fx: Fixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events waiting before the start arrive in one fetch: one transaction applies them in stream order, the
    checkpoint is written once (the batch's last sequence), each outgoing event is published once with its
    deterministic id, and the after-commit hook sees every event committed, in order."""
    seen_after_commit: list[tuple[int, int]] = []

    class Hooked(Projection):
        async def _applied(self, env: Envelope, msg: Msg) -> None:
            # Runs after the commit: another connection already sees the checkpoint past the event.
            async with fx.pool.acquire() as conn:
                checkpoint = await conn.fetchval(
                    f"SELECT stream_seq FROM {fx.schema}.checkpoint WHERE consumer = $1", self.name
                )
            visible = int(checkpoint or 0) >= msg.metadata.sequence.stream
            seen_after_commit.append((msg.metadata.sequence.stream, int(visible)))

    p = Hooked(
        name=f"proj_{fx.producer}",
        schema=fx.schema,
        pool=fx.pool,
        bus=fx.bus,
        handler=fx.handle,
        filter_subjects=[f"cove.evt.{fx.producer}.>"],
        settings=FAST,
    )
    assert p.batching
    cluster = str(uuid.uuid4())
    envs = [await fx.publish(cluster, f"r{i}") for i in range(10)]
    last = await _last_seq(fx, cluster)
    advances: list[int] = []
    real_advance = p._advance

    async def counting_advance(conn: asyncpg.Connection, seq: int) -> None:
        advances.append(seq)
        await real_advance(conn, seq)

    monkeypatch.setattr(p, "_advance", counting_advance)
    await p.start()
    try:
        await wait_for(lambda: _checkpoint_at(p, last))
        await wait_for(lambda: _consumer_caught_up(fx.bus, p.name))
        assert p.consumer.batches_applied == 1 and p.consumer.batches_split == 0
        assert advances == [last]
        # One row updated ten times, in stream order.
        rows = await fx.rows()
        assert [(r[0], r[2], r[3]) for r in rows] == [(cluster, 10, ",".join(f"r{i}" for i in range(10)))]
        assert rows[0][4] == envs[-1].id
        out = await fx.outgoing()
        assert [e.id for e in out] == [pmod.outgoing_id(e.id, 0) for e in envs]
        assert [seq for seq, _ in seen_after_commit] == sorted(seq for seq, _ in seen_after_commit)
        assert len(seen_after_commit) == 10 and all(visible == 1 for _, visible in seen_after_commit)
    finally:
        await p.stop()


async def test_poison_event_in_a_batch_is_dead_lettered_alone_and_nothing_is_lost_or_applied_twice(
    fx: Fixture,
) -> None:
    """The handler always fails on one event of a batch: the batch is rolled back and applied one message at a
    time; the poison event is retried and dead-lettered on its own, every other event is applied exactly once and
    its outgoing event published once (the re-publish of what the rolled-back batch published is deduplicated)."""
    calls: dict[str, int] = {}

    async def handle(env: Envelope, tx: asyncpg.Connection) -> Sequence[Outgoing]:
        p = env.payload
        assert isinstance(p, ClusterRejected)
        calls[p.reason] = calls.get(p.reason, 0) + 1
        if p.reason == "poison":
            raise RuntimeError("cannot apply this one")
        return await fx.handle(env, tx)

    p = fx.projection(
        handler=handle, settings=ConsumerSettings(ack_wait=5, max_deliver=3, backoff=(0.05,), fetch_timeout=0.2)
    )
    clusters = [str(uuid.uuid4()) for _ in range(6)]
    reasons = ["a", "b", "poison", "c", "d", "e"]
    envs = [await fx.publish(c, r) for c, r in zip(clusters, reasons, strict=True)]
    last = await _last_seq(fx, clusters[-1])
    await p.start()
    try:
        await wait_for(lambda: _checkpoint_at(p, last))
        await wait_for(lambda: _dlq_is(fx.bus, p.name, 1))
        await wait_for(lambda: _consumer_caught_up(fx.bus, p.name))
        assert p.consumer.batches_split >= 1
        assert (
            calls["poison"] == 3 + p.consumer.batches_split
        )  # max_deliver per-message tries, plus each batch
        rows = await fx.rows()
        good = sorted((c, r) for c, r in zip(clusters, reasons, strict=True) if r != "poison")
        assert sorted((r[0], r[3]) for r in rows) == good
        assert all(r[2] == 1 for r in rows)
        out = await fx.outgoing()
        expected = sorted(pmod.outgoing_id(e.id, 0) for e in envs if e.payload.reason != "poison")  # type: ignore[union-attr]
        assert sorted(e.id for e in out) == expected
    finally:
        await p.stop()


async def _dlq_is(bus: Bus, durable: str, n: int) -> bool:
    return await dlq_count(bus, durable) == n


async def test_subclass_overriding_apply_is_applied_one_message_at_a_time(fx: Fixture) -> None:
    applied: list[int] = []

    class Wrapping(Projection):
        async def _apply(self, env: Envelope, msg: Msg) -> None:
            await super()._apply(env, msg)
            applied.append(msg.metadata.sequence.stream)

    p = Wrapping(
        name=f"proj_{fx.producer}",
        schema=fx.schema,
        pool=fx.pool,
        bus=fx.bus,
        handler=fx.handle,
        filter_subjects=[f"cove.evt.{fx.producer}.>"],
        settings=FAST,
    )
    assert not p.batching and p.consumer.batch_handler is None
    cluster = str(uuid.uuid4())
    for i in range(4):
        await fx.publish(cluster, f"r{i}")
    last = await _last_seq(fx, cluster)
    await p.start()
    try:
        await wait_for(lambda: _checkpoint_at(p, last))
        assert len(applied) == 4 and applied == sorted(applied)
        assert p.consumer.batches_applied == 0
    finally:
        await p.stop()


async def test_on_applied_hears_each_event_after_its_commit_and_handlers_see_its_sequence(fx: Fixture) -> None:
    """What the provisioner builds on: ``on_applied(event, seq)`` once per settled event after the commit, in
    stream order, duplicates included; ``current_sequence()`` inside the handler is that event's sequence."""
    seen_in_handler: list[int] = []
    heard: list[tuple[str | None, int, int]] = []  # (event id, sequence, rows committed when heard)

    async def handler(env: Envelope, tx: asyncpg.Connection) -> Sequence[Outgoing]:
        seen_in_handler.append(pmod.current_sequence())
        return await fx.handle(env, tx)

    async def on_applied(env: Envelope | None, seq: int) -> None:
        heard.append((env.id if env else None, seq, len(await fx.rows())))

    p = fx.projection(handler=handler)
    p.on_applied = on_applied
    await p.start()
    try:
        c1, c2 = str(uuid.uuid4()), str(uuid.uuid4())
        e1, e2 = await fx.publish(c1, "quota"), await fx.publish(c2, "quota")
        again = await fx.bus.publish(subjects.cluster_events(fx.producer, c1), e1, msg_id=f"other-{e1.id}")
        await wait_for(lambda: len(heard) == 3, message="three events heard")
        seqs = [seq for _, seq, _ in heard]
        assert seqs == sorted(seqs) and seqs[-1] == again.seq
        assert [event_id for event_id, _, _ in heard] == [e1.id, e2.id, e1.id], "the duplicate is heard too"
        assert heard[0][2] >= 1 and heard[1][2] == 2, "heard after the commit that applied it"
        assert seen_in_handler == seqs[:2], "the handler ran once per fresh event, each with its own sequence"
        assert pmod.current_sequence() == 0
    finally:
        await p.stop()


def test_covering_subject_matches_whatever_any_filter_matches() -> None:
    cover = cmod.covering_subject
    assert cover(["cove.evt.api.cluster.*"]) == "cove.evt.api.cluster.*"
    assert cover(["cove.evt.scheduler.cluster.*", "cove.evt.certs.cluster.*", "cove.evt.provisioner.cluster.*"]) \
        == "cove.evt.*.cluster.*"
    assert cover(["cove.evt.api.cluster.*", "cove.evt.api.quota.*"]) == "cove.evt.api.*.*"
    assert cover(["cove.evt.api.>", "cove.evt.certs.cluster.*"]) == "cove.evt.*.>"
    assert cover(["a.b", "a.b.c"]) == "a.>"
    assert cover(["a", "b.c"]) == ">"
    filters = ["cove.evt.api.cluster.*", "cove.evt.scheduler.>", "cove.evt.api.quota.*", "x.y"]
    for subject in ["cove.evt.api.cluster.1", "cove.evt.scheduler.queue.default", "cove.evt.api.quota.p", "x.y"]:
        assert any(cmod.matches(subject, f) for f in filters)
        assert cmod.matches(subject, cover(filters))


def test_a_compiled_subject_matcher_agrees_with_matches() -> None:
    """``subject_matcher`` (one regular expression, what the replay tests every message with) says what ``matches``
    says of any of its filters, token by token: ``*`` one token, ``>`` one or more, literals as they are (a ``.``
    in a pattern is no wildcard)."""
    patterns = [["cove.evt.api.cluster.*"], ["cove.evt.*.cluster.*", "cove.evt.api.quota.*"], ["cove.evt.scheduler.>"],
                ["a.b", "a.b.c"], [">"], ["a.*.c"], ["a.>", "x"]]
    subjects_ = ["cove.evt.api.cluster.1", "cove.evt.api.cluster.1.2", "cove.evt.api.cluster", "cove.evt.certs.cluster.9",
                 "cove.evt.api.quota.p", "cove.evt.scheduler.queue.default", "cove.evt.scheduler", "a.b", "a.b.c",
                 "a.bc", "axb", "a.x.c", "a.x.y.c", "x", "x.y", "cove.evt.apixcluster.1"]
    for filters in patterns:
        wanted = cmod.subject_matcher(filters)
        for subject in subjects_:
            assert wanted(subject) == any(cmod.matches(subject, f) for f in filters), (filters, subject)


async def test_several_filter_subjects_are_one_on_the_server_and_the_rest_is_acked_unapplied(fx: Fixture) -> None:
    """The server is given one subject covering the projection's (a consumer of several is delivered slowly): what
    none of the projection's subjects match is acknowledged without being applied or recorded, and the checkpoint
    follows it, so a restart finds the store level with the consumer and replays nothing."""
    own = [f"cove.evt.{fx.producer}.a.*", f"cove.evt.{fx.producer}.b.*"]
    p = Projection(name=f"proj_{fx.producer}", schema=fx.schema, pool=fx.pool, bus=fx.bus, handler=fx.handle,
                   filter_subjects=own, settings=FAST, migrations_dir=MIGRATIONS)
    info = await p.consumer.ensure()
    assert info.config.filter_subject == f"cove.evt.{fx.producer}.*.*" and not info.config.filter_subjects
    await p.start()
    try:
        sent: dict[str, list[str]] = {"a": [], "b": [], "c": []}
        last = 0
        for kind in "acbccacbc" * 3:
            cluster = str(uuid.uuid4())
            env = new_envelope(ClusterRejected(uuid=cluster, project_id="p", reason=kind), project_id="p",
                               cluster_id=cluster)
            last = (await fx.bus.publish(f"cove.evt.{fx.producer}.{kind}.{cluster}", env)).seq
            sent[kind].append(cluster)
        await wait_for(lambda: _checkpoint_at(p, last))  # the last one is a 'c': skipped, and checkpointed
        await wait_for(lambda: _consumer_caught_up(fx.bus, p.name))
        assert sorted(r[0] for r in await fx.rows()) == sorted(sent["a"] + sent["b"])
        async with fx.pool.acquire() as conn:
            inbox = await conn.fetchval(f"SELECT count(*) FROM {fx.schema}.inbox")
        assert inbox == len(sent["a"]) + len(sent["b"])
        assert p.consumer.skipped == len(sent["c"])
        await p.stop()
        await p.start()
        assert p.replay_until == 0  # level with the consumer's acknowledgements: nothing replayed
    finally:
        await p.stop()
