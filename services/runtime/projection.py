"""Idempotent, resumable, rebuildable projections: the tracking record lives in the same transaction.

A ``Projection`` feeds each event of its durable consumer to ``handle(env, tx)`` inside ONE PostgreSQL
transaction that also

* inserts the event id into ``<schema>.inbox`` (a redelivered or re-published event is skipped),
* advances ``<schema>.checkpoint`` for this consumer to the event's stream sequence,
* publishes the events the handler returns *before* committing, each with a deterministic id
  (uuid5 of the cause's id and the output index) used as ``Nats-Msg-Id``: a crash after publishing but
  before commit leads to a redelivery whose re-publish JetStream deduplicates.

A fetched batch of events is applied in ONE transaction (``_apply_batch``; a single message is a batch of one):
first ONE statement (``_claim``) inserts every event id into the inbox, learning which are fresh; then, in stream
order, the handler of each fresh event and the publishing of its outgoing events (deterministic ids, before the
commit); last the checkpoint, written once at the batch's last sequence (so the API's ``cove_api_applied`` NOTIFY
fires once per batch with the sequence every event of the batch is visible at, and a transaction hung in a handler
holds no checkpoint lock). The statements a batch costs do not grow with its size beyond what the handlers run.
The consumer acks the messages after the commit. If anything in the batch raises (a handler, a publish, the
commit), the transaction is rolled back and the consumer applies the batch again one message at a time with
``_apply`` (one transaction each), so a poison message is retried, nak'd and dead-lettered on its own; what was
published before the rollback is re-published with the same ids and deduplicated by JetStream.
A service may also give a ``batch_handler``: it receives every fresh event of a batch at once, so that runs of events
it can apply set-based (one statement for many rows) cost a few statements per batch instead of a few per event; it
must leave the store exactly as the per-event handler applied in stream order would (tests/scheduler/
test_admission_run.py and tests/api/test_batch_projection.py compare both paths table by table).
A handler made of planned writes (``PlannedHandler``: each event's statements decided from the event alone, the
events that must read the store applied one at a time in their place) is its own batch handler: a batch runs the
writes of its planned events grouped by statement, in waves that keep the stream order of the writes touching the
same rows (``apply_writes``), a few round trips for a whole batch; alone, the same writes run one after another.
A subclass customises the per-event work through ``_handle`` (runs the handler inside the transaction) and
``_applied`` (after the commit, once per event); a subclass that overrides ``_apply`` itself is applied one
message at a time, since the batch path cannot run its override.

On start the checkpoint is compared with the durable consumer: when the store is behind the consumer
(e.g. an emptied store, checkpoint 0), the consumer is recreated to deliver from ``checkpoint + 1``; that
is how a store is rebuilt by replaying the stream. ``rebuild()`` does it on purpose.

A dead-lettered event (handler kept failing, bytes did not decode, or the server dropped it after
``max_deliver`` ack timeouts) moves the checkpoint past it too.

The inbox is pruned in the background (``InboxPruning``): rows far below the checkpoint (``keep`` stream
sequences) AND older than ``retention`` are deleted in small batches. See docs/adr/0002.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import random
import uuid
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import structlog
from nats.aio.msg import Msg

from proto import subjects
from proto.envelope import Envelope, new_envelope
from proto.events import Event, event_type
from proto.streams import DEFAULT_CONSUMER, ConsumerSettings
from services.runtime import db, metrics, tracing
from services.runtime.bus import Bus
from services.runtime.consumer import Consumer

log = structlog.get_logger(__name__)

OUTGOING_NAMESPACE = uuid.UUID("6f1d7c5e-2b0a-4c61-9a53-0c0f8e0b9e11")


@dataclass(frozen=True)
class Outgoing:
    """An event a handler wants published as a consequence of the event it handles.

    ``project_id``/``cluster_id`` default to the cause's. The envelope id is deterministic.
    """

    subject: str
    payload: Event
    project_id: str | None = None
    cluster_id: str | None = None


ProjectionHandler = Callable[[Envelope, asyncpg.Connection], Awaitable[Sequence[Outgoing] | None]]
BatchProjectionHandler = Callable[[list[Envelope], asyncpg.Connection], Awaitable[list[Sequence[Outgoing]]]]
"""Applies several fresh events (stream order) in the caller's transaction; returns each one's outgoing events."""


def outgoing_id(cause_id: str, index: int) -> str:
    """The deterministic id of the ``index``-th event published because of event ``cause_id``."""
    return str(uuid.uuid5(OUTGOING_NAMESPACE, f"{cause_id}:{index}"))


def outgoing_envelope(cause: Envelope, index: int, out: Outgoing) -> Envelope:
    return new_envelope(
        out.payload,
        project_id=out.project_id if out.project_id is not None else cause.project_id,
        cluster_id=out.cluster_id if out.cluster_id is not None else cause.cluster_id,
        causation=cause,
        id=outgoing_id(cause.id, index),
        trace=tracing.follow(cause.trace, event_type(out.payload)),  # the cause's trace, even from a batch
    )


TRACKING_DDL = """
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.inbox (
    consumer   text NOT NULL,
    event_id   text NOT NULL,
    stream_seq bigint NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
CREATE TABLE IF NOT EXISTS {schema}.checkpoint (
    consumer   text PRIMARY KEY,
    stream_seq bigint NOT NULL
);
CREATE INDEX IF NOT EXISTS inbox_consumer_stream_seq ON {schema}.inbox (consumer, stream_seq);
"""

CLAIM_SQL = """
INSERT INTO {schema}.inbox (event_id, consumer, stream_seq)
SELECT event_id, $2, stream_seq FROM unnest($1::text[], $3::bigint[]) AS batch (event_id, stream_seq)
ON CONFLICT (consumer, event_id) DO NOTHING
RETURNING event_id
"""
"""Every event id of a batch into the inbox in one round trip, returning the fresh ones (``Projection._claim``)."""

PRUNE_SQL = """
DELETE FROM {schema}.inbox
WHERE (consumer, event_id) IN (
    SELECT consumer, event_id FROM {schema}.inbox
    WHERE consumer = $1
      AND stream_seq < (SELECT stream_seq FROM {schema}.checkpoint WHERE consumer = $1) - $2
      AND applied_at < now() - make_interval(secs => $3)
    LIMIT $4
)
"""


@dataclass(frozen=True)
class InboxPruning:
    """How the inbox of processed event ids is kept bounded (see docs/adr/0002).

    A row is deleted only when BOTH hold: its stream sequence is more than ``keep`` below the checkpoint, and it
    was applied more than ``retention`` seconds ago. A pass runs every ``interval`` seconds (None: never) and
    deletes ``batch`` rows per statement, pausing ``pause`` seconds between statements.
    """

    keep: int = 100_000
    retention: float = 3600.0
    interval: float | None = 300.0
    batch: int = 1000
    pause: float = 0.05


async def ensure_tracking_tables(pool: asyncpg.Pool, schema: str) -> None:
    """The inbox and checkpoint tables; copies of a service starting together serialise on the same advisory lock
    as the migrations (two concurrent ``CREATE TABLE IF NOT EXISTS`` of one table collide in PostgreSQL)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"cove-migrate:{db.ident(schema)}")
        await conn.execute(TRACKING_DDL.format(schema=db.ident(schema)))


