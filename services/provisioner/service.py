"""Wiring of the provisioner: one projection (api + certs cluster events and its own) feeding the reconciler.

The projection is the runtime's, like every other service's; its ``on_applied`` hook tells the reconcile tasks how
far the store has applied (they wait for their own events) and wakes the cluster an input event is about.

Environment (besides the runtime's COVE_NATS_URL, COVE_DATABASE_URL, COVE_HTTP_PORT):
    COVE_AUTH_URL                    identity root of the cloud (COVE_CLOUD_AUTH_URL also read)
    COVE_SERVICE_USER / _PASSWORD    the Cove service user (default cove / cove-pass), domain Default
    COVE_SERVICE_PROJECT             its own project (default service): trusts are deleted with that token
    COVE_PROVISIONER_CLOUD_THREADS   openstacksdk thread pool size (default 8)
    COVE_PROVISIONER_MAX_ACTIVE      clusters reconciled at the same time (default 16)
    COVE_PROVISIONER_POLL_INTERVAL   seconds between server list calls while building/deleting (default 0.25)
    COVE_PROVISIONER_DURABLE         the projection's durable consumer name (default provisioner)
    COVE_BOOTSTRAP_SECRET            secret the kubeadm bootstrap tokens are derived from
    COVE_PROVISIONER_SUBNET_CIDR     a cluster's private subnet when its spec names none (default 10.0.0.0/24)
    COVE_PROVISIONER_COE_NETWORKS    CIDRs where the provisioner may reach clusters' own APIs, to drain a Swarm
                                     node before deleting it (default 127.0.0.0/8: name the external network's)
    COVE_PROVISIONER_DRAIN_TIMEOUT   seconds a drain waits for a node's tasks to move elsewhere (default 60)
    COVE_PROVISIONER_UPDATE_TIMEOUT  minutes an update may take before UPDATE_FAILED (default 60)
    COVE_PROVISIONER_DELETE_TIMEOUT  minutes a delete may take before DELETE_FAILED (default 60)
    COVE_PROVISIONER_MINUTE_SECONDS  seconds in a minute of those deadlines and create_timeout (tests; default 60)
    COVE_PROVISIONER_ADDONS_DIR      the site add-ons (named cloud-init fragments; default deploy/addons)
    COVE_PROVISIONER_WATCH_INTERVAL  seconds between two changes-since listings of the cloud's servers (watch.py;
                                     default 0.2)
    COVE_PROVISIONER_WATCH_SCOPE     all (one all-tenants listing as the service user, default) or project (one per
                                     project through a trust)
    COVE_PROVISIONER_WATCH_RESOURCES_INTERVAL  seconds between two listings of load balancers and changed volumes
                                     (default 5)
    COVE_PROVISIONER_WATCH_VOLUME_SWEEP  seconds between two full volume listings, which see vanished volumes
                                     (default 60)
    COVE_PROVISIONER_API_CHECK_INTERVAL  seconds between two checks of a cluster's own API, the driver's health
                                     check (default 15; 0: none)
    COVE_PROVISIONER_API_CHECK_TIMEOUT  seconds each request of that check may take (default 5)
    COVE_PROVISIONER_MAX_REPAIRS_PER_NODEGROUP  nodes of a nodegroup auto-healing replaces at a time (default 1)
    COVE_PROVISIONER_TRUST_GRACE     seconds a rotated-away trust is kept before it is deleted (default 5)
    COVE_PROVISIONER_TRUST_HOLD      seconds an unused trust is kept after a cluster was last created with it
                                     (default: COVE_TRUST_REUSE_SECONDS + 60, or 0 when trusts are not shared)
    COVE_LEASE_TTL                   seconds a copy's lease outlives its last renewal (default 3; renewed every
                                     third of it): how soon another copy takes a dead copy's clusters, the trust
                                     reaper and the watch over (docs/adr/0011)
    COVE_PROVISIONER_COPY_ID         this copy's name in its leases, unique among the live copies (default
                                     <host>-<COVE_HTTP_PORT>, or <host>-<pid> on an ephemeral port): a copy
                                     started again under the same name takes its predecessor's leases at once

Copies: any number may run on one store and one durable consumer (they share the projection's messages); a
cluster's reconcile runs in the copy that holds its lease, the trust reaper and the watch's listing in the copy
that holds theirs (``services/runtime/lease.py``, ``loop.py``).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import structlog

from proto import subjects, trusts
from proto.envelope import Envelope
from proto.streams import PROVISIONER_CONSUMER
from services.provisioner import handlers, health, model, store
from services.provisioner.cloud import Cloud, CloudSettings, fetch_changes
from services.provisioner.drivers import addons
from services.provisioner.health import Observed, ResourceSeen
from services.provisioner.loop import COPY_HEADER, Reconciler
from services.provisioner.state import ReconcilerSettings
from services.provisioner.tracking import AppliedTracker
from services.provisioner.trusts import TrustReaper, TrustReaperSettings
from services.provisioner.watch import Watched, Watcher, WatchSettings
from services.runtime.lease import Lease, Leases, LeaseSettings, Singleton
from services.runtime.service import Service, ServiceConfig

log = structlog.get_logger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
SCHEMA = "provisioner"
FILTER_SUBJECTS = [
    subjects.producer_events("api", "cluster"),
    subjects.producer_events("certs", "cluster"),
    subjects.producer_events("provisioner", "cluster"),
    subjects.producer_events("scheduler", "cluster"),
]
"""The scheduler's: ``ClusterUpdateAdmitted`` / ``NodeGroupCreateAdmitted`` (decided on quota first, docs/adr/0008)."""


