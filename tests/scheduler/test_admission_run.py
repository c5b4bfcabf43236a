"""The scheduler's batch handler against its per-event handler, on real PostgreSQL with the scheduler's migrations.

``Handlers.handle_batch`` decides a run of requests and decisions in memory from one read of the facts; it must
publish the same decisions and leave the same store as ``Handlers.handle`` applied one event at a time in stream
order (what the projection does when a batch is split, and what a replay with batches of one gives). Each stream is
applied both ways into its own fresh schema, then the outgoing events and every table are compared.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import structlog
from structlog.testing import capture_logs

from proto import subjects
from proto.envelope import Envelope, new_envelope
from proto.events import (
    ClusterAdmitted,
    ClusterCreateCompleted,
    ClusterCreateFailed,
    ClusterCreateRequested,
    ClusterDeleteCompleted,
    ClusterDeleteRequested,
    ClusterRejected,
    ClusterTemplate,
    Event,
    QuotaCreated,
    QuotaUpdated,
)
from services.runtime import db
from services.runtime.projection import Outgoing
from services.scheduler import handlers as scheduler_handlers
from services.scheduler.admission import quota_exceeded_message
from services.scheduler.handlers import PRODUCER, Handlers
from services.scheduler.service import MIGRATIONS

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DEFAULT_QUOTA = 2
FALLBACK_LOG = "admission_run_applied_one_by_one"
OVERRIDE_LOG = "admission_decision_overrides_store"


# ---------------------------------------------------------------------------------------------- shared helpers


class Schemas:
    """Fresh schemas with a service's migrations applied, each with its own pool (``search_path`` on the schema, as
    services/runtime/db.py sets it for a service); ``close`` drops them all."""

    def __init__(self, database_url: str, prefix: str) -> None:
        self.database_url, self.prefix = database_url, prefix
        self.made: list[tuple[str, asyncpg.Pool]] = []

    async def new(self, migrations: Path) -> asyncpg.Pool:
        schema = f"{self.prefix}_{uuid.uuid4().hex[:8]}"
        pool = await db.create_pool(self.database_url, schema, max_size=2)
        self.made.append((schema, pool))
        await db.migrate(pool, schema, migrations)
        return pool

    async def close(self) -> None:
        for schema, pool in self.made:
            await db.drop_schema(pool, schema)
            await pool.close()


async def snapshot(pool: asyncpg.Pool) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table of the pool's schema (but the migrations' bookkeeping), all columns, in a fixed
    order. Nothing is left out: a table or column a later migration adds is compared too."""
    async with pool.acquire() as conn:
        tables = [
            r["table_name"]
            for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
                " AND table_type = 'BASE TABLE' AND table_name <> 'schema_migrations' ORDER BY 1"
            )
        ]
        found: dict[str, list[dict[str, Any]]] = {}
        for table in tables:
            rows = [dict(r) for r in await conn.fetch(f"SELECT * FROM {db.ident(table)}")]
            found[table] = sorted(rows, key=lambda row: repr(sorted(row.items())))
    return found


# ---------------------------------------------------------------------------------------------- the stream


ADMIT = "admit"


