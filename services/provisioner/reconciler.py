"""The reconciler: one asyncio task per cluster that compares the desired state with what the cloud has and takes
the next idempotent step (CAPO's reconcileNormal / reconcileDelete), emitting the provisioner's events.

The provisioner is the single writer of ``cove.evt.provisioner.cluster.<uuid>``: every publish carries
``Nats-Expected-Last-Subject-Sequence`` (the last sequence the store recorded for the cluster) and a deterministic
``Nats-Msg-Id``. On a ConcurrencyConflict the task re-reads the subject's last sequence from the stream, waits until
its projection has applied that far, reloads and decides again; it never blindly retries a publish.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
import nats.js.errors
import structlog
from nats.aio.msg import Msg

from proto import subjects
from proto.envelope import Envelope, new_envelope
from proto.events import (
    ClusterCreateCompleted,
    ClusterCreateFailed,
    ClusterCreateStarted,
    ClusterDeleteCompleted,
    ClusterDeleteFailed,
    ClusterDeleteStarted,
    ClusterUpdateCompleted,
    ClusterUpdateFailed,
    ClusterUpdateStarted,
    Event,
    NodeBecameActive,
    NodeCreated,
    NodeDeleted,
    NodeFailed,
)
from services.provisioner import handlers, store
from services.provisioner import reconcile as rc
from services.provisioner import resize as rz
from services.provisioner.cloud import Cloud, CloudError, Flavor, NetworkRefs
from services.provisioner.cloudinit import NodeBoot, bootstrap_token, render_user_data
from services.runtime.bus import Bus, ConcurrencyConflict
from services.runtime.projection import Outgoing, Projection

log = structlog.get_logger(__name__)

EVENT_NAMESPACE = uuid.UUID("0c8f6a52-3a4e-4b7e-9f3e-6a2f1d0b7c44")
PRODUCER = "provisioner"


def event_id(cluster_id: str, key: str) -> str:
    """Deterministic envelope id (and Nats-Msg-Id) of the provisioner's event ``key`` about a cluster."""
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{cluster_id}:{key}"))


class AppliedTracker:
    """The highest stream sequence the provisioner's projection has applied; tasks wait on it."""

    def __init__(self, seq: int = 0) -> None:
        self.seq = seq
        self._cond = asyncio.Condition()

    async def advance(self, seq: int) -> None:
        async with self._cond:
            if seq > self.seq:
                self.seq = seq
                self._cond.notify_all()

    async def wait(self, seq: int, timeout: float) -> None:
        async with self._cond:
            await asyncio.wait_for(self._cond.wait_for(lambda: self.seq >= seq), timeout)


class ProvisionerProjection(Projection):
    """The runtime's Projection, telling each handler the event's stream sequence (to keep ``last_seq``) and
    telling the reconciler, after commit, what was applied."""

    def __init__(
        self, *args: object, tracker: AppliedTracker, on_applied: Callable[[Envelope], None], **kwargs: object
    ) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.tracker = tracker
        self.on_applied = on_applied

    async def start(self) -> None:
        await super().start()
        await self.tracker.advance(await self.checkpoint())

    async def _handle(self, env: Envelope, msg: Msg, conn: asyncpg.Connection) -> Sequence[Outgoing]:
        token = handlers.STREAM_SEQ.set(msg.metadata.sequence.stream)
        try:
            return await super()._handle(env, msg, conn)
        finally:
            handlers.STREAM_SEQ.reset(token)

    async def _applied(self, env: Envelope, msg: Msg) -> None:
        # After the commit that applied it (a fetched batch commits once), in stream order, duplicates included.
        await self.tracker.advance(msg.metadata.sequence.stream)
        self.on_applied(env)

    async def _dead_lettered(self, msg: Msg) -> None:
        await super()._dead_lettered(msg)
        await self.tracker.advance(msg.metadata.sequence.stream)


@dataclass(frozen=True)
class ReconcilerSettings:
    max_active: int = 16
    """Clusters whose step runs at the same time (the cloud thread pool bounds the calls further)."""
    poll_interval: float = 0.25
    """Seconds between the list calls while servers build or go away."""
    catch_up_timeout: float = 15.0
    max_transient_failures: int = 8
    bootstrap_secret: bytes = b"cove-dev-bootstrap-secret"