AppliedHook = Callable[[Envelope | None, int], Awaitable[None]]
"""Told, after the commit, of each event a projection settled: ``(event, stream sequence)`` in stream order,
duplicates included; ``(None, sequence)`` for one it dead-lettered."""

_SEQUENCE: contextvars.ContextVar[int] = contextvars.ContextVar("projection_stream_sequence", default=0)


_BATCH_SEQUENCES: contextvars.ContextVar[Sequence[int]] = contextvars.ContextVar("projection_batch_sequences",
                                                                                 default=())


_REPLAY_UNTIL: contextvars.ContextVar[int] = contextvars.ContextVar("projection_replay_until", default=0)


def current_sequence() -> int:
    """The stream sequence of the event the running projection handler is applying (0 outside a handler; in a
    batch handler, which applies several, see ``batch_sequences``)."""
    return _SEQUENCE.get()


def replaying() -> bool:
    """Whether the event the running handler (or planner) applies was applied before: the projection is rebuilding
    its store from the stream (``Projection.replay_until``), or ``cove replay`` / ``cove verify`` builds a scratch
    store. What the handler published then is in the stream after the event (and is not published again), and what
    it did outside its store (e.g. the certs service's key store) was done then: a handler may skip both. False
    outside a handler and in a batch handler that is not a ``PlannedHandler`` (which sets each event's sequence)."""
    seq = _SEQUENCE.get()
    return 0 < seq <= _REPLAY_UNTIL.get()