class Stream:
    """A stream-ordered list of envelopes (one second apart, so every recorded time tells which event set it),
    the decision each request is expected to get, and optional batch boundaries (``cut``)."""

    def __init__(self) -> None:
        self.envs: list[Envelope] = []
        self.expected: list[list[Outgoing]] = []
        self.cuts: list[int] = []

    def add(self, payload: Event, project: str, cluster: str | None = None) -> Envelope:
        env = new_envelope(
            payload,
            project_id=project,
            cluster_id=cluster,
            occurred_at=T0 + timedelta(seconds=len(self.envs)),
        )
        self.envs.append(env)
        self.expected.append([])
        return env

    def request(
        self, project: str, name: str, expect: str | int, *, masters: int = 1, nodes: int = 1
    ) -> ClusterCreateRequested:
        """A new cluster; ``expect`` is ADMIT or the limit its rejection names."""
        cid = str(uuid.uuid4())
        template = ClusterTemplate(
            uuid=f"tpl-{project}", project_id=project, user_id="u", image_id="img", created_at=T0
        )
        req = ClusterCreateRequested(
            uuid=cid,
            name=name,
            project_id=project,
            user_id="u",
            template=template,
            master_count=masters,
            node_count=nodes,
        )
        self.add(req, project, cid)
        event: Event = (
            ClusterAdmitted(uuid=cid, project_id=project, master_count=masters, node_count=nodes, name=name)
            if expect == ADMIT
            else ClusterRejected(uuid=cid, project_id=project, reason=quota_exceeded_message(int(expect)),
                                 resource="Cluster")
        )
        self.expected[-1] = [
            Outgoing(subjects.cluster_events(PRODUCER, cid), event, project_id=project, cluster_id=cid)
        ]
        return req

    def repeat(self, req: ClusterCreateRequested) -> None:
        """The same request again in a new event (a client retry): no second decision."""
        self.add(req, req.project_id, req.uuid)

    def admitted(self, req: ClusterCreateRequested) -> None:
        """The scheduler's own ClusterAdmitted on ``req``, read back from the stream."""
        self.add(
            ClusterAdmitted(
                uuid=req.uuid,
                project_id=req.project_id,
                master_count=req.master_count,
                node_count=req.node_count,
                name=req.name,
            ),
            req.project_id,
            req.uuid,
        )

    def rejected(self, req: ClusterCreateRequested, limit: int) -> None:
        self.add(
            ClusterRejected(uuid=req.uuid, project_id=req.project_id, reason=quota_exceeded_message(limit),
                            resource="Cluster"),
            req.project_id,
            req.uuid,
        )

    def create_failed(self, req: ClusterCreateRequested) -> None:
        self.add(
            ClusterCreateFailed(uuid=req.uuid, project_id=req.project_id, status_reason="boom"),
            req.project_id,
            req.uuid,
        )

    def delete_requested(self, req: ClusterCreateRequested) -> None:
        self.add(ClusterDeleteRequested(uuid=req.uuid, project_id=req.project_id), req.project_id, req.uuid)

    def delete_completed(self, req: ClusterCreateRequested) -> None:
        self.add(ClusterDeleteCompleted(uuid=req.uuid, project_id=req.project_id), req.project_id, req.uuid)

    def quota(self, event: type[QuotaCreated | QuotaUpdated], project: str, limit: int) -> None:
        self.add(event(project_id=project, hard_limit=limit), project)

    def cut(self) -> None:
        """End a batch here (for ``batches``)."""
        self.cuts.append(len(self.envs))

    def batches(self, size: int | None = None) -> list[list[Envelope]]:
        """The envelopes in batches of ``size``, or (None) split only at the cuts."""
        if size is not None:
            return [self.envs[i : i + size] for i in range(0, len(self.envs), size)]
        bounds = [0, *self.cuts, len(self.envs)]
        return [self.envs[a:b] for a, b in itertools.pairwise(bounds) if b > a]


# ---------------------------------------------------------------------------------------------- applying


async def one_by_one(pool: asyncpg.Pool, handlers: Handlers, envs: list[Envelope]) -> list[list[Outgoing]]:
    """Each event with the per-event handler in its own transaction, in stream order."""
    outgoing: list[list[Outgoing]] = []
    for env in envs:
        async with pool.acquire() as conn, conn.transaction():
            outgoing.append(list(await handlers.handle(env, conn)))
    return outgoing


async def batched(
    pool: asyncpg.Pool, handlers: Handlers, batches: list[list[Envelope]]
) -> list[list[Outgoing]]:
    """Each batch in one transaction, as ``Projection._handle_fresh`` does: more than one event through the batch
    handler, a single one through the per-event handler."""
    outgoing: list[list[Outgoing]] = []
    for batch in batches:
        async with pool.acquire() as conn, conn.transaction():
            got: Sequence[Sequence[Outgoing]] = (
                await handlers.handle_batch(batch, conn)
                if len(batch) > 1
                else [await handlers.handle(batch[0], conn)]
            )
        assert len(got) == len(batch)
        outgoing.extend(list(out) for out in got)
    return outgoing


@pytest.fixture
async def schemas(database_url: str) -> AsyncIterator[Schemas]:
    made = Schemas(database_url, "sched_run")
    yield made
    await made.close()


async def both_ways(
    schemas: Schemas, stream: Stream, batches: list[list[Envelope]]
) -> tuple[list[list[Outgoing]], list[list[Outgoing]], dict[str, Any], dict[str, Any], list[str]]:
    """Apply ``stream`` one by one and in ``batches``, each into a fresh schema. Returns both outgoing lists, both
    snapshots and the log events of the batched application."""
    assert [env for batch in batches for env in batch] == stream.envs
    handlers = Handlers(DEFAULT_QUOTA)
    sequential_pool, batched_pool = await schemas.new(MIGRATIONS), await schemas.new(MIGRATIONS)
    sequential = await one_by_one(sequential_pool, handlers, stream.envs)
    # the services cache their loggers on first use (services/runtime/logging.py), which capture_logs cannot
    # reach: the handlers log through a logger made inside the capture for as long as it lasts
    cached = scheduler_handlers.log
    with capture_logs() as logs:
        scheduler_handlers.log = structlog.get_logger(scheduler_handlers.__name__)
        try:
            in_batches = await batched(batched_pool, handlers, batches)
        finally:
            scheduler_handlers.log = cached
    return (
        sequential,
        in_batches,
        await snapshot(sequential_pool),
        await snapshot(batched_pool),
        [entry["event"] for entry in logs],
    )