KICKING_EVENTS = frozenset({
    "ClusterCreateRequested", "ClusterCACreated", "ClusterDeleteRequested", "ClusterUpdateRequested",
    "NodeGroupCreateRequested", "NodeGroupDeleteRequested", "ClusterUpgradeRequested",
})
"""Input events after which a cluster's task must decide again."""


class Outcome(enum.Enum):
    AGAIN = "again"  # decide again right away (the store changed)
    POLL = "poll"  # the cloud is working: look again after poll_interval (or a kick)
    IDLE = "idle"  # nothing to do until a new event arrives


class Recheck(Exception):
    """The subject moved under us: re-read, catch up and decide again."""


@dataclass
class TaskState:
    """What one cluster's task remembers between passes (never needed for correctness after a restart)."""

    network: NetworkRefs | None = None
    security_group: str | None = None
    delete_requested: set[str] = field(default_factory=set)
    unrecorded: dict[str, rc.ServerView] = field(default_factory=dict)
    failures: int = 0


class Reconciler:
    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        bus: Bus,
        cloud: Cloud,
        tracker: AppliedTracker,
        settings: ReconcilerSettings = ReconcilerSettings(),
    ) -> None:
        self.pool = pool
        self.bus = bus
        self.cloud = cloud
        self.tracker = tracker
        self.settings = settings
        self._sem = asyncio.Semaphore(settings.max_active)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._kicks: dict[str, asyncio.Event] = {}
        self._trusts_in_use: collections.Counter[str] = collections.Counter()
        self._stopping = False

    # ------------------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        for cluster_id in await store.clusters_needing_work(self.pool):
            self.ensure(cluster_id)
        log.info("reconciler_started", resumed=len(self._tasks))

    async def stop(self) -> None:
        self._stopping = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    @property
    def active(self) -> int:
        return len(self._tasks)

    def trust_in_use(self, trust_id: str) -> bool:
        """True while a reconcile pass that loaded this trust runs (the trust reaper must not delete it yet)."""
        return self._trusts_in_use[trust_id] > 0

    def on_applied(self, env: Envelope) -> None:
        """Projection callback: an input event (api, certs) about a cluster was committed."""
        if env.cluster_id is not None and env.type in KICKING_EVENTS:
            self.kick(env.cluster_id)

    def kick(self, cluster_id: str) -> None:
        event = self._kicks.get(cluster_id)
        if event is not None:
            event.set()
        self.ensure(cluster_id)

    def ensure(self, cluster_id: str) -> None:
        if self._stopping or cluster_id in self._tasks:
            return
        self._kicks.setdefault(cluster_id, asyncio.Event())
        self._tasks[cluster_id] = asyncio.create_task(self._run(cluster_id), name=f"reconcile:{cluster_id}")

    # ------------------------------------------------------------------------------------------- the loop

    async def _run(self, cluster_id: str) -> None:
        kick = self._kicks[cluster_id]
        state = TaskState()
        caught_up = False
        try:
            with structlog.contextvars.bound_contextvars(cluster_id=cluster_id):
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
                                    outcome = await self._step(row, state)
                            finally:
                                self._trusts_in_use[trust] -= 1
                                if self._trusts_in_use[trust] <= 0:
                                    del self._trusts_in_use[trust]
                    except Recheck:
                        caught_up = False
                        continue
                    except asyncio.CancelledError:
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
                        return  # finally removes the task in the same step: a later kick starts a new one
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(kick.wait(), self.settings.poll_interval)
        finally:
            if self._tasks.get(cluster_id) is asyncio.current_task():
                del self._tasks[cluster_id]
                if not kick.is_set():
                    self._kicks.pop(cluster_id, None)
                elif not self._stopping:
                    self.ensure(cluster_id)

    async def _catch_up(self, cluster_id: str) -> None:
        """Wait until the store has applied every event already on the cluster's provisioner subject."""
        subject = subjects.cluster_events(PRODUCER, cluster_id)
        try:
            last = (await self.bus.js.get_last_msg(subjects.EVENTS_STREAM, subject)).seq or 0
        except nats.js.errors.NotFoundError:
            last = 0
        if last > self.tracker.seq:
            await self.tracker.wait(last, self.settings.catch_up_timeout)

    async def _emit(self, row: store.ClusterRow, payload: Event, key: str) -> None:
        env_id = event_id(row.uuid, key)
        env = new_envelope(
            payload, project_id=row.project_id, cluster_id=row.uuid, correlation_id=row.correlation_id, id=env_id
        )
        subject = subjects.cluster_events(PRODUCER, row.uuid)
        try:
            ack = await self.bus.publish(subject, env, msg_id=env_id, expected_last_subject_seq=row.last_seq)
        except ConcurrencyConflict as exc:
            log.warning("emit_conflict", event_type=env.type, key=key, expected=row.last_seq)
            raise Recheck() from exc
        log.info("event_emitted", event_type=env.type, key=key, seq=ack.seq, duplicate=ack.duplicate)
        row.last_seq = ack.seq
        await self.tracker.wait(ack.seq, self.settings.catch_up_timeout)

    # ------------------------------------------------------------------------------------------- decide

    async def _step(self, row: store.ClusterRow, st: TaskState) -> Outcome:
        if row.desired == "absent":
            return await self._reconcile_delete(row, st)
        if row.status in rc.UPDATABLE and row.update_generation > row.update_done and row.spec is not None:
            return await self._reconcile_update(row, st)
        if row.spec is None or row.ca_cert_pem is None or row.status in (rc.CREATE_FAILED, *rc.UPDATABLE):
            return Outcome.IDLE
        return await self._reconcile_create(row, st)

    def _project_failure(self, st: TaskState, err: CloudError) -> bool:
        """True when the error ends the operation (permanent, or transient too many times in a row)."""
        st.failures += 1
        if err.permanent or st.failures >= self.settings.max_transient_failures:
            return True
        log.warning("cloud_call_failed", reason=err.reason, failures=st.failures)
        return False

    # ---- create (reconcileNormal)

    async def _reconcile_create(self, row: store.ClusterRow, st: TaskState) -> Outcome:
        spec = row.spec
        assert spec is not None and row.ca_cert_pem is not None
        if row.status is None:
            await self._emit(row, ClusterCreateStarted(uuid=row.uuid, project_id=spec.project_id), "ClusterCreateStarted")
            return Outcome.AGAIN
        started = row.create_started_at or datetime.now(UTC)
        if datetime.now(UTC) - started > timedelta(minutes=spec.create_timeout):
            return await self._create_failed(
                row, f"Timed out after {spec.create_timeout} minutes waiting for the cluster's servers"
            )
        return await self._attempt(row, st, self._create_steps, self._create_failed)

    async def _attempt(
        self,
        row: store.ClusterRow,
        st: TaskState,
        steps: Callable[[store.ClusterRow, TaskState], Awaitable[Outcome]],
        failed: Callable[[store.ClusterRow, str], Awaitable[Outcome]],
    ) -> Outcome:
        """One pass of the create, update or delete path: a failure the cloud will repeat (or no trust to act
        with) ends the operation through `failed`, with a reason a user can act on; others back off and retry."""
        if row.spec is None or not row.trust_id:
            return await failed(row, "The cluster has no trust: Cove cannot act in the project")
        try:
            outcome = await steps(row, st)
        except CloudError as err:
            if self._project_failure(st, err):
                return await failed(row, err.reason)
            await asyncio.sleep(min(0.25 * 2**st.failures, 5.0))
            return Outcome.POLL
        st.failures = 0
        return outcome

    async def _ensure_infra(self, row: store.ClusterRow, st: TaskState) -> None:
        """The cluster's network and security group (found by their tags when they exist)."""
        spec = row.spec
        assert spec is not None and row.trust_id is not None
        trust = row.trust_id
        built = row.resolved
        prefix = rc.cluster_prefix(spec.name, row.uuid)
        api_port = built.apiserver_port
        if st.network is None:
            st.network = await self.cloud.call(trust, lambda c: c.ensure_network(
                prefix, row.uuid,
                fixed_network=built.fixed_network,
                fixed_subnet=built.fixed_subnet,
                external_network=built.external_network_id,
                cidr=built.fixed_subnet_cidr or rc.DEFAULT_SUBNET_CIDR,
                dns_nameserver=built.dns_nameserver,
            ))
        if st.security_group is None:
            st.security_group = await self.cloud.call(
                trust, lambda c: c.ensure_security_group(prefix, row.uuid, api_port)
            )

    async def _create_steps(self, row: store.ClusterRow, st: TaskState) -> Outcome:
        spec = row.spec
        assert spec is not None and row.trust_id is not None and row.ca_cert_pem is not None
        trust = row.trust_id
        built = row.resolved
        prefix = rc.cluster_prefix(spec.name, row.uuid)
        api_port = built.apiserver_port
        await self._ensure_infra(row, st)
        flavors = {
            rc.MASTER: await self.cloud.call(trust, lambda c: c.flavor(built.master_flavor_id)),
            rc.WORKER: await self.cloud.call(trust, lambda c: c.flavor(built.flavor_id)),
        }
        servers = await self.cloud.call(trust, lambda c: c.list_servers(prefix, row.uuid))
        desired = rc.desired_nodes(prefix, built.master_count, built.node_count)
        plan = rc.plan_create(desired, servers, row.nodes)

        for server in plan.to_record:
            await self._emit_node_created(row, server.id, server.name, server.role, flavors[server.role])
        failure = await self._emit_node_states(row, spec.project_id, plan.failed, plan.became_active)
        if failure is not None:
            return await self._create_failed(row, failure)
        if plan.complete:
            by_name = {s.name: s for s in servers}
            masters = [by_name[n.name].first_ip() or "" for n in desired if n.role == rc.MASTER]
            workers = [by_name[n.name].first_ip() or "" for n in desired if n.role == rc.WORKER]
            await self._emit(row, ClusterCreateCompleted(
                uuid=row.uuid, project_id=spec.project_id,
                api_address=rc.api_address(masters[0] if masters else None, built.apiserver_port),
                master_addresses=masters, node_addresses=workers,
                coe_version=built.labels.get("kube_tag"),
            ), "ClusterCreateCompleted")
            log.info("cluster_create_complete", nodes=len(desired))
            return Outcome.IDLE
        await self._create_missing(row, st, plan.to_create, servers, flavors, prefix, api_port)
        return Outcome.POLL

    async def _create_missing(
        self,
        row: store.ClusterRow,
        st: TaskState,
        missing: list[rc.DesiredNode],
        servers: list[rc.ServerView],
        flavors: dict[str, Flavor],
        prefix: str,
        api_port: int,
    ) -> None:
        """Masters first; workers once every master has an address to join."""
        spec = row.spec
        assert spec is not None and row.trust_id is not None and row.ca_cert_pem is not None
        assert st.network is not None
        trust = row.trust_id
        built = row.resolved
        masters = sorted((s for s in servers if s.role == rc.MASTER), key=lambda s: s.name)
        master_ip = masters[0].first_ip() if masters else None
        masters_ready = len(masters) >= built.master_count and all(m.first_ip() for m in masters)
        batch = [n for n in missing if n.role == rc.MASTER or masters_ready]
        if not batch:
            return
        image = await self.cloud.call(trust, lambda c: c.image(built.image_id))
        token = bootstrap_token(self.settings.bootstrap_secret, row.uuid)
        key_name = built.keypair
        network_id = st.network.network_id
        sg = rc.security_group_name(prefix) if st.security_group else None

        async def create(node: rc.DesiredNode) -> tuple[rc.DesiredNode, str | CloudError]:
            address = f"{master_ip}:{api_port}" if node.role == rc.WORKER and master_ip \
                else f"{rc.node_name(prefix, rc.MASTER, 0)}:{api_port}"
            user_data = render_user_data(NodeBoot(
                cluster_id=row.uuid, cluster_name=spec.name, node_name=node.name, role=node.role,
                ca_cert_pem=row.ca_cert_pem or "", api_address=address, bootstrap_token=token,
                labels=built.labels,
            ))
            flavor = flavors[node.role]
            try:
                sid = await self.cloud.call(trust, lambda c: c.create_server(
                    name=node.name, flavor_id=flavor.id, image_id=image,
                    network_id=network_id, security_group=sg, key_name=key_name,
                    metadata=rc.node_metadata(
                        row.uuid, node, image=image,
                        nodegroup=rz.DEFAULT_MASTER if node.role == rc.MASTER else rz.DEFAULT_WORKER,
                    ), user_data=user_data,
                ))
            except CloudError as err:
                return node, err
            return node, sid

        results = await asyncio.gather(*(create(n) for n in batch))
        first_error: CloudError | None = None
        for node, result in results:
            if isinstance(result, CloudError):
                first_error = first_error or result
                continue
            await self._emit_node_created(row, result, node.name, node.role, flavors[node.role])
        if first_error is not None:
            raise first_error

    async def _emit_node_states(
        self, row: store.ClusterRow, project_id: str, failed: Sequence[rc.ServerView],
        became_active: Sequence[rc.ServerView],
    ) -> str | None:
        """NodeFailed for every server in ERROR and, when none is, NodeBecameActive for the servers that just
        became ACTIVE. Returns the reason the pass fails (the first failed server's), or None."""
        for server in failed:
            await self._emit(row, NodeFailed(
                cluster_id=row.uuid, project_id=project_id, server_id=server.id, node_name=server.name,
                reason=server.fault or "the server went to ERROR without a fault message",
            ), f"NodeFailed:{server.id}")
        if failed:
            return rc.node_failure_reason(failed[0].name, failed[0].fault)
        for server in became_active:
            await self._emit(row, NodeBecameActive(
                cluster_id=row.uuid, project_id=project_id, server_id=server.id, node_name=server.name,
                role=server.role, addresses=server.addresses,  # type: ignore[arg-type]
            ), f"NodeBecameActive:{server.id}")
        return None

    async def _emit_node_created(
        self, row: store.ClusterRow, server_id: str, name: str, role: str, flavor: Flavor,
        *, nodegroup: str | None = None,
    ) -> None:
        assert row.project_id is not None
        await self._emit(row, NodeCreated(
            cluster_id=row.uuid, project_id=row.project_id, node_name=name, role=role,  # type: ignore[arg-type]
            server_id=server_id, flavor_id=flavor.id, flavor_name=flavor.name,
            vcpus=flavor.vcpus, ram_mb=flavor.ram_mb, disk_gb=flavor.disk_gb, nodegroup=nodegroup,
        ), f"NodeCreated:{server_id}")
        row.nodes[server_id] = rc.KnownNode(server_id, name, role, rc.NODE_CREATED)

    async def _create_failed(self, row: store.ClusterRow, reason: str) -> Outcome:
        assert row.project_id is not None
        log.warning("cluster_create_failed", reason=reason)
        await self._emit(
            row, ClusterCreateFailed(uuid=row.uuid, project_id=row.project_id, status_reason=reason),
            "ClusterCreateFailed",
        )
        return Outcome.IDLE

    # ---- update (resize, nodegroups, upgrade)

    async def _reconcile_update(self, row: store.ClusterRow, st: TaskState) -> Outcome:
        spec = row.spec
        assert spec is not None
        gen = row.update_generation
        if row.update_started < gen:
            await self._emit(row, ClusterUpdateStarted(
                uuid=row.uuid, project_id=spec.project_id, node_count=rz.worker_count(row.groups), generation=gen,
            ), f"ClusterUpdateStarted:{gen}")
            return Outcome.AGAIN
        return await self._attempt(row, st, self._update_steps, self._update_failed)

    async def _update_steps(self, row: store.ClusterRow, st: TaskState) -> Outcome:
        spec = row.spec
        assert spec is not None and row.trust_id is not None
        trust, built, gen = row.trust_id, row.resolved, row.update_generation
        prefix = rc.cluster_prefix(spec.name, row.uuid)
        api_port = built.apiserver_port
        await self._ensure_infra(row, st)
        groups: list[rz.GroupSpec] = []
        flavors: dict[str, Flavor] = {}
        for g in row.groups:
            image = None
            if g.present and not g.is_master:
                ref = g.image_ref or built.image_id
                image = await self.cloud.call(trust, lambda c, ref=ref: c.image(ref))  # type: ignore[misc]
                fref = g.flavor_id or built.flavor_id
                flavors[g.name] = await self.cloud.call(trust, lambda c, f=fref: c.flavor(f))  # type: ignore[misc]
            groups.append(rz.GroupSpec(
                name=g.name, role=g.role, node_count=g.node_count, present=g.present, is_default=g.is_default,
                nodes_to_remove=g.nodes_to_remove, image=image, flavor_id=g.flavor_id, image_ref=g.image_ref,
            ))
        servers = await self.cloud.call(trust, lambda c: c.list_servers(prefix, row.uuid))
        present = {s.id for s in servers}
        st.delete_requested &= present
        plan = rz.plan_update(prefix, groups, servers, row.nodes, st.delete_requested, row.max_batch_size)

        for server in servers:
            if server.id not in row.nodes:
                flavor = flavors.get(rz.group_of(server)) or next(iter(flavors.values()), None)
                if flavor is None:
                    flavor = await self.cloud.call(trust, lambda c: c.flavor(built.flavor_id))
                await self._emit_node_created(row, server.id, server.name, server.role, flavor,
                                              nodegroup=rz.group_of(server))
        for node in [n for sid, n in sorted(row.nodes.items()) if sid not in present and n.status != rc.NODE_DELETED]:
            await self._emit(row, NodeDeleted(
                cluster_id=row.uuid, project_id=spec.project_id, server_id=node.server_id, node_name=node.name,
                role=node.role,  # type: ignore[arg-type]
            ), f"NodeDeleted:{node.server_id}")
        failure = await self._emit_node_states(row, spec.project_id, plan.failed, plan.became_active)
        if failure is not None:
            return await self._update_failed(row, failure)
        if plan.complete:
            workers = [s.first_ip() or "" for s in sorted(servers, key=lambda s: s.name) if s.role == rc.WORKER]
            counts = {g.name: g.node_count for g in groups if g.present}
            await self._emit(row, ClusterUpdateCompleted(
                uuid=row.uuid, project_id=spec.project_id, node_count=rz.worker_count(groups),
                node_addresses=workers, generation=gen, nodegroup_counts=counts,
            ), f"ClusterUpdateCompleted:{gen}")
            log.info("cluster_update_complete", generation=gen, node_count=rz.worker_count(groups))
            return Outcome.IDLE
        for server in plan.to_delete:
            await self.cloud.call(trust, lambda c, sid=server.id: c.delete_server(sid))  # type: ignore[misc]
            st.delete_requested.add(server.id)
            log.info("node_delete_sent", server_id=server.id, node=server.name)
        if plan.to_create:
            masters = sorted((s for s in servers if s.role == rc.MASTER), key=lambda s: s.name)
            master_ip = masters[0].first_ip() if masters else None
            await self._create_group_nodes(row, st, plan.to_create, flavors, master_ip, api_port)
        return Outcome.POLL

    async def _create_group_nodes(
        self,
        row: store.ClusterRow,
        st: TaskState,
        nodes: list[tuple[rz.GroupSpec, rc.DesiredNode]],
        flavors: dict[str, Flavor],
        master_ip: str | None,
        api_port: int,
    ) -> None:
        spec = row.spec
        assert spec is not None and row.trust_id is not None and st.network is not None
        trust, built = row.trust_id, row.resolved
        prefix = rc.cluster_prefix(spec.name, row.uuid)
        token = bootstrap_token(self.settings.bootstrap_secret, row.uuid)
        network_id = st.network.network_id
        sg = rc.security_group_name(prefix) if st.security_group else None
        key_name = built.keypair
        address = f"{master_ip}:{api_port}" if master_ip else f"{rc.node_name(prefix, rc.MASTER, 0)}:{api_port}"

        async def create(group: rz.GroupSpec, node: rc.DesiredNode) -> tuple[rc.DesiredNode, str | CloudError]:
            user_data = render_user_data(NodeBoot(
                cluster_id=row.uuid, cluster_name=spec.name, node_name=node.name, role=node.role,
                ca_cert_pem=row.ca_cert_pem or "", api_address=address, bootstrap_token=token,
                labels=built.labels,
            ))
            flavor = flavors[group.name]
            try:
                sid = await self.cloud.call(trust, lambda c: c.create_server(
                    name=node.name, flavor_id=flavor.id, image_id=group.image or built.image_id,
                    network_id=network_id, security_group=sg, key_name=key_name,
                    metadata=rc.node_metadata(row.uuid, node, nodegroup=group.name, image=group.image),
                    user_data=user_data,
                ))
            except CloudError as err:
                return node, err
            return node, sid

        results = await asyncio.gather(*(create(g, n) for g, n in nodes))
        first_error: CloudError | None = None
        for (group, _), (node, result) in zip(nodes, results, strict=True):
            if isinstance(result, CloudError):
                first_error = first_error or result
                continue
            await self._emit_node_created(row, result, node.name, node.role, flavors[group.name],
                                          nodegroup=group.name)
        if first_error is not None:
            raise first_error

    async def _update_failed(self, row: store.ClusterRow, reason: str) -> Outcome:
        assert row.project_id is not None
        gen = row.update_generation
        log.warning("cluster_update_failed", reason=reason, generation=gen)
        await self._emit(row, ClusterUpdateFailed(
            uuid=row.uuid, project_id=row.project_id, status_reason=reason, generation=gen,
        ), f"ClusterUpdateFailed:{gen}")
        return Outcome.IDLE

    # ---- delete (reconcileDelete)

    async def _reconcile_delete(self, row: store.ClusterRow, st: TaskState) -> Outcome:
        project_id = row.project_id or ""
        if row.status == rc.DELETE_COMPLETE:
            return Outcome.IDLE
        if row.status == rc.DELETE_FAILED and not row.delete_pending:
            return Outcome.IDLE
        if row.delete_pending or row.status != rc.DELETE_IN_PROGRESS:
            await self._emit(
                row, ClusterDeleteStarted(uuid=row.uuid, project_id=project_id),
                f"ClusterDeleteStarted:{row.delete_generation}",
            )
            return Outcome.AGAIN
        if row.create_started_at is None and not row.nodes:
            # Nothing was ever built (every cloud call follows ClusterCreateStarted, and we caught up).
            return await self._delete_completed(row)
        return await self._attempt(row, st, self._delete_steps, self._delete_failed)

    async def _delete_steps(self, row: store.ClusterRow, st: TaskState) -> Outcome:
        spec = row.spec
        assert spec is not None and row.trust_id is not None
        trust = row.trust_id
        prefix = rc.cluster_prefix(spec.name, row.uuid)
        servers = await self.cloud.call(trust, lambda c: c.list_servers(prefix, row.uuid))
        for s in servers:
            if s.id not in row.nodes:
                st.unrecorded[s.id] = s
        known = dict(row.nodes)
        for sid, s in st.unrecorded.items():
            known.setdefault(sid, rc.KnownNode(sid, s.name, s.role, rc.NODE_CREATED))
        plan = rc.plan_delete(servers, known, st.delete_requested)
        for server in plan.to_delete:
            await self.cloud.call(trust, lambda c, sid=server.id: c.delete_server(sid))  # type: ignore[misc]
            st.delete_requested.add(server.id)
        for node in plan.gone:
            await self._emit(row, NodeDeleted(
                cluster_id=row.uuid, project_id=spec.project_id, server_id=node.server_id, node_name=node.name,
                role=node.role,  # type: ignore[arg-type]
            ), f"NodeDeleted:{node.server_id}")
            st.unrecorded.pop(node.server_id, None)
        if plan.servers_left:
            return Outcome.POLL
        await self.cloud.call(trust, lambda c: c.delete_network_resources(prefix, row.uuid))
        outcome = await self._delete_completed(row)
        self.cloud.forget(trust)
        return outcome

    async def _delete_completed(self, row: store.ClusterRow) -> Outcome:
        await self._emit(
            row, ClusterDeleteCompleted(uuid=row.uuid, project_id=row.project_id or ""), "ClusterDeleteCompleted"
        )
        log.info("cluster_delete_complete")
        return Outcome.IDLE

    async def _delete_failed(self, row: store.ClusterRow, reason: str) -> Outcome:
        log.warning("cluster_delete_failed", reason=reason)
        await self._emit(
            row, ClusterDeleteFailed(uuid=row.uuid, project_id=row.project_id or "", status_reason=reason),
            f"ClusterDeleteFailed:{row.delete_generation}",
        )
        return Outcome.IDLE

