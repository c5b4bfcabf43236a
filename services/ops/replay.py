"""Rebuild a service's store from the event stream into a scratch schema, and swap it in while the service runs.

The scratch store is built by the service's own projection code (``ReplayProjection``: the runtime's
``Projection``, fed by this module instead of a durable consumer): the same inbox, the same checkpoint, the same
handlers and batch handlers, one transaction per batch of up to ``BATCH`` events. Nothing is published: every event
replayed is at or below the live store's checkpoint, so the live service already published what it caused. Since
the replay alone fills the fresh scratch store, it knows the scratch inbox: duplicates are told in memory and the
inbox rows written with COPY on a connection of their own (``InboxWriter``), where the live projection asks
PostgreSQL with its claim. One batch is applied while the next is read, decoded and sorted, and the cyclic garbage
collector runs less often meanwhile (``fewer_collections``).

The stream is read through an ordered push consumer (no acks, flow control; on the server one subject filter that
covers the service's, as its live consumer asks, each message matched here: ``services/ops/streamreader.py``): one
stream read, no round trip per batch, no nats-py ``Msg`` built per message; the messages are buffered up to a bound
(backpressure through flow control).

The swap (``swap``), in ONE PostgreSQL transaction (docs/operations.md, "Replaying a store"):

1. ``LOCK TABLE <schema>.inbox IN EXCLUSIVE MODE``: waits for the live projection's batch in flight to commit, then
   holds its next batch at its first statement (the inbox claim). Reads are not blocked (EXCLUSIVE lets
   ACCESS SHARE through): the API keeps answering.
2. Read the live checkpoint, now frozen, and replay the scratch store up to exactly that sequence.
3. ``ALTER SCHEMA <schema> RENAME TO <schema>_replaced``, ``ALTER SCHEMA <scratch> RENAME TO <schema>``, and name
   the scratch checkpoint row as the live one (it carries a name of its own until then, so the API's checkpoint
   NOTIFY does not announce the scratch store's progress as its own).
4. Commit. The held batch goes on against the renamed-in schema: PostgreSQL resolves names again after a lock wait
   and drops cached plans when a schema is renamed. The running service's durable consumer is untouched: its
   acknowledged position equals the new store's checkpoint, and anything redelivered is found in the new inbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import asyncpg
import structlog

from proto.envelope import Envelope, MalformedMessage, decode
from services.ops.connect import OpsError, Settings, connect_db, require_database
from services.ops.streamreader import StreamMessage, StreamReader
from services.ops.targets import ProjectionSpec, Target
from services.runtime import db
from services.runtime.bus import Bus
from services.runtime.consumer import subject_matcher
from services.runtime.projection import Delivered, Projection, ensure_tracking_tables

log = structlog.get_logger(__name__)

BATCH = 5000
"""Events applied per transaction while replaying: a batch's fixed costs (its transaction, the API's parking reads
and status sequences, the statements' round trips) spread over more events; 1,000 gave the API's store about 20,000
events/s, 5,000 about 23,000 (``python -m benchmarks replay``)."""
SCRATCH_CHECKPOINT_SUFFIX = "@replay"
LOCK_TIMEOUT = "30s"
NO_PUBLISH = 2**63 - 1

Step = list[tuple[Envelope, Delivered]] | tuple[int, str]
"""Of a replayed batch, for one projection: events to apply in one transaction, or (sequence, why) of one to skip."""

Progress = Callable[[int, int], None]
"""Told ``(events read so far, events to read)`` as the replay goes."""


GC_THRESHOLDS = (50_000, 20, 100)
"""Python's cyclic collector's thresholds while a replay runs (default 700, 10, 10): a replay makes and drops millions
of short-lived objects that form no cycle, and at the defaults the collector took about a tenth of its time."""
_gc_held = 0
_gc_before: tuple[int, ...] = ()


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """``GC_THRESHOLDS`` while the block runs (the first of nested or concurrent blocks keeps the thresholds it
    found, and the last to end puts them back)."""
    global _gc_held, _gc_before
    if _gc_held == 0:
        _gc_before = gc.get_threshold()
        gc.set_threshold(*GC_THRESHOLDS)
    _gc_held += 1
    try:
        yield
    finally:
        _gc_held -= 1
        if _gc_held == 0:
            gc.set_threshold(*_gc_before)


def scratch_schema(schema: str) -> str:
    return db.ident(f"{schema}_replay")


def replaced_schema(schema: str) -> str:
    return db.ident(f"{schema}_replaced")


def scratch_checkpoint(name: str) -> str:
    return f"{name}{SCRATCH_CHECKPOINT_SUFFIX}"


class InboxWriter:
    """Writes the scratch inbox's rows with COPY, on a connection of its own, while the replay applies the next
    batches on another: PostgreSQL does both at once (a tenth of a replay's time was its inbox, in the batch's
    transaction). ``close`` returns once every row given is written, and raises what a write raised."""

    COLUMNS = ("consumer", "event_id", "stream_seq")

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self.pool = pool
        self.schema = schema
        self._rows: list[tuple[str, str, int]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task = asyncio.create_task(self._run(), name=f"inbox:{schema}")

    def write(self, rows: list[tuple[str, str, int]]) -> None:
        if self._task.done():  # it failed: ``close`` says why
            return
        self._rows.extend(rows)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._rows:
                rows, self._rows = self._rows, []
                async with self.pool.acquire() as conn:
                    await conn.copy_records_to_table("inbox", schema_name=self.schema, columns=self.COLUMNS,
                                                     records=rows)
            if self._closing:
                return

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        await self._task

    async def cancel(self) -> None:
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task


class ReplayProjection(Projection):
    """A service's projection applied to a scratch schema by the replayer: publishes nothing, and records its
    checkpoint as ``<name>@replay`` until the swap names it ``<name>``."""

    def __init__(self, spec: ProjectionSpec, *, schema: str, pool: asyncpg.Pool, bus: Bus) -> None:
        super().__init__(
            name=spec.name, schema=schema, pool=pool, bus=bus, handler=spec.handler,
            filter_subjects=spec.filter_subjects, batch_handler=spec.batch_handler,
        )
        self.replay_until = NO_PUBLISH
        self.filter_subjects = list(spec.filter_subjects)
        self.checkpoint_name = scratch_checkpoint(spec.name)
        self.wanted = subject_matcher(self.filter_subjects)
        self.seen: set[str] = set()
        """The event ids in the scratch inbox: a replay fills a fresh store alone, so it tells a duplicate without
        asking PostgreSQL (``_claim``)."""
        self._claimed: list[tuple[str, str, int]] = []
        self.inbox: InboxWriter | None = None
        """Where committed events' inbox rows go (``Replayer.run`` sets it)."""
        self.applied = 0
        self.skipped: list[tuple[int, str]] = []
        """(stream sequence, reason) of events that failed alone: the live service dead-lettered them too."""

    async def checkpoint(self) -> int:
        async with self.pool.acquire() as conn:
            seq = await conn.fetchval(
                f"SELECT stream_seq FROM {self.schema}.checkpoint WHERE consumer = $1", self.checkpoint_name
            )
        return int(seq or 0)

    async def _advance(self, conn: asyncpg.Connection, seq: int) -> None:
        await conn.execute(
            f"INSERT INTO {self.schema}.checkpoint (consumer, stream_seq) VALUES ($1, $2)"
            " ON CONFLICT (consumer) DO UPDATE SET stream_seq = GREATEST(checkpoint.stream_seq, EXCLUDED.stream_seq)",
            self.checkpoint_name,
            seq,
        )

    async def _claim(self, conn: asyncpg.Connection, batch: Sequence[tuple[Envelope, Delivered]]) -> list[bool]:
        """``Projection._claim`` without a round trip: the fresh events are those not in ``seen`` (nor earlier in
        the batch). Their inbox rows go to ``inbox`` once the batch committed (``_apply_claimed``): nothing in the
        scratch store reads them before the swap, and ``Replayer.run`` returns only when they are written."""
        fresh: list[bool] = []
        claimed: set[str] = set()
        rows = []
        for env, msg in batch:
            new = env.id not in self.seen and env.id not in claimed
            fresh.append(new)
            if new:
                claimed.add(env.id)
                rows.append((self.name, env.id, msg.metadata.sequence.stream))
        self._claimed = rows
        return fresh

    async def _apply_claimed(self, batch: list[tuple[Envelope, Delivered]]) -> None:
        self._claimed = []
        await self._apply_batch(batch)
        # committed:
        self.seen.update(event_id for _, event_id, _ in self._claimed)
        assert self.inbox is not None  # (``apply`` checked)
        self.inbox.write(self._claimed)

    async def apply(self, batch: list[tuple[Envelope, Delivered]]) -> None:
        """Apply ``batch`` in one transaction; if it fails, one event at a time, skipping (and recording) an event
        that fails on its own, as the live consumer would have dead-lettered it."""
        if self.inbox is None:
            raise RuntimeError("a replay projection applies events only inside Replayer.run")
        try:
            await self._apply_claimed(batch)
        except Exception:  # noqa: BLE001 - applied again one by one, like the live consumer does
            for item in batch:
                try:
                    await self._apply_claimed([item])
                except Exception as exc:  # noqa: BLE001 - the live service dead-lettered it
                    seq = item[1].metadata.sequence.stream
                    self.skipped.append((seq, repr(exc)))
                    log.warning("replay_event_failed", projection=self.name, stream_seq=seq, error=repr(exc))
                    async with self.pool.acquire() as conn:
                        await self._advance(conn, seq)
        self.applied += len(batch)

    async def skip(self, seq: int, reason: str) -> None:
        self.skipped.append((seq, reason))
        async with self.pool.acquire() as conn:
            await self._advance(conn, seq)