def usage(snap: dict[str, Any]) -> dict[str, int]:
    return {row["project_id"]: row["clusters"] for row in snap["project_usage"]}


# ---------------------------------------------------------------------------------------------- tests


def quota_story(a: str, b: str) -> Stream:
    """Two projects (``a`` with a quota row of 3, later 5; ``b`` on the default of 2, later a row of 1), requests
    interleaved with the scheduler's decisions confirming earlier ones, repeated requests, a failed create (still
    counts), deletes freeing quota and quota changes in the middle. Every decision in it is the one the scheduler
    takes, so the batch path decides it all in memory (no fallback)."""
    s = Stream()
    s.quota(QuotaCreated, a, 3)
    a1 = s.request(a, "a1", ADMIT)
    b1 = s.request(b, "b1", ADMIT)
    a2 = s.request(a, "a2", ADMIT, masters=3, nodes=5)
    s.admitted(a1)
    a3 = s.request(a, "a3", ADMIT)
    s.admitted(b1)
    a4 = s.request(a, "a4", 3)  # a's quota ran out within this run: rejected in memory as in stream order
    b2 = s.request(b, "b2", ADMIT, nodes=4)
    s.admitted(a2)
    s.repeat(a2)  # the same cluster asked for again: no second decision
    b3 = s.request(b, "b3", 2)
    a5 = s.request(a, "a5", 3)
    s.rejected(a4, 3)
    s.admitted(a3)
    s.admitted(b2)
    s.rejected(b3, 2)
    s.create_failed(a3)  # a failed create still counts
    a6 = s.request(a, "a6", 3)
    s.delete_completed(a1)  # frees one of a's
    a7 = s.request(a, "a7", ADMIT)
    a8 = s.request(a, "a8", 3)
    s.rejected(a5, 3)
    s.rejected(a6, 3)
    s.admitted(a7)
    s.quota(QuotaUpdated, a, 5)  # raised in the middle
    a9 = s.request(a, "a9", ADMIT)
    s.repeat(a4)  # a rejected cluster asked for again: still no decision
    a10 = s.request(a, "a10", ADMIT)
    a11 = s.request(a, "a11", 5)
    s.rejected(a8, 3)
    s.admitted(a9)
    s.delete_requested(b1)  # asked, not completed: still counts
    b4 = s.request(b, "b4", 2)
    s.quota(QuotaCreated, b, 1)  # below b's usage
    s.delete_completed(b1)
    b5 = s.request(b, "b5", 1)  # b2 still holds b's only place
    s.delete_completed(b2)
    b6 = s.request(b, "b6", ADMIT)
    b7 = s.request(b, "b7", 1)
    s.admitted(a10)
    s.rejected(a11, 5)
    s.rejected(b4, 2)
    s.rejected(b5, 1)
    s.admitted(b6)
    s.rejected(b7, 1)
    return s


@pytest.mark.parametrize("size", [None, 2, 5], ids=["whole-stream", "batches-of-2", "batches-of-5"])
async def test_batch_decides_and_stores_exactly_as_one_by_one(schemas: Schemas, size: int | None) -> None:
    a, b = f"pa-{uuid.uuid4().hex[:6]}", f"pb-{uuid.uuid4().hex[:6]}"
    stream = quota_story(a, b)
    sequential, in_batches, seq_snap, batch_snap, logs = await both_ways(
        schemas, stream, stream.batches(size or len(stream.envs))
    )
    # The per-event path is the reference: it takes the decisions the story says ...
    assert sequential == stream.expected
    assert usage(seq_snap) == {a: 5, b: 1}
    assert {"clusters", "project_usage", "quotas"} <= seq_snap.keys()
    # ... and the batch path publishes the same decisions for the same requests and leaves the same store.
    assert in_batches == sequential
    assert batch_snap == seq_snap
    # Every decision confirmed the store: the runs were decided in memory, never one event at a time.
    assert FALLBACK_LOG not in logs


