"""The reconcile loop: one asyncio task per cluster that compares the desired state with what the cloud has and takes
the next idempotent step (CAPO's reconcileNormal / reconcileDelete), emitting the provisioner's events.

Which step: ``create.py`` (reconcileNormal), ``update.py`` (resize, nodegroups, upgrade) and ``delete.py``
(reconcileDelete); the first two converge the cluster's nodegroups through ``nodes.py``, the one code path that
boots nodes (a create is an update from zero nodes), and its resources around them through ``infra.py``.

The provisioner is the single writer of ``cove.evt.provisioner.cluster.<uuid>``: every publish carries
``Nats-Expected-Last-Subject-Sequence`` (the last sequence the store recorded for the cluster) and a deterministic
``Nats-Msg-Id``. On a ConcurrencyConflict the task re-reads the subject's last sequence from the stream, waits until
its projection has applied that far, reloads and decides again; it never blindly retries a publish.

In N copies (docs/adr/0011), a cluster's task runs only in the copy holding the cluster's lease
(``provisioner.cluster.<uuid>`` in ``COVE_LEASES``): the task takes it before its first step and gives it up when it
ends; every publish is fenced (``lease.publish_fenced``: the lease still ours, its token in ``Cove-Lease``, and the
single-writer check as before); a lost lease cancels the task. An input event applied by a copy that does not hold
the lease is passed to the holder (``cove.provisioner.kick``), and every copy adopts, up to its fair share, the
clusters with work left whose lease nobody holds (a dead copy's, once their TTL passed).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import asyncpg
import nats.js.errors
import structlog

from proto import subjects
from proto.envelope import Envelope, new_envelope
from proto.events import Event, NodeBecameActive, NodeCreated, NodeFailed
from services.provisioner import billing, create, delete, health, model, observe, store, update
from services.provisioner.cloud import Cloud, CloudError, Flavor
from services.provisioner.state import Outcome, Recheck, ReconcilerSettings, TaskState
from services.provisioner.tracking import PRODUCER, AppliedTracker, event_id
from services.runtime.bus import Bus, ConcurrencyConflict
from services.runtime.lease import Lease, LeaseLost, Leases, publish_fenced

log = structlog.get_logger(__name__)

KICKING_EVENTS = frozenset({
    "ClusterCreateRequested", "ClusterCACreated", "ClusterDeleteRequested", "ClusterUpdateRequested",
    "NodeGroupCreateRequested", "NodeGroupDeleteRequested", "ClusterUpgradeRequested", "ClusterCAReplaced",
})
"""Input events after which a cluster's task must decide again."""

LOOK_THREADS = 4
"""Threads for the deletes' billing looks (a show per volume or load balancer going away, every half second, only
while a teardown call runs: at most the cloud pool's size of clusters at once)."""

LEASE_PREFIX = "provisioner.cluster."
COPY_PREFIX = "provisioner.copy."
COPY_HEADER = "Cove-Copy"


def lease_key(cluster_id: str) -> str:
    """The key of a cluster's lease in ``COVE_LEASES``."""
    return f"{LEASE_PREFIX}{cluster_id}"