def reconciler_settings(extra: dict[str, str]) -> ReconcilerSettings:
    secret = extra.get("COVE_BOOTSTRAP_SECRET")
    if not secret:
        log.warning("bootstrap_secret_default", hint="set COVE_BOOTSTRAP_SECRET in production")
    return ReconcilerSettings(
        max_active=int(extra.get("COVE_PROVISIONER_MAX_ACTIVE", "16")),
        poll_interval=float(extra.get("COVE_PROVISIONER_POLL_INTERVAL", "0.25")),
        bootstrap_secret=(secret or "cove-dev-bootstrap-secret").encode(),
        default_subnet_cidr=extra.get("COVE_PROVISIONER_SUBNET_CIDR") or model.DEFAULT_SUBNET_CIDR,
        coe_networks=tuple(n.strip() for n in extra.get("COVE_PROVISIONER_COE_NETWORKS", "127.0.0.0/8").split(",")
                           if n.strip()),
        drain_timeout=float(extra.get("COVE_PROVISIONER_DRAIN_TIMEOUT", "60")),
        max_repairs_per_nodegroup=int(extra.get("COVE_PROVISIONER_MAX_REPAIRS_PER_NODEGROUP", "1")),
        update_timeout=float(extra.get("COVE_PROVISIONER_UPDATE_TIMEOUT", "60")),
        delete_timeout=float(extra.get("COVE_PROVISIONER_DELETE_TIMEOUT", "60")),
        minute_seconds=float(extra.get("COVE_PROVISIONER_MINUTE_SECONDS", "60")),
        addons=addons.Catalog.load(addons.directory_of(extra)),
    )