def batch_sequences() -> Sequence[int]:
    """Inside a batch handler: the stream sequence of each event it was given, in the same order."""
    return _BATCH_SEQUENCES.get()


# ------------------------------------------------------------------ planned writes


@dataclass(frozen=True)
class Write:
    """One statement of an event's application, decided from the event alone: ``sql`` run with ``args``.

    ``keys`` name every row the statement reads or writes (e.g. ``("cluster", uuid)`` for a cluster's rows, or a
    table's name for a statement that reaches rows it cannot name beforehand), and every sequence it takes values
    from (a ``serial`` column's: its values are then taken in stream order). Two writes that share no key touch
    disjoint rows, so they commute: that is what lets a batch run them grouped by statement (``apply_writes``)."""

    sql: str
    args: tuple[Any, ...]
    keys: tuple[Hashable, ...]


class _StreamPosition(Protocol):
    @property
    def stream(self) -> int: ...


class _Metadata(Protocol):
    @property
    def sequence(self) -> _StreamPosition: ...


class Delivered(Protocol):
    """What a projection reads of a delivered message: its stream sequence, ``msg.metadata.sequence.stream``
    (nats-py's ``Msg``, or the replay's ``services/ops/streamreader.StreamMessage``)."""

    @property
    def metadata(self) -> _Metadata: ...


Planner = Callable[[Envelope], Sequence[Write] | None]
"""The writes that apply an event, decided from the event alone (no read of the store; ``current_sequence()``
is set). None: this event needs to read the store first, and is applied by the projection's own handler."""


async def apply_writes(tx: asyncpg.Connection, writes: Sequence[Write]) -> int:
    """Run ``writes`` (stream order) in a few round trips; returns the round trips spent.

    A wave's writes of one statement run with ONE ``executemany`` (asyncpg pipelines it: one round trip, the
    statement prepared once), in stream order; its statements one after another. Each write goes in the first
    wave where it follows every earlier write it shares a key with: after the wave of such a write of another
    statement, in the wave of such a write of the same statement at the earliest (its rows run in stream order).
    So writes of one wave that share a key are rows of one ``executemany``, in stream order, and the others
    commute: the result is the result of running every write one after another in stream order."""
    last: dict[Hashable, tuple[int, str]] = {}
    """Per key: the wave and statement of the last write that named it."""
    waves: list[dict[str, list[tuple[Any, ...]]]] = []
    for w in writes:
        if not w.keys:
            raise ValueError(f"a planned write names no key: {w.sql}")
        level = 0
        for k in w.keys:
            if k in last:
                seen_at, sql = last[k]
                level = max(level, seen_at if sql == w.sql else seen_at + 1)
        for k in w.keys:
            last[k] = (level, w.sql)
        while len(waves) <= level:
            waves.append({})
        waves[level].setdefault(w.sql, []).append(w.args)
    trips = 0
    for wave in waves:
        for sql, rows in wave.items():
            if len(rows) == 1:
                await tx.execute(sql, *rows[0])
            else:
                await tx.executemany(sql, rows)
            trips += 1
    return trips