class Reconciler:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        bus: Bus,
        cloud: Cloud,
        tracker: AppliedTracker,
        settings: ReconcilerSettings | None = None,
        leases: Leases | None = None,
    ) -> None:
        self.pool = pool
        self.leases = leases
        """This copy's leases; None: the only copy, no lease taken (tests and benchmarks that build one)."""
        self._leases: dict[str, Lease] = {}
        self._copy_lease: Lease | None = None
        self._adopter: asyncio.Task[None] | None = None
        self._orphans_seen: set[str] = set()
        """The orphans the latest adoption pass found (``adopt``)."""
        self._kick_sub: object | None = None
        self.forwarded = 0
        """Kicks passed to the copy holding the cluster's lease."""
        self.bus = bus
        self.notes = billing.Notes(bus.js)
        """What a cluster's delete last saw of its billed resources (for the copy resuming it: ``billing.py``)."""
        self.cloud = cloud
        self.looks = ThreadPoolExecutor(max_workers=LOOK_THREADS, thread_name_prefix="cove-billing-looks")
        """Where a delete's looks at its volumes and load balancer going away run (``billing.watch_going``): their
        timing is what a volume's end is, and in the cloud pool they queued behind every other cluster's calls."""
        self.tracker = tracker
        self.settings = settings = settings or ReconcilerSettings()
        self._sem = asyncio.Semaphore(settings.max_active)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._kicks: dict[str, asyncio.Event] = {}
        self._trusts_in_use: collections.Counter[str] = collections.Counter()
        self._stopping = False
        self.traces = observe.ClusterTraces()
        self._collector = observe.builds_in_flight_collector(pool)
        self.watcher: health.Views | None = None
        """The provisioner's watch of the cloud (``watch.py``): what a health pass reads of the servers."""

    # ------------------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        if self.leases is not None:
            self._kick_sub = await self.bus.nc.subscribe(subjects.PROVISIONER_KICK, cb=self._kicked)
            await self.adopt()
            self._adopter = asyncio.create_task(self._adopt_forever(), name="reconcile-adopter")
        else:
            for cluster_id in await store.clusters_needing_work(self.pool):
                self.ensure(cluster_id)
        log.info("reconciler_started", resumed=len(self._tasks))

    async def stop(self) -> None:
        self._stopping = True
        observe.forget_collector(self._collector)
        if self._adopter is not None:
            self._adopter.cancel()
            await asyncio.gather(self._adopter, return_exceptions=True)
        if self._kick_sub is not None:
            with contextlib.suppress(Exception):
                await self._kick_sub.unsubscribe()  # type: ignore[attr-defined]
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        if self.leases is not None and self._copy_lease is not None:
            await self.leases.release(self._copy_lease)
        self.looks.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------------------------------- leases

    @property
    def held(self) -> list[str]:
        """The clusters whose lease this copy holds (their tasks run here)."""
        return [c for c, lease in self._leases.items() if lease.held]

    async def adopt(self) -> int:
        """Take the clusters with work left whose lease nobody holds (never taken, released, or a dead copy's
        expired) or a predecessor of this copy held (the same copy id: restarted), up to this copy's fair share of
        them: their count over the live copies. Returns how many."""
        assert self.leases is not None
        if self._copy_lease is None or not self._copy_lease.held:
            self._copy_lease = await self.leases.acquire(f"{COPY_PREFIX}{self.leases.holder}")
        needing = await store.clusters_needing_work(self.pool)
        free = [c for c in needing if c not in self._tasks]
        if not free:
            self._orphans_seen = set()
            return 0
        live = await self.leases.live(LEASE_PREFIX)
        me = self.leases.holder
        orphans = [c for c in free if live.get(lease_key(c), me) == me]
        # An orphan a pass before this one saw too was left by every copy's share: taken whatever the share.
        # The shares add up to the clusters needing work only while every copy adopts; a copy whose adopter
        # stalls (a NATS node lost under its listing) would otherwise strand what no other copy's share covers
        # (seen: the last 2 clusters of 20, with 2 copies: share 1 each, one taken, one left CREATE_IN_PROGRESS).
        overdue = [c for c in orphans if c in self._orphans_seen]
        self._orphans_seen = set(orphans)
        if not orphans:
            return 0
        copies = max(1, len(set((await self.leases.live(COPY_PREFIX)).values())))
        share = math.ceil(len(needing) / copies)
        mine = sum(1 for c in needing if c in self._tasks)
        random.shuffle(orphans)  # copies adopting at once start from different ends
        chosen = dict.fromkeys([*overdue, *orphans[:max(0, share - mine)]])
        for cluster_id in chosen:
            self.ensure(cluster_id, forwarded=True)
        if chosen:
            log.info("reconcile_adopting", clusters=len(chosen), overdue=len(overdue), share=share, copies=copies)
        return len(chosen)

    ADOPT_TIMEOUT = 30.0
    """Seconds one adoption pass may take (two listings of the leases and one query) before it is abandoned and
    the next period tries again: a pass that hung would end this copy's adoptions for good."""

    async def _adopt_forever(self) -> None:
        assert self.leases is not None
        while not self._stopping:
            await asyncio.sleep(self.leases.settings.ttl / 2)
            try:
                await asyncio.wait_for(self.adopt(), max(self.ADOPT_TIMEOUT, 10 * self.leases.settings.ttl))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - NATS or the database: the next period tries again
                log.warning("reconcile_adopt_failed", error=repr(exc))

    async def _kicked(self, msg: object) -> None:
        """A kick another copy passed on: this copy may hold the cluster's lease (or take it, if now free)."""
        headers = getattr(msg, "headers", None) or {}
        if self.leases is not None and headers.get(COPY_HEADER) == self.leases.holder:
            return
        self.kick(getattr(msg, "data", b"").decode(), forwarded=True)

    async def _forward(self, cluster_id: str) -> None:
        assert self.leases is not None
        self.forwarded += 1
        with contextlib.suppress(Exception):
            await self.bus.nc.publish(subjects.PROVISIONER_KICK, cluster_id.encode(),
                                      headers={COPY_HEADER: self.leases.holder})

    async def _acquire(self, cluster_id: str, forwarded: bool) -> Lease | None:
        assert self.leases is not None

        def lost(lease: Lease) -> None:
            task = self._tasks.get(cluster_id)
            if self._leases.get(cluster_id) is lease and task is not None and task is not asyncio.current_task():
                log.warning("reconcile_lease_lost", cluster_id=cluster_id, reason=lease.reason)
                task.cancel()

        try:
            lease = await self.leases.acquire(lease_key(cluster_id), on_lost=lost)
        except Exception as exc:  # noqa: BLE001 - NATS unreachable: the adopter tries again
            log.warning("reconcile_lease_failed", cluster_id=cluster_id, error=repr(exc))
            return None
        if lease is None and not forwarded:
            await self._forward(cluster_id)
        return lease

    @property
    def active(self) -> int:
        return len(self._tasks)

    def trust_in_use(self, trust_id: str) -> bool:
        """True while a reconcile pass that loaded this trust runs (the trust reaper must not delete it yet)."""
        return self._trusts_in_use[trust_id] > 0

    def on_applied(self, env: Envelope) -> None:
        """Projection callback: an input event (api, certs) about a cluster was committed."""
        self.traces.woke(env)
        if env.cluster_id is not None and env.type in KICKING_EVENTS:
            self.kick(env.cluster_id)

    def kick(self, cluster_id: str, *, forwarded: bool = False) -> None:
        """Decide again about the cluster: its task here wakes, or one starts (and, with leases, takes the
        cluster's lease or, when another copy holds it, passes the kick there unless it came from there)."""
        event = self._kicks.get(cluster_id)
        if event is not None:
            event.set()
        self.ensure(cluster_id, forwarded=forwarded)

    def ensure(self, cluster_id: str, *, forwarded: bool = False) -> None:
        if self._stopping or cluster_id in self._tasks:
            return
        self._kicks.setdefault(cluster_id, asyncio.Event())
        self._tasks[cluster_id] = asyncio.create_task(self._run(cluster_id, forwarded),
                                                      name=f"reconcile:{cluster_id}")

    # ------------------------------------------------------------------------------------------- the loop

    async def _run(self, cluster_id: str, forwarded: bool = False) -> None:
        kick = self._kicks[cluster_id]
        lease: Lease | None = None
        try:
            if self.leases is not None:
                lease = await self._acquire(cluster_id, forwarded)
                if lease is None:
                    kick.clear()  # passed to the holder: not ours to run again
                    return
                self._leases[cluster_id] = lease
            with structlog.contextvars.bound_contextvars(cluster_id=cluster_id):
                await self._loop(cluster_id, kick)
        except LeaseLost as exc:
            log.warning("reconcile_fenced", cluster_id=cluster_id, reason=exc.reason)
            kick.clear()
        finally:
            if lease is not None:
                if self._leases.get(cluster_id) is lease:
                    del self._leases[cluster_id]
                if self.leases is not None:
                    await self.leases.release(lease)
            if self._tasks.get(cluster_id) is asyncio.current_task():
                del self._tasks[cluster_id]
                if not kick.is_set():
                    self._kicks.pop(cluster_id, None)
                elif not self._stopping:
                    self.ensure(cluster_id)

    async def _loop(self, cluster_id: str, kick: asyncio.Event) -> None:
        state = TaskState()
        caught_up = False
        while not self._stopping:
            kick.clear()
            outcome = Outcome.POLL
            try:
                if not caught_up:
                    await self._catch_up(cluster_id)
                    caught_up = True
                row = await store.load_cluster(self.pool, cluster_id)
                if row is None:
                    outcome = Outcome.IDLE
                else:
                    trust = row.trust_id or ""
                    self._trusts_in_use[trust] += 1
                    try:
                        async with self._sem:
                            with self.traces.span(cluster_id, row.status):
                                outcome = await self._step(row, state)
                    finally:
                        self._trusts_in_use[trust] -= 1
                        if self._trusts_in_use[trust] <= 0:
                            del self._trusts_in_use[trust]
            except Recheck:
                caught_up = False
                continue
            except (asyncio.CancelledError, LeaseLost):
                raise
            except Exception as exc:  # noqa: BLE001 - the task survives NATS/DB/cloud hiccups
                state.failures += 1
                delay = min(0.25 * 2**state.failures, 10.0)
                log.warning("reconcile_failed", error=repr(exc), retry_in=delay, failures=state.failures)
                caught_up = False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(kick.wait(), delay)
                continue
            if outcome is Outcome.AGAIN:
                continue
            if outcome is Outcome.IDLE:
                if kick.is_set():
                    continue
                return  # _run's finally removes the task in the same step: a later kick starts a new one
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(kick.wait(), self.settings.poll_interval)

    async def _catch_up(self, cluster_id: str) -> None:
        """Wait until the store has applied every event already on the cluster's provisioner subject.

        Asked of the cluster's own row (``last_seq``), not of the projection's highest applied sequence: after a
        crash, the events the dead process had fetched but not acknowledged come back only after the consumer's
        ack_wait, while newer events of other clusters are applied meanwhile. Publishing from such a row would
        conflict again and again (the SIGKILL chaos test saw thousands of conflicts a minute)."""
        subject = subjects.cluster_events(PRODUCER, cluster_id)
        try:
            last = (await self.bus.js.get_last_msg(subjects.EVENTS_STREAM, subject)).seq or 0
        except nats.js.errors.NotFoundError:
            last = 0
        deadline = asyncio.get_running_loop().time() + self.settings.catch_up_timeout
        while await store.last_seq(self.pool, cluster_id) < last:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError(f"the store has not applied the cluster's events up to {last}")
            with contextlib.suppress(TimeoutError):
                # the next commit here, or a second (with copies, another copy may apply it: a tenth)
                await self.tracker.wait(self.tracker.seq + 1, min(left, 1.0 if self.leases is None else 0.1))

    async def _step(self, row: store.ClusterRow, st: TaskState) -> Outcome:
        if row.desired == "absent":
            return await delete.reconcile(self, row, st)
        if row.status in model.UPDATABLE and row.update_generation > row.update_done and row.spec is not None:
            return await update.reconcile(self, row, st)
        if row.spec is not None and row.status in health.WATCHED:
            prime = getattr(self.watcher, "prime", None)
            if prime is not None:
                await prime(row.uuid)  # a copy that does not list the cloud asks the one that does, once
            return await health.reconcile(self, row, st)  # health, lost nodes, auto-healing (watch.py kicks)
        if row.spec is None or row.ca_cert_pem is None or row.status in (model.CREATE_FAILED, *model.UPDATABLE):
            return Outcome.IDLE
        return await create.reconcile(self, row, st)

    # ------------------------------------------------------------------------------------------- shared by the paths

    def past_deadline(self, started: datetime | None, minutes: float) -> bool:
        """Whether an operation that started at ``started`` (an event's time, so a restart keeps the deadline) has
        run longer than ``minutes`` (of ``settings.minute_seconds`` each)."""
        if started is None:
            return False
        limit = timedelta(seconds=minutes * self.settings.minute_seconds)
        return datetime.now(UTC) - started > limit

    async def emit(self, row: store.ClusterRow, payload: Event, key: str) -> None:
        """Publish one of the provisioner's events about ``row`` (idempotent by ``key``) and wait until the store
        applied it; raises Recheck when the subject moved under us."""
        await self.emit_many(row, [(payload, key)])

    async def emit_many(self, row: store.ClusterRow, events: Sequence[tuple[Event, str]]) -> None:
        """Publish several events about ``row`` in order, each expecting the one before it as the subject's last
        (the single-writer check), and wait once, for the last, until the store applied them: a pass that saw a
        thousand servers go ACTIVE does not wait a thousand times for its own projection."""
        if not events:
            return
        subject = subjects.cluster_events(PRODUCER, row.uuid)
        lease = self._leases.get(row.uuid) if self.leases is not None else None
        if self.leases is not None and lease is None:
            raise LeaseLost(lease_key(row.uuid), "not held by this copy")
        for i, (payload, key) in enumerate(events):
            env_id = event_id(row.uuid, key)
            env = new_envelope(payload, project_id=row.project_id, cluster_id=row.uuid,
                               correlation_id=row.correlation_id, id=env_id)
            try:
                if lease is not None and self.leases is not None:
                    # the key read once per run: the run's later publishes each expect the one before it
                    ack = await publish_fenced(self.bus, self.leases, lease, subject, env, msg_id=env_id,
                                               expected_last_subject_seq=row.last_seq, check=i == 0)
                else:
                    ack = await self.bus.publish(subject, env, msg_id=env_id, expected_last_subject_seq=row.last_seq)
            except ConcurrencyConflict as exc:
                log.warning("emit_conflict", event_type=env.type, key=key, expected=row.last_seq)
                raise Recheck() from exc
            log.info("event_emitted", event_type=env.type, key=key, seq=ack.seq, duplicate=ack.duplicate)
            # a duplicate (an event a restarted task reports again) acks the original's older sequence: the subject's
            # last stays what we expected, so never step back to it (the next publish would conflict)
            row.last_seq = max(row.last_seq, ack.seq)
        await self._applied(row.uuid, row.last_seq)

    async def _applied(self, cluster_id: str, seq: int) -> None:
        """Wait until the store has applied the cluster's events up to ``seq``. One copy: its own projection's
        progress says it. Copies share the store and its consumer, so another copy may apply them: the cluster's
        row says it, asked after each commit here or after a wait growing from 5 ms to 50 ms. (A flat 50 ms made
        every event another copy applied, half of them with 2 copies, cost up to 50 ms: a delete emits 4 or more
        times, and deletes ran about 15% slower with 2 copies than with 1.)"""
        if self.leases is None:
            await self.tracker.wait(seq, self.settings.catch_up_timeout)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.catch_up_timeout
        step = 0.005
        while True:
            with contextlib.suppress(TimeoutError):
                await self.tracker.wait(seq, step)
            if await store.last_seq(self.pool, cluster_id) >= seq:
                return
            if loop.time() > deadline:
                raise TimeoutError(f"the store has not applied the cluster's events up to {seq}")
            if self.tracker.seq >= seq:
                await asyncio.sleep(step)  # applied here past it: the rest is another copy's, or in its commit
            step = min(step * 2, 0.05)

    async def attempt(
        self,
        row: store.ClusterRow,
        st: TaskState,
        steps: Callable[[Reconciler, store.ClusterRow, TaskState], Awaitable[Outcome]],
        failed: Callable[[Reconciler, store.ClusterRow, str], Awaitable[Outcome]],
    ) -> Outcome:
        """One pass of the create, update or delete path: a failure the cloud will repeat (or no trust to act
        with) ends the operation through `failed`, with a reason a user can act on; others back off and retry."""
        if row.spec is None or not row.trust_id:
            return await failed(self, row, "The cluster has no trust: Cove cannot act in the project")
        try:
            outcome = await steps(self, row, st)
        except CloudError as err:
            st.failures += 1
            if err.permanent or st.failures >= self.settings.max_transient_failures:
                return await failed(self, row, err.reason)
            log.warning("cloud_call_failed", reason=err.reason, failures=st.failures)
            await asyncio.sleep(min(0.25 * 2**st.failures, 5.0))
            return Outcome.POLL
        st.failures = 0
        return outcome

    async def emit_nodes_created(
        self, row: store.ClusterRow, created: Sequence[tuple[str, str, str, Flavor, str]],
        created_at: Mapping[str, datetime] | None = None,
    ) -> None:
        """NodeCreated for each (server id, name, role, flavor, nodegroup), in one emit_many; ``created_at``: when
        each server's create call returned (what accounting bills from). A server without one (found at the cloud,
        made by an earlier task) is billed from Nova's ``created``."""
        assert row.project_id is not None
        missing = [server_id for server_id, *_ in created if server_id not in (created_at or {})]
        if missing:
            created_at = {**(created_at or {}), **await billing.server_starts(self, row, missing)}
        await self.emit_many(row, [(NodeCreated(
            cluster_id=row.uuid, project_id=row.project_id, node_name=name, role=role,  # type: ignore[arg-type]
            server_id=server_id, flavor_id=flavor.id, flavor_name=flavor.name,
            vcpus=flavor.vcpus, ram_mb=flavor.ram_mb, disk_gb=flavor.disk_gb, nodegroup=nodegroup,
            created_at=(created_at or {}).get(server_id),
        ), f"NodeCreated:{server_id}") for server_id, name, role, flavor, nodegroup in created])
        for server_id, name, role, _, _ in created:
            row.nodes[server_id] = model.KnownNode(server_id, name, role, model.NODE_CREATED)

    async def emit_node_states(
        self, row: store.ClusterRow, failed: Sequence[model.ServerView], became_active: Sequence[model.ServerView],
    ) -> str | None:
        """NodeFailed for every server in ERROR and, when none is, NodeBecameActive for the servers that just
        became ACTIVE. Returns the reason the pass fails (the first failed server's), or None."""
        project_id = row.project_id or ""
        if failed:
            await self.emit_many(row, [(NodeFailed(
                cluster_id=row.uuid, project_id=project_id, server_id=server.id, node_name=server.name,
                reason=server.fault or "the server went to ERROR without a fault message",
            ), f"NodeFailed:{server.id}") for server in failed])
            return model.node_failure_reason(failed[0].name, failed[0].fault)
        await self.emit_many(row, [(NodeBecameActive(
            cluster_id=row.uuid, project_id=project_id, server_id=server.id, node_name=server.name,
            role=server.role, addresses=server.addresses,  # type: ignore[arg-type]
        ), f"NodeBecameActive:{server.id}") for server in became_active])
        return None