def build_service(config: ServiceConfig, *, durable: str | None = None) -> Service:
    """``COVE_PROVISIONER_DURABLE`` names the projection's durable consumer (default ``provisioner``)."""
    durable = durable or config.extra.get("COVE_PROVISIONER_DURABLE", "provisioner")
    svc = Service(config, schema=SCHEMA, migrations_dir=MIGRATIONS)
    cloud = Cloud(CloudSettings.from_env(config.extra))
    settings = reconciler_settings(config.extra)
    tracker = AppliedTracker()
    workers = Workers()

    async def applied(env: Envelope | None, seq: int) -> None:
        """After each commit of the projection: the reconcile tasks may read what it applied; an input event
        about a cluster wakes that cluster's task (and the trust reaper)."""
        await tracker.advance(seq)
        if env is not None:
            if workers.reconciler is not None:
                workers.reconciler.on_applied(env)
                if env.type in ("ClusterUpdateAdmitted", "NodeGroupCreateAdmitted") and env.cluster_id is not None:
                    workers.reconciler.kick(env.cluster_id)
            if workers.reaper is not None:
                workers.reaper.on_applied(env)

    svc.add_projection(durable, handlers.project, FILTER_SUBJECTS, PROVISIONER_CONSUMER, on_applied=applied)
    # The API asks which add-ons this cloud offers before it accepts an addons label (the catalog loaded at start).
    svc.add_rpc(subjects.PROVISIONER_ADDONS, settings.addons.answer, queue="provisioner")

    async def start_workers(s: Service) -> None:
        """Once the projection runs: the reconciler resumes every cluster with work left, the reaper its trusts."""
        assert s.pool is not None and s.bus is not None
        projection = next(p for p in s.projections if p.name == durable)
        await tracker.advance(await projection.checkpoint())
        while not s.started:  # the health port bound: no other live process of this host has this copy's name
            await asyncio.sleep(0.01)
        leases = await Leases.open(s.bus.js, holder=copy_id(config.extra, s.health.port),
                                   settings=lease_settings(config.extra))
        leases.start()
        workers.leases = leases
        reconciler = Reconciler(pool=s.pool, bus=s.bus, cloud=cloud, tracker=tracker, settings=settings,
                                leases=leases)
        reaper = TrustReaper(
            pool=s.pool, bus=s.bus, cloud=cloud, tracker=tracker, in_use=reconciler.trust_in_use,
            settings=TrustReaperSettings(
                rotation_grace=float(config.extra.get("COVE_PROVISIONER_TRUST_GRACE", "5")),
                hold=float(config.extra.get("COVE_PROVISIONER_TRUST_HOLD", trusts.hold_seconds(config.extra))),
            ),
        )
        reaper.leases = leases
        workers.reconciler, workers.reaper = reconciler, reaper
        await reconciler.start()

        async def lead_reaper(lease: Lease) -> None:
            reaper.lease = lease
            await reaper.start()

        workers.reaper_singleton = reaper_singleton = Singleton(
            leases, REAPER_LEASE, start_work=lead_reaper, stop_work=reaper.stop)
        reaper_singleton.start()
        s.health.add_check("trust_reaper", lambda: reaper.running or not reaper_singleton.leading)
        pool = s.pool

        async def load_watched() -> dict[str, Watched]:
            return {r["uuid"]: Watched(r["status"], r["project_id"], r["trust_id"])
                    for r in await store.watched_clusters(pool, sorted(health.WATCHED))}

        async def list_for_trust(trust_id: str, since: datetime) -> list[dict[str, Any]]:
            return await cloud.call(trust_id, lambda c: fetch_changes(c.conn, since, all_tenants=False))

        watcher = Watcher(cloud_settings=cloud.settings, load_watched=load_watched, kick=reconciler.kick,
                          settings=WatchSettings.from_env(config.extra), list_for_trust=list_for_trust)
        reconciler.watcher = workers.watcher = watcher
        await share_the_watch(s, watcher, reconciler, leases)
        workers.watch_singleton = Singleton(leases, WATCH_LEASE, start_work=lambda _: watcher.lead(True),
                                            stop_work=lambda: watcher.lead(False))
        workers.watch_singleton.start()
        watcher.start()
        s.health.add_check("watch", lambda: watcher.running)

    async def cleanup(s: Service) -> None:
        if workers.watch_singleton is not None:
            await workers.watch_singleton.stop()
        if workers.watcher is not None:
            await workers.watcher.stop()
        if workers.reaper_singleton is not None:
            await workers.reaper_singleton.stop()
        if workers.reaper is not None:
            await workers.reaper.stop()
        if workers.reconciler is not None:
            await workers.reconciler.stop()
        if workers.leases is not None:
            await workers.leases.stop()  # what is still held is released: another copy takes it at once
        cloud.close()

    svc.add_task(start_workers)
    svc.on_cleanup(cleanup)
    return svc


@dataclass
class Workers:
    """What the provisioner runs beside its projection, once the projection has started."""

    reconciler: Reconciler | None = None
    reaper: TrustReaper | None = None
    watcher: Watcher | None = None
    leases: Leases | None = None
    reaper_singleton: Singleton | None = None
    watch_singleton: Singleton | None = None


REAPER_LEASE = "provisioner.singleton.trust-reaper"
WATCH_LEASE = "provisioner.singleton.watch"