class PlannedHandler:
    """A projection handler whose events are, where they can be, planned writes (``plan``); an event the planner
    declines (None: it must read the store, or it publishes) goes to ``handle``.

    One code path per event type, two speeds: applied alone (``__call__``: the live consumer's single message,
    and the one-at-a-time retry of a failed batch) the writes run one after another; applied with the other
    fresh events of a batch (``batch``: the live consumer's fetched batch, a replay's 1,000 events) the writes of
    every run of planned events between two declined ones go through ``apply_writes``. The projection uses
    ``batch`` as its batch handler by itself (``Projection.__init__``)."""

    def __init__(
        self, plan: Planner, handle: ProjectionHandler | None = None,
        compact: Callable[[list[Write]], list[Write]] | None = None,
    ) -> None:
        self.plan = plan
        self._handle = handle
        self.compact = compact
        """Given the writes of a run of planned events (stream order), the writes that leave the store the same
        (e.g. without a write a later one supersedes); run instead of them in a batch."""

    async def handle(self, env: Envelope, tx: asyncpg.Connection) -> Sequence[Outgoing] | None:
        if self._handle is None:
            raise RuntimeError(f"the planner declined a {type(env.payload).__name__} and there is no handler")
        return await self._handle(env, tx)

    async def __call__(self, env: Envelope, tx: asyncpg.Connection) -> Sequence[Outgoing] | None:
        writes = self.plan(env)
        if writes is None:
            return await self.handle(env, tx)
        for w in writes:
            await tx.execute(w.sql, *w.args)
        return ()

    async def batch(
        self, envs: list[Envelope], tx: asyncpg.Connection, sequences: Sequence[int] | None = None
    ) -> list[Sequence[Outgoing]]:
        """``sequences``: each event's stream sequence when the caller changed the batch it was given (e.g. the
        API's parked events, services/api/parking.py); by default the projection's (``batch_sequences``). Called
        outside a projection, e.g. by a test, the events have no stream sequence: 0, as outside a handler."""
        if sequences is None:
            sequences = batch_sequences() or [0] * len(envs)
        if len(sequences) != len(envs):
            raise RuntimeError(f"{len(envs)} events but {len(sequences)} stream sequences")
        outgoing: list[Sequence[Outgoing]] = []
        pending: list[Write] = []
        for env, seq in zip(envs, sequences, strict=True):
            token = _SEQUENCE.set(seq)
            try:
                writes = self.plan(env)
                if writes is None:
                    await apply_writes(tx, self._compacted(pending))  # what came before it, before it reads
                    pending.clear()
                    outgoing.append(await self.handle(env, tx) or ())
                else:
                    pending.extend(writes)
                    outgoing.append(())
            finally:
                _SEQUENCE.reset(token)
        await apply_writes(tx, self._compacted(pending))
        return outgoing

    def _compacted(self, writes: list[Write]) -> list[Write]:
        return self.compact(writes) if self.compact is not None and len(writes) > 1 else writes