def replayed_under_another_quota(a: str, b: str) -> Stream:
    """The stream was decided when the default quota was 1; the store is rebuilt with a default of 2, so the replay
    admits a2 where the published fact rejected it. The published decision wins; later requests count with it."""
    s = Stream()
    a1 = s.request(a, "a1", ADMIT)
    s.admitted(a1)
    # re-decided: admitted now (what the handler answers; the projection suppresses it when replaying)
    a2 = s.request(a, "a2", ADMIT)
    s.rejected(a2, 1)  # the fact: rejected
    s.request(a, "a3", ADMIT)  # a2 does not count, so a3 fits
    s.request(a, "a4", DEFAULT_QUOTA)
    s.request(b, "b1", ADMIT)
    return s


def store_admitted_decision_rejects(a: str, b: str) -> Stream:
    """The store admitted a2 (an earlier batch); the stream then says it was rejected."""
    s = Stream()
    s.request(a, "a1", ADMIT)
    a2 = s.request(a, "a2", ADMIT)
    s.cut()
    s.add(ClusterRejected(uuid=a2.uuid, project_id=a, reason="rejected elsewhere"), a, a2.uuid)
    s.request(a, "a3", ADMIT)
    s.request(a, "a4", DEFAULT_QUOTA)
    s.request(b, "b1", ADMIT)
    return s


def admitted_never_requested(a: str, b: str) -> Stream:
    """A ClusterAdmitted for a cluster whose request the store never saw: it counts against the quota."""
    s = Stream()
    s.request(a, "a1", ADMIT)
    ghost = str(uuid.uuid4())
    s.add(ClusterAdmitted(uuid=ghost, project_id=a, master_count=3, node_count=2, name="ghost"), a, ghost)
    s.request(a, "a2", DEFAULT_QUOTA)
    s.request(b, "b1", ADMIT)
    s.request(a, "a3", DEFAULT_QUOTA)
    return s


@pytest.mark.parametrize(
    "story",
    [replayed_under_another_quota, store_admitted_decision_rejects, admitted_never_requested],
    ids=lambda story: story.__name__,
)
async def test_decision_contradicting_the_store_gives_the_stream_order_result(
    schemas: Schemas, story: Any
) -> None:
    """The replay case: a decision in a run that does not confirm what the store holds changes a project's usage
    mid-run, so the requests after it must be decided with it (the batch path follows the change in memory)."""
    a, b = f"pa-{uuid.uuid4().hex[:6]}", f"pb-{uuid.uuid4().hex[:6]}"
    stream: Stream = story(a, b)
    sequential, in_batches, seq_snap, batch_snap, logs = await both_ways(schemas, stream, stream.batches())
    assert sequential == stream.expected
    assert in_batches == sequential
    assert batch_snap == seq_snap
    assert usage(seq_snap)[a] == DEFAULT_QUOTA
    assert OVERRIDE_LOG in logs  # the contradiction was noticed (not a run that happened to agree)


@pytest.mark.parametrize("size", [None, 2, 3, 7])
async def test_queued_builds_batched_exactly_as_one_by_one(schemas: Schemas, size: int | None) -> None:
    """With bounded builds (docs/adr/0008) a run's requests join the queue one at a time and the slots are filled
    after each: the same decisions, places and store whatever the batching."""
    handlers = Handlers(DEFAULT_QUOTA, max_builds=2)
    s = Stream()
    a, b, c = (f"{p}-{uuid.uuid4().hex[:6]}" for p in "abc")
    reqs = [s.request(a, "a1", ADMIT), s.request(a, "a2", ADMIT), s.request(a, "a3", ADMIT),
            s.request(b, "b1", ADMIT), s.request(a, "a4", ADMIT), s.request(c, "c1", ADMIT)]
    s.cut()
    s.admitted(reqs[0])
    s.admitted(reqs[1])
    s.add(ClusterCreateCompleted(uuid=reqs[0].uuid, project_id=a, api_address="x"), a, reqs[0].uuid)
    s.request(b, "b2", ADMIT)
    s.delete_requested(reqs[4])
    s.add(ClusterCreateCompleted(uuid=reqs[1].uuid, project_id=a, api_address="x"), a, reqs[1].uuid)
    s.request(c, "c2", ADMIT)
    sequential_pool, batched_pool = await schemas.new(MIGRATIONS), await schemas.new(MIGRATIONS)
    sequential = await one_by_one(sequential_pool, handlers, s.envs)
    in_batches = await batched(batched_pool, handlers, s.batches(size))
    assert in_batches == sequential
    assert await snapshot(batched_pool) == await snapshot(sequential_pool)
    names = {r.uuid: r.name for r in reqs}
    started = [names.get(o.payload.uuid, "?") for out in sequential for o in out
               if isinstance(o.payload, ClusterAdmitted)]
    assert started[:4] == ["a1", "a2", "b1", "c1"]  # B's and C's first go before A's third