def copy_id(extra: dict[str, str], http_port: int | None = 0) -> str:
    """This copy's name in its leases' values. Unique among live copies: no two processes of one host hold one
    health port, so a process started again on the same configured port is the same copy's successor (and
    reclaims its leases at once instead of waiting out their TTL)."""
    configured = int(extra.get("COVE_HTTP_PORT", "0") or 0) and http_port
    name = (extra.get("COVE_PROVISIONER_COPY_ID")
            or f"{socket.gethostname()}-{configured if configured else os.getpid()}")
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


OBSERVED = msgspec.json.Decoder(list[Observed])
RESOURCES = msgspec.json.Decoder(list[ResourceSeen])
WATCH_CHUNK = 500
"""Observations per message (a first listing of 10,000 nodes would pass NATS's 1 MB payload limit in one)."""


async def share_the_watch(s: Service, watcher: Watcher, reconciler: Reconciler, leases: Leases) -> None:
    """One copy lists the cloud (the watch's singleton lease); the others keep its views of the servers, load
    balancers and volumes from what it sends (only changes; a copy lacking a cluster's asks once, ``prime``)."""
    assert s.bus is not None
    nc, me = s.bus.nc, leases.holder
    watcher.leading = False
    watcher.kick_received = lambda cluster_id: reconciler.kick(cluster_id, forwarded=True)

    async def publish(subject: str, items: list[Any]) -> None:
        for i in range(0, len(items), WATCH_CHUNK):
            await nc.publish(subject, msgspec.json.encode(items[i:i + WATCH_CHUNK]), headers={COPY_HEADER: me})

    async def publish_changes(changes: list[Observed]) -> None:
        await publish(subjects.PROVISIONER_WATCH_CHANGES, changes)

    async def publish_resources(changes: list[ResourceSeen]) -> None:
        await publish(subjects.PROVISIONER_WATCH_RESOURCES, changes)

    def from_another_copy(msg: Any) -> bool:
        return (msg.headers or {}).get(COPY_HEADER) != me and not watcher.leading

    def applying(decoder: Any, apply: Callable[[Any], object]) -> Callable[[Any], Awaitable[None]]:
        """A subscriber that decodes another copy's changes and hands them to ``apply``."""
        async def received(msg: Any) -> None:
            if from_another_copy(msg):
                try:
                    changes = decoder.decode(msg.data)
                except msgspec.DecodeError as exc:  # core NATS, no redelivery: logged and dropped
                    log.warning("watch_message_malformed", subject=msg.subject, error=str(exc))
                    return
                apply(changes)
        return received

    async def views_asked(msg: Any) -> None:
        if watcher.leading and msg.reply:
            await msg.respond(msgspec.json.encode(list(watcher.views_of(msg.data.decode()).values())))

    async def resources_asked(msg: Any) -> None:
        if watcher.leading and msg.reply:
            await msg.respond(msgspec.json.encode(list(watcher.resources_of(msg.data.decode()).values())))

    async def fetch_views(cluster_id: str) -> list[Observed]:
        return OBSERVED.decode((await nc.request(subjects.PROVISIONER_WATCH_VIEWS, cluster_id.encode(),
                                                 timeout=1.0)).data)

    async def fetch_resources(cluster_id: str) -> list[ResourceSeen]:
        return RESOURCES.decode((await nc.request(subjects.PROVISIONER_WATCH_RESOURCE_VIEWS, cluster_id.encode(),
                                                  timeout=1.0)).data)

    watcher.publish_changes, watcher.fetch_views = publish_changes, fetch_views
    watcher.publish_resources, watcher.fetch_resources = publish_resources, fetch_resources
    await nc.subscribe(subjects.PROVISIONER_WATCH_CHANGES, cb=applying(OBSERVED, watcher.receive))
    await nc.subscribe(subjects.PROVISIONER_WATCH_VIEWS, cb=views_asked)
    await nc.subscribe(subjects.PROVISIONER_WATCH_RESOURCES, cb=applying(RESOURCES, watcher.receive_resources))
    await nc.subscribe(subjects.PROVISIONER_WATCH_RESOURCE_VIEWS, cb=resources_asked)


def lease_settings(extra: dict[str, str]) -> LeaseSettings:
    return LeaseSettings(ttl=float(extra.get("COVE_LEASE_TTL", "3")))