class Projection:
    """One durable consumer whose every event is applied to ``schema`` exactly once.

    ``handler(env, tx)`` runs inside the transaction ``tx`` (search_path is the service schema) and returns
    the events to publish (or None). Raise to retry with backoff; after ``max_deliver`` tries the event is
    dead-lettered and the projection moves on.
    """

    def __init__(
        self,
        *,
        name: str,
        schema: str,
        pool: asyncpg.Pool,
        bus: Bus,
        handler: ProjectionHandler,
        filter_subjects: list[str],
        settings: ConsumerSettings = DEFAULT_CONSUMER,
        stream: str = subjects.EVENTS_STREAM,
        migrations_dir: Path | str | None = None,
        inbox_pruning: InboxPruning = InboxPruning(),
        batch_handler: BatchProjectionHandler | None = None,
        on_applied: AppliedHook | None = None,
    ) -> None:
        self.name = name
        self.on_applied = on_applied
        if batch_handler is None and isinstance(handler, PlannedHandler):
            batch_handler = handler.batch
        self.batch_handler = batch_handler
        self.inbox_pruning = inbox_pruning
        self._pruner: asyncio.Task[None] | None = None
        self.schema = db.ident(schema)
        self._claim_sql = CLAIM_SQL.format(schema=self.schema)
        self.pool = pool
        self.bus = bus
        self.handler = handler
        self.migrations_dir = Path(migrations_dir) if migrations_dir is not None else None
        # A subclass overriding ``_apply`` wraps the per-message path in ways the batch path cannot reproduce.
        self.batching = type(self)._apply is Projection._apply
        self.consumer = Consumer(
            bus,
            durable=name,
            filter_subjects=filter_subjects,
            handler=self._apply,
            on_dead_lettered=self._dead_lettered,
            settings=settings,
            stream=stream,
            batch_handler=self._apply_batch if self.batching else None,
            on_skipped=self._skipped,
        )
        self.replay_until = 0
        """Events at or below this stream sequence were applied before (we are replaying): their outgoing events
        are already in the stream, so they are not published again (JetStream's dedup window is only minutes)."""
        self.suppressed = 0

    @property
    def running(self) -> bool:
        return self.consumer.running

    async def checkpoint(self) -> int:
        async with self.pool.acquire() as conn:
            seq = await conn.fetchval(
                f"SELECT stream_seq FROM {self.schema}.checkpoint WHERE consumer = $1", self.name
            )
        return int(seq or 0)

    async def start(self) -> None:
        await ensure_tracking_tables(self.pool, self.schema)
        checkpoint = await self.checkpoint()
        info = await self.consumer.info()
        if info is None:
            await self.consumer.ensure(start_seq=checkpoint + 1)
        else:
            acked = info.ack_floor.stream_seq if info.ack_floor else 0
            if checkpoint < acked:
                # The store is behind what the consumer says was applied: it was emptied or restored from an
                # older backup. Replay from the store's own position.
                log.warning(
                    "projection_replaying", projection=self.name, checkpoint=checkpoint, consumer_acked=acked
                )
                self.replay_until = acked
                await self.consumer.recreate(start_seq=checkpoint + 1)
            else:
                await self.consumer.ensure()
        await self.consumer.start(ensure=False)
        self._start_pruner()
        log.info("projection_started", projection=self.name, schema=self.schema, checkpoint=checkpoint)

    async def stop(self) -> None:
        await self._stop_pruner()
        await self.consumer.stop()

    async def rebuild(self) -> None:
        """Drop the schema, migrate it again, and replay the stream from sequence 1."""
        if self.migrations_dir is None:
            raise ValueError(f"projection {self.name} has no migrations_dir to rebuild {self.schema}")
        was_running = self.running
        await self.stop()
        info = await self.consumer.info()
        self.replay_until = max(
            await self.checkpoint(), info.ack_floor.stream_seq if info and info.ack_floor else 0
        )
        await db.drop_schema(self.pool, self.schema)
        await db.migrate(self.pool, self.schema, self.migrations_dir)
        await ensure_tracking_tables(self.pool, self.schema)
        await self.consumer.recreate(start_seq=1)
        log.warning("projection_rebuild_started", projection=self.name, schema=self.schema)
        if was_running:
            await self.consumer.start(ensure=False)
            self._start_pruner()

    # ------------------------------------------------------------------ inbox pruning

    async def prune_inbox(self) -> int:
        """One pruning pass: delete, batch by batch, the inbox rows of this consumer that are more than
        ``keep`` stream sequences below the checkpoint and older than ``retention``. Returns the rows deleted."""
        cfg = self.inbox_pruning
        sql = PRUNE_SQL.format(schema=self.schema)
        total = 0
        while True:
            async with self.pool.acquire() as conn:
                status = await conn.execute(sql, self.name, cfg.keep, float(cfg.retention), cfg.batch)
            deleted = int(status.split()[-1])
            total += deleted
            if deleted < cfg.batch:
                break
            await asyncio.sleep(cfg.pause)
        if total:
            log.info("inbox_pruned", projection=self.name, rows=total)
        return total

    def _start_pruner(self) -> None:
        if self.inbox_pruning.interval is not None and self._pruner is None:
            self._pruner = asyncio.create_task(self._prune_periodically(), name=f"prune:{self.name}")

    async def _stop_pruner(self) -> None:
        if self._pruner is not None:
            self._pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruner
            self._pruner = None

    async def _prune_periodically(self) -> None:
        interval = self.inbox_pruning.interval
        assert interval is not None
        while True:
            # Jitter spreads replicas (and the projections of one process) apart.
            await asyncio.sleep(interval * random.uniform(0.8, 1.2))
            try:
                await self.prune_inbox()
            except Exception as exc:  # noqa: BLE001 - pruning is housekeeping: try again next time
                log.warning("inbox_prune_failed", projection=self.name, error=repr(exc))

    async def _apply(self, env: Envelope, msg: Delivered) -> None:
        """Apply one event in its own transaction (the per-message path)."""
        await self._apply_batch([(env, msg)])

    async def _apply_batch(self, batch: Sequence[tuple[Envelope, Delivered]]) -> None:
        """Apply ``batch`` in stream order in ONE transaction. Raises (after the rollback) when anything fails: the
        consumer then applies the batch one message at a time."""
        token = _REPLAY_UNTIL.set(self.replay_until)  # (for ``replaying()``)
        try:
            await self._commit_batch(batch)
        finally:
            _REPLAY_UNTIL.reset(token)
        for env, msg in batch:
            await self._applied(env, msg)

    async def _commit_batch(self, batch: Sequence[tuple[Envelope, Delivered]]) -> None:
        """``_apply_batch``'s transaction."""
        pending: list[tuple[str, Envelope]] = []
        async with self.pool.acquire() as conn, conn.transaction():
            fresh: list[tuple[Envelope, Delivered]] = []
            for item, is_fresh in zip(batch, await self._claim(conn, batch), strict=True):
                if is_fresh:
                    fresh.append(item)
                else:
                    metrics.MESSAGES_DUPLICATE.labels(self.name).inc()
                    log.info("event_already_applied", projection=self.name,
                             stream_seq=item[1].metadata.sequence.stream)
            for (env, msg), outgoing in zip(fresh, await self._handle_fresh(conn, fresh), strict=True):
                if outgoing:
                    pending.extend(self._outgoing(env, msg, outgoing))
            await self._publish(pending)
            await self._advance(conn, max(msg.metadata.sequence.stream for _, msg in batch))

    async def _claim(self, conn: asyncpg.Connection, batch: Sequence[tuple[Envelope, Delivered]]) -> list[bool]:
        """In ONE statement of the caller's transaction, record every event id of ``batch`` in the inbox. Returns,
        per event, whether it is fresh (False: applied before, or an earlier copy in this batch). The checkpoint is
        written last (``_advance``), so a transaction hung in a handler holds no lock other replicas need."""
        ids = [env.id for env, _ in batch]
        seqs = [msg.metadata.sequence.stream for _, msg in batch]
        claimed = {row[0] for row in await conn.fetch(self._claim_sql, ids, self.name, seqs)}
        fresh = []
        for event_id in ids:
            fresh.append(event_id in claimed)
            claimed.discard(event_id)
        return fresh

    async def _handle_fresh(
        self, conn: asyncpg.Connection, fresh: list[tuple[Envelope, Delivered]]
    ) -> list[Sequence[Outgoing]]:
        """Inside the caller's transaction, apply the events ``_claim`` found fresh, in stream order: all at once
        through the ``batch_handler`` when there is one and more than one event, else one by one with ``_handle``.
        Returns each event's outgoing events."""
        if self.batch_handler is not None and len(fresh) > 1:
            token = _BATCH_SEQUENCES.set([msg.metadata.sequence.stream for _, msg in fresh])
            try:
                outgoing = await self.batch_handler([env for env, _ in fresh], conn)
            finally:
                _BATCH_SEQUENCES.reset(token)
            if len(outgoing) != len(fresh):
                raise RuntimeError(f"{self.name}: batch handler answered {len(outgoing)} of {len(fresh)} events")
            return outgoing
        return [await self._handle(env, msg, conn) for env, msg in fresh]

    def _outgoing(self, env: Envelope, msg: Delivered, outgoing: Sequence[Outgoing]) -> list[tuple[str, Envelope]]:
        """The handler's outgoing events as (subject, envelope with a deterministic id), none when replaying; the
        caller publishes them before it commits."""
        seq = msg.metadata.sequence.stream
        if outgoing and seq <= self.replay_until:
            self.suppressed += len(outgoing)
            outgoing = ()
        return [(out.subject, outgoing_envelope(env, index, out)) for index, out in enumerate(outgoing)]

    async def _publish(self, pending: list[tuple[str, Envelope]]) -> None:
        """Publish outgoing events, waiting for every acknowledgement: one subject's events in order, different
        subjects concurrently (a batch's decisions for many clusters then cost one round trip, not one each)."""
        by_subject: dict[str, list[Envelope]] = {}
        for subject, out_env in pending:
            by_subject.setdefault(subject, []).append(out_env)

        async def in_order(subject: str, envs: list[Envelope]) -> None:
            for out_env in envs:
                await self.bus.publish(subject, out_env, msg_id=out_env.id)

        await asyncio.gather(*(in_order(subject, envs) for subject, envs in by_subject.items()))

    async def _handle(self, env: Envelope, msg: Delivered, conn: asyncpg.Connection) -> Sequence[Outgoing]:
        """Run the handler for one fresh event inside the transaction ``conn`` (a subclass hook); the handler
        reads the event's stream sequence with ``current_sequence()``."""
        token = _SEQUENCE.set(msg.metadata.sequence.stream)
        try:
            return await self.handler(env, conn) or ()
        finally:
            _SEQUENCE.reset(token)

    async def _applied(self, env: Envelope, msg: Delivered) -> None:
        """Called once per event (fresh or duplicate) after the transaction that applied it committed, in stream
        order: tells ``on_applied``."""
        if self.on_applied is not None:
            await self.on_applied(env, msg.metadata.sequence.stream)

    async def _advance(self, conn: asyncpg.Connection, seq: int) -> None:
        await conn.execute(
            f"INSERT INTO {self.schema}.checkpoint (consumer, stream_seq) VALUES ($1, $2)"
            " ON CONFLICT (consumer) DO UPDATE SET stream_seq = GREATEST(checkpoint.stream_seq, EXCLUDED.stream_seq)",
            self.name,
            seq,
        )

    async def _skipped(self, seq: int) -> None:
        """The consumer acknowledges, unhandled, messages its wider server filter delivered that none of the
        projection's subjects match (services/runtime/consumer.py): the checkpoint moves past them first, so it
        stays at or above what the server counts as acknowledged (``start`` replays a store behind that)."""
        async with self.pool.acquire() as conn:
            await self._advance(conn, seq)

    async def _dead_lettered(self, msg: Msg) -> None:
        # A dead-lettered event is settled: move the checkpoint past it so a restart does not replay it.
        # Also called for a message the server dropped after max_deliver ack timeouts (``msg`` rebuilt from the
        # stream: only its metadata and data are meaningful).
        async with self.pool.acquire() as conn:
            await self._advance(conn, msg.metadata.sequence.stream)
        if self.on_applied is not None:
            await self.on_applied(None, msg.metadata.sequence.stream)