@dataclass
class ReplayStats:
    service: str
    schema: str
    start_seq: int
    until_seq: int
    read: int = 0
    applied: int = 0
    seconds: float = 0.0
    skipped: list[tuple[int, str]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.applied / self.seconds if self.seconds > 0 else 0.0


class Replayer:
    """Builds ``target``'s store into a scratch schema (``prepare``, ``run``) and swaps it in (``swap``)."""

    def __init__(
        self, bus: Bus, settings: Settings, target: Target, *, scratch: str | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.bus = bus
        self.settings = settings
        self.target = target
        self.scratch = db.ident(scratch) if scratch else scratch_schema(target.schema)
        self.progress = progress
        self.pool: asyncpg.Pool | None = None
        self.catch_up: ReplayStats | None = None
        """What the last catch-up under the lock applied."""
        self._guard: asyncpg.Connection | None = None
        """Holds a session advisory lock on the scratch schema's name: one replay (or verify) of a store at a time."""
        self.projections: list[ReplayProjection] = []

    async def prepare(self) -> None:
        """A fresh scratch schema with the service's migrations and the projection's tracking tables."""
        url = require_database(self.settings)
        self._guard = await connect_db(self.settings)  # the one clear error when PostgreSQL is unreachable
        if not await self._guard.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", f"cove-ops:{self.scratch}"):
            await self._guard.close()
            self._guard = None
            raise OpsError(f"another cove command is building {self.scratch} in this database: wait for it to end")
        self.pool = await db.create_pool(url, self.scratch, min_size=1, max_size=4)
        await db.drop_schema(self.pool, self.scratch)
        await db.migrate(self.pool, self.scratch, self.target.migrations_dir)
        await ensure_tracking_tables(self.pool, self.scratch)
        self.projections = [
            ReplayProjection(spec, schema=self.scratch, pool=self.pool, bus=self.bus)
            for spec in self.target.projections
        ]

    async def start_at(self, seq: int) -> None:
        """Make the fresh store begin at stream sequence ``seq`` (its checkpoint just below it)."""
        assert self.pool is not None
        async with self.pool.acquire() as conn:
            for p in self.projections:
                await p._advance(conn, seq - 1)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None
        if self._guard is not None:
            await self._guard.close()  # ends the session: its advisory lock goes with it
            self._guard = None

    async def live_checkpoints(self, conn: asyncpg.Connection | None = None) -> dict[str, int]:
        """Each projection's checkpoint in the live store (0 when the schema or the row does not exist)."""
        own = conn is None
        conn = conn or await connect_db(self.settings)
        try:
            exists = await conn.fetchval(
                "SELECT to_regclass($1) IS NOT NULL", f"{self.target.schema}.checkpoint"
            )
            rows = (
                await conn.fetch(f"SELECT consumer, stream_seq FROM {self.target.schema}.checkpoint")
                if exists else []
            )
        finally:
            if own:
                await conn.close()
        found = {r["consumer"]: int(r["stream_seq"]) for r in rows}
        return {p.name: found.get(p.name, 0) for p in self.projections}

    async def run(self, until: dict[str, int] | int | None = None, *, start_seq: int | None = None) -> ReplayStats:
        """Apply the stream to the scratch store from each projection's scratch checkpoint (or ``start_seq``) up
        to ``until`` (per projection, or one sequence for all; default: the live store's checkpoints)."""
        if until is None:
            until = await self.live_checkpoints()
        limits = until if isinstance(until, dict) else {p.name: until for p in self.projections}
        starts = {p.name: (start_seq if start_seq is not None else await p.checkpoint() + 1) for p in self.projections}
        first = min(starts.values(), default=1)
        last = max(limits.values(), default=0)
        stats = ReplayStats(self.target.service, self.scratch, first, last)
        applied_before = sum(p.applied for p in self.projections)
        skipped_before = {p.name: len(p.skipped) for p in self.projections}
        started = time.perf_counter()
        reader = StreamReader(self.bus, [f for p in self.projections for f in p.filter_subjects], first, last)
        await reader.start()
        total = max(last - first + 1, 0)
        # Two batches in flight: one is applied (PostgreSQL's work, on its own core) while the next is read,
        # decoded and sorted (this process's work). Batches are applied one after another, in stream order.
        applying: asyncio.Task[None] | None = None
        assert self.pool is not None
        inbox = InboxWriter(self.pool, self.scratch)
        for p in self.projections:
            p.inbox = inbox
        with fewer_collections():
            try:
                while True:
                    msgs = await reader.next_batch(BATCH)
                    if not msgs:
                        break
                    steps = self._sorted(msgs, starts, limits)
                    if applying is not None:
                        await applying
                    applying = asyncio.create_task(self._apply_steps(steps))
                    stats.read += len(msgs)
                    if self.progress is not None:
                        self.progress(min(reader.last_seq - first + 1, total), total)
                if applying is not None:
                    await applying
                await inbox.close()
            finally:
                if applying is not None and not applying.done():
                    applying.cancel()
                    with contextlib.suppress(BaseException):
                        await applying
                await inbox.cancel()
                for p in self.projections:
                    p.inbox = None
                await reader.stop()
        stats.seconds = time.perf_counter() - started
        stats.applied = sum(p.applied for p in self.projections) - applied_before
        stats.skipped = [s for p in self.projections for s in p.skipped[skipped_before[p.name]:]]
        if self.progress is not None:
            self.progress(total, total)
        return stats

    def _sorted(self, msgs: list[StreamMessage], starts: dict[str, int], limits: dict[str, int]) -> list[list[Step]]:
        """Each projection's share of ``msgs`` (decoded, in stream order): runs of events to apply together, and
        the malformed ones to skip, each in its place."""
        out: list[list[Step]] = [[] for _ in self.projections]
        shares = [(starts[p.name], limits[p.name], p.wanted, steps) for p, steps in zip(self.projections, out)]
        for msg in msgs:
            seq = msg.seq
            env: Envelope | str
            try:
                env = decode(msg.data)
            except MalformedMessage as exc:
                env = f"malformed: {exc}"
            for start, limit, wanted, steps in shares:
                if not (start <= seq <= limit) or not wanted(msg.subject):
                    continue
                if isinstance(env, str):
                    steps.append((seq, env))
                elif steps and isinstance(steps[-1], list):
                    steps[-1].append((env, msg))
                else:
                    steps.append([(env, msg)])
        return out

    async def _apply_steps(self, steps: list[list[Step]]) -> None:
        for p, mine in zip(self.projections, steps, strict=True):
            for step in mine:
                if isinstance(step, list):
                    await p.apply(step)
                else:
                    await p.skip(*step)

    async def catch_up_frozen(self, conn: asyncpg.Connection) -> dict[str, int]:
        """Inside ``conn``'s open transaction: hold the live projection's writes (``LOCK ... inbox``), read its
        checkpoints, and replay the scratch store up to exactly them. Returns the checkpoints."""
        schema = self.target.schema
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{schema}.inbox"):
            await conn.execute(f"LOCK TABLE {schema}.inbox IN EXCLUSIVE MODE")
        live = await self.live_checkpoints(conn)
        for p in self.projections:
            behind = await p.checkpoint()
            if behind > live[p.name]:
                raise OpsError(
                    f"the scratch store of {self.target.service} ({p.name}) is at {behind}, past the live store's "
                    f"{live[p.name]}: replay again from the start"
                )
        self.catch_up = await self.run(live)
        return live

    async def swap(self, *, keep_old: bool = False) -> dict[str, int]:
        """Catch up under the lock and swap the scratch schema in (module docstring). Returns the checkpoints."""
        schema, old = self.target.schema, replaced_schema(self.target.schema)
        conn = await connect_db(self.settings)
        try:
            async with conn.transaction():
                live = await self.catch_up_frozen(conn)
                await conn.execute(f"DROP SCHEMA IF EXISTS {old} CASCADE")
                if await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema):
                    await conn.execute(f"ALTER SCHEMA {schema} RENAME TO {old}")
                await conn.execute(f"ALTER SCHEMA {self.scratch} RENAME TO {schema}")
                for p in self.projections:
                    await conn.execute(f"DELETE FROM {schema}.checkpoint WHERE consumer = $1", p.name)
                    # Written one below, then at its place: a listener to the checkpoint (the API's read cache)
                    # sees it go back, which says "the store was rebuilt: forget what you cached".
                    await conn.execute(
                        f"UPDATE {schema}.checkpoint SET consumer = $1, stream_seq = GREATEST(stream_seq - 1, 0)"
                        " WHERE consumer = $2", p.name, p.checkpoint_name,
                    )
                    await conn.execute(
                        f"UPDATE {schema}.checkpoint SET stream_seq = $2 WHERE consumer = $1", p.name, live[p.name]
                    )
            if not keep_old:
                await conn.execute(f"DROP SCHEMA IF EXISTS {old} CASCADE")
        finally:
            await conn.close()
        await self.close()
        log.info("store_swapped", service=self.target.service, schema=schema, checkpoints=live)
        return live


async def require_live_store(settings: Settings, target: Target) -> None:
    """``OpsError`` unless the service's store exists: replay and verify go up to its checkpoint, never past it."""
    conn = await connect_db(settings)
    try:
        found = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{target.schema}.checkpoint")
    finally:
        await conn.close()
    if not found:
        raise OpsError(
            f"no store {target.schema} in this database: start {target.service}, which builds it from the stream"
        )


async def drop_scratch(settings: Settings, scratch: str) -> None:
    conn = await connect_db(settings)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {db.ident(scratch)} CASCADE")
    finally:
        await conn.close()


async def replay(
    bus: Bus, settings: Settings, target: Target, *, start_seq: int | None = None, keep_old: bool = False,
    progress: Progress | None = None,
) -> ReplayStats:
    """``cove replay``: build the scratch store up to the live checkpoint, then swap it in (catching up under the
    lock). With ``start_seq`` the fresh store starts from that sequence (for a stream whose first events were
    removed by its limits: what came before is taken as never having happened)."""
    await require_live_store(settings, target)
    replayer = Replayer(bus, settings, target, progress=progress)
    try:
        await replayer.prepare()
        if start_seq is not None and start_seq > 1:
            await replayer.start_at(start_seq)
        stats = await replayer.run()
        await replayer.swap(keep_old=keep_old)
        if replayer.catch_up is not None:  # the events that came while the first pass ran
            more = replayer.catch_up
            stats.read, stats.applied = stats.read + more.read, stats.applied + more.applied
            stats.seconds += more.seconds
            stats.until_seq = max(stats.until_seq, more.until_seq)
            stats.skipped += more.skipped
    except BaseException:
        if replayer._guard is not None:  # the scratch schema is ours to drop (another replay's is not)
            with contextlib.suppress(Exception):
                await drop_scratch(settings, replayer.scratch)
        await replayer.close()
        raise
    return stats


