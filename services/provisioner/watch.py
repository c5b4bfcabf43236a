"""The provisioner's watch of the cloud: for as long as a cluster exists (``health.WATCHED``), what its servers do.

One Nova ``GET /servers/detail?all_tenants=1&changes-since=<last>`` per interval (``COVE_PROVISIONER_WATCH_INTERVAL``,
default 0.2 s) for the whole provisioner, as the Cove service user, not a listing per cluster: the answer holds only
the servers that changed since the last one (deleted ones too, as ``DELETED``: Nova shows them to a changes-since
listing), so at 10,000 quiet nodes it is one small request five times a second. A server that belongs to a watched
cluster (its ``cove_cluster_id`` metadata) and looks different from the last time is recorded (``health.Observed``)
and its cluster's task is kicked; the task, the single writer of the cluster's subject, decides and publishes
(``health.reconcile``). Why all tenants and not a listing per project through a trust: one request per interval
whatever the number of projects, and no token per project to keep; Nova's default policy gives ``all_tenants`` to
admins, which Cove's service user is in its own project (Magnum's is too). Where a cloud refuses it (403), the watch
falls back to one changes-since listing per project through one of the project's trusts (``scope`` ``project``,
``COVE_PROVISIONER_WATCH_SCOPE``).

``changes-since`` is compared with the servers' ``updated`` at second resolution, so each listing reaches back
``overlap`` seconds (2 s) before the previous one's start: what changed twice in a second or under a clock skew is not
missed, and what is seen again unchanged is ignored. The first listing reaches back ``lookback`` (an hour): what
happened while no provisioner ran.

Load balancers and volumes (``resources_of``), every ``COVE_PROVISIONER_WATCH_RESOURCES_INTERVAL`` (5 s): Octavia has
no changes-since, so one listing of every project's load balancers (an admin's default); Cinder filters on
``updated_at`` (microversion 3.60), so one listing of the volumes updated since the last one, and every
``COVE_PROVISIONER_WATCH_VOLUME_SWEEP`` (60 s) a full one, the only way to see that a volume vanished (Cinder lists no
deleted volume). A watched cluster's load balancer (its tag) or volume (its ``cove_cluster_id`` metadata) that looks
different is recorded (``health.ResourceSeen``) and its cluster kicked, as for a server. Ports go with their servers
(docs/adr/0009-cloud-change-notifications.md).

The COE's health check is the cluster task's (``health.check_coe``); the watch keeps its state across tasks (``api``)
and kicks each watched cluster when its check is due (``COVE_PROVISIONER_API_CHECK_INTERVAL``, spread over the
interval), skipping clusters whose API the provisioner may not reach.

In N copies (docs/adr/0011) one copy lists: the one holding the singleton lease ``provisioner.singleton.watch``
(``lead``). It sends what it records to the others (``publish_changes``, on ``cove.provisioner.watch.changes``),
which keep the same views (``receive``) for the health passes of the clusters whose leases they hold; a copy that
lacks a cluster's views asks the leader for them once (``prime``, ``cove.provisioner.watch.views``). The load
balancers and volumes go the same way: what a resource listing changed (``publish_resources``, on
``cove.provisioner.watch.resources``; ``receive_resources`` kicks the clusters there) and, in ``prime``, a cluster's
resources as the leader last listed them (``cove.provisioner.watch.resource_views``). Without them a health pass in
a copy that does not list would judge a cluster by its servers alone and drop the leader's ``<lb>.status`` from its
reason. A new leader reaches back ``lookback`` again, and lists every volume at once (a sweep).

The COE health check's state (``api``) is not sent: the check runs in the copy that runs the cluster's health pass
(``health.check_coe``, with the client certificate that copy made), and that pass is the only reader of its verdict.
A copy that takes a cluster without that state checks at once; a copy that checked it within the last interval
shows that verdict until the interval passes (one interval old at most). The leader's ``kick_api_checks`` kicks
every watched cluster at the interval, wherever its pass then runs (the kick is passed to the holder).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import openstack
import structlog
from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3

from services.provisioner import model
from services.provisioner.cloud import (
    CloudSettings,
    cloud_time,
    fetch_changes,
    fetch_load_balancers,
    fetch_volumes,
)
from services.provisioner.health import ApiState, Observed, ResourceSeen

log = structlog.get_logger(__name__)

"""``host_status`` (a node whose hypervisor is down)."""


@dataclass(frozen=True)
class WatchSettings:
    interval: float = 0.2
    """Seconds between two listings (``COVE_PROVISIONER_WATCH_INTERVAL``)."""
    overlap: float = 2.0
    """How far each listing reaches back before the previous one's start (``COVE_PROVISIONER_WATCH_OVERLAP``)."""
    lookback: float = 3600.0
    """How far the first listing reaches back."""
    refresh: float = 1.0
    """Seconds between two reads of which clusters are watched (from the provisioner's store)."""
    scope: str = "all"
    """``all``: one all-tenants listing as the service user; ``project``: one listing per project via a trust."""
    resource_interval: float = 5.0
    """Seconds between two listings of load balancers and changed volumes (0: not watched;
    ``COVE_PROVISIONER_WATCH_RESOURCES_INTERVAL``)."""
    volume_sweep: float = 60.0
    """Seconds between two full volume listings, which see vanished volumes (``COVE_PROVISIONER_WATCH_VOLUME_SWEEP``)."""
    api_interval: float = 15.0
    """Seconds between two COE health checks of a cluster (0: none; ``COVE_PROVISIONER_API_CHECK_INTERVAL``)."""
    api_timeout: float = 5.0
    """Seconds each request of a COE health check may take (``COVE_PROVISIONER_API_CHECK_TIMEOUT``)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WatchSettings:
        return cls(
            interval=float(env.get("COVE_PROVISIONER_WATCH_INTERVAL", "0.2")),
            overlap=float(env.get("COVE_PROVISIONER_WATCH_OVERLAP", "2")),
            scope=env.get("COVE_PROVISIONER_WATCH_SCOPE", "all"),
            resource_interval=float(env.get("COVE_PROVISIONER_WATCH_RESOURCES_INTERVAL", "5")),
            volume_sweep=float(env.get("COVE_PROVISIONER_WATCH_VOLUME_SWEEP", "60")),
            api_interval=float(env.get("COVE_PROVISIONER_API_CHECK_INTERVAL", "15")),
            api_timeout=float(env.get("COVE_PROVISIONER_API_CHECK_TIMEOUT", "5")),
        )


@dataclass(frozen=True)
class Watched:
    """A cluster the watch follows: its status and the project and trust to list with (``scope`` project)."""

    status: str
    project_id: str | None = None
    trust_id: str | None = None


def observed(server: Mapping[str, Any]) -> Observed | None:
    """What the watch keeps of a listed server; None for a server that is not a Cove node."""
    meta = server.get("metadata") or {}
    cluster_id = meta.get("cove_cluster_id") if isinstance(meta, dict) else None
    if not cluster_id:
        return None
    fault = server.get("fault")
    networks = server.get("addresses") or {}
    addresses = tuple(str(a["addr"]) for net in networks.values() if isinstance(net, list) for a in net
                      if isinstance(a, dict) and a.get("addr")) if isinstance(networks, dict) else ()
    return Observed(
        server_id=str(server["id"]), name=str(server.get("name") or ""),
        status=str(server.get("status") or "").upper(), cluster_id=str(cluster_id),
        nodegroup=meta.get("cove_nodegroup"), role=meta.get("cove_role"),
        fault=fault.get("message") if isinstance(fault, dict) else None,
        updated=cloud_time(server.get("updated")), terminated_at=cloud_time(server.get("OS-SRV-USG:terminated_at")),
        host_status=server.get("host_status") or None, addresses=addresses,
    )


TAG_PREFIX = model.cluster_tag("")


def load_balancer_seen(lb: Mapping[str, Any]) -> ResourceSeen | None:
    """What the watch keeps of a listed load balancer; None for one that is not a Cove cluster's (its tag)."""
    cluster_id = next((t[len(TAG_PREFIX):] for t in lb.get("tags") or [] if str(t).startswith(TAG_PREFIX)), None)
    if not cluster_id:
        return None
    return ResourceSeen("load_balancer", str(lb["id"]), str(lb.get("name") or ""), cluster_id,
                        str(lb.get("provisioning_status") or ""), str(lb.get("operating_status") or "") or None)


def volume_seen(vol: Mapping[str, Any]) -> ResourceSeen | None:
    """What the watch keeps of a listed volume; None for one that is not a Cove cluster's (its metadata)."""
    meta = vol.get("metadata") or {}
    cluster_id = meta.get("cove_cluster_id") if isinstance(meta, dict) else None
    if not cluster_id:
        return None
    attached = next((str(a["server_id"]) for a in vol.get("attachments") or []
                     if isinstance(a, dict) and a.get("server_id")), None)
    return ResourceSeen("volume", str(vol["id"]), str(vol.get("name") or ""), str(cluster_id),
                        str(vol.get("status") or ""), server_id=attached)


@dataclass
class WatchStats:
    listings: int = 0
    servers_seen: int = 0
    changes: int = 0
    failures: int = 0
    last_listing_seconds: float = 0.0
    kicks: int = 0
    resource_listings: int = 0
    resources_seen: int = 0
    resource_changes: int = 0
    api_kicks: int = 0
    started_cpu: float = field(default_factory=time.process_time)


class Watcher:
    """Watches every watched cluster's servers; ``views_of`` is what a health pass reads (``health.Views``)."""

    def __init__(
        self,
        *,
        cloud_settings: CloudSettings,
        load_watched: Callable[[], Awaitable[dict[str, Watched]]],
        kick: Callable[[str], None],
        settings: WatchSettings | None = None,
        list_for_trust: Callable[[str, datetime], Awaitable[list[dict[str, Any]]]] | None = None,
    ) -> None:
        self.cloud_settings = cloud_settings
        self.settings = settings or WatchSettings()
        self._load_watched = load_watched
        self._kick = kick
        self._list_for_trust = list_for_trust
        self.watched: dict[str, Watched] = {}
        self.views: dict[str, dict[str, Observed]] = {}
        self.stats = WatchStats()
        self.scope = self.settings.scope
        self._since: datetime | None = None
        self._refreshed = 0.0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cove-watch")
        self._conn: openstack.connection.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self.on_change: Callable[[Observed], None] | None = None
        """Called for every change the watch records (benchmarks measure with it)."""
        self.leading = True
        """Whether this copy lists the cloud (False: it receives what the leading copy records)."""
        self.publish_changes: Callable[[list[Observed]], Awaitable[None]] | None = None
        """Sends what a listing recorded to the other copies (set with copies)."""
        self.fetch_views: Callable[[str], Awaitable[list[Observed]]] | None = None
        """Asks the leading copy for a cluster's views (set with copies)."""
        self.kick_received: Callable[[str], None] | None = None
        """How ``receive`` and ``receive_resources`` kick a cluster (default: as a listing here does)."""
        self.publish_resources: Callable[[list[ResourceSeen]], Awaitable[None]] | None = None
        """Sends what a resource listing changed to the other copies (set with copies)."""
        self.fetch_resources: Callable[[str], Awaitable[list[ResourceSeen]]] | None = None
        """Asks the leading copy for a cluster's load balancers and volumes (set with copies)."""
        self._changed: list[Observed] = []
        self._resources_changed: list[ResourceSeen] = []
        self._primed: set[str] = set()
        self.resources: dict[str, dict[str, ResourceSeen]] = {}
        """Cluster id -> resource id -> its load balancer and volumes as last listed (the leading copy's)."""
        self.api: dict[str, ApiState] = {}
        """Cluster id -> its COE health check's state (``health.check_coe``), kept across the cluster's tasks."""
        self._resources_at = 0.0
        self._resource_task: asyncio.Task[None] | None = None
        self._resource_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cove-watch-resources")
        self._resource_conn: openstack.connection.Connection | None = None
        self._volumes_since: datetime | None = None
        self._swept_at = 0.0
        self._api_due: dict[str, float] = {}

    # ------------------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="provisioner-watch")

    async def stop(self) -> None:
        for task in (self._task, self._resource_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._resource_task = None
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._resource_executor.shutdown(wait=False, cancel_futures=True)
        for conn in (self._conn, self._resource_conn):
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def views_of(self, cluster_id: str) -> Mapping[str, Observed]:
        return self.views.get(cluster_id, {})

    def resources_of(self, cluster_id: str) -> Mapping[str, ResourceSeen]:
        return self.resources.get(cluster_id, {})

    def lead(self, leading: bool) -> None:
        """Start (True) or stop listing the cloud: this copy took, or lost, the watch's singleton lease."""
        if leading and not self.leading:
            self._since = None  # reach back ``lookback``: what changed while the last leader died is not missed
            self._volumes_since = None  # and list every volume at once: one may have vanished meanwhile
        self.leading = leading
        log.info("watch_leading" if leading else "watch_following")

    def receive(self, changes: list[Observed]) -> int:
        """What the leading copy recorded: kept as if listed here, and the clusters they belong to kicked."""
        return self._apply(changes, watched_only=False, kick=self.kick_received or self._kick)

    def receive_resources(self, changes: list[ResourceSeen]) -> int:
        """What the leading copy's resource listing changed: kept as if listed here, and the clusters they belong
        to kicked. Idempotent: a resource that already looks so here changes nothing and kicks nothing."""
        dirty: set[str] = set()
        for seen in changes:
            views = self.resources.setdefault(seen.cluster_id, {})
            if views.get(seen.resource_id) != seen:
                views[seen.resource_id] = seen
                dirty.add(seen.cluster_id)
        kick = self.kick_received or self._kick
        for cluster_id in dirty:
            self.stats.resource_changes += 1
            kick(cluster_id)
        return len(dirty)

    async def prime(self, cluster_id: str) -> None:
        """Before a health pass in a copy that does not list: the leader's views and resources of the cluster, asked
        once (both answered, else asked again at the next pass)."""
        if self.leading or self.fetch_views is None or cluster_id in self._primed:
            return
        try:
            found = await self.fetch_views(cluster_id)
            listed = await self.fetch_resources(cluster_id) if self.fetch_resources is not None else []
        except Exception as exc:  # noqa: BLE001 - no leader yet: asked again at the next pass
            log.debug("watch_prime_failed", cluster_id=cluster_id, error=repr(exc))
            return
        views = self.views.setdefault(cluster_id, {})
        for seen in found:
            views.setdefault(seen.server_id, seen)  # what arrived since is newer
        resources = self.resources.setdefault(cluster_id, {})
        for res in listed:
            resources.setdefault(res.resource_id, res)
        self._primed.add(cluster_id)

    # ------------------------------------------------------------------------------------------- the loop

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            started = loop.time()
            try:
                if self.leading:
                    await self.tick()
                elif time.monotonic() - self._refreshed >= self.settings.refresh:
                    await self.refresh(kick=False)  # which clusters are watched (forgets the others' views)
                    self._refreshed = time.monotonic()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the watch survives a cloud or database hiccup
                failures += 1
                self.stats.failures += 1
                log.warning("watch_failed", error=repr(exc), failures=failures)
                await asyncio.sleep(min(self.settings.interval * 2**failures, 10.0))
            await asyncio.sleep(max(0.0, self.settings.interval - (loop.time() - started)))

    async def tick(self) -> int:
        """One listing; returns how many changes it recorded."""
        now_mono = time.monotonic()
        if now_mono - self._refreshed >= self.settings.refresh or not self._refreshed:
            await self.refresh()
            self._refreshed = now_mono
        if not self.watched:
            return 0
        now = datetime.now(UTC)
        since = (self._since - timedelta(seconds=self.settings.overlap) if self._since is not None
                 else now - timedelta(seconds=self.settings.lookback))
        began = time.perf_counter()
        servers = await self._list(since)
        self.stats.last_listing_seconds = time.perf_counter() - began
        self.stats.listings += 1
        self.stats.servers_seen += len(servers)
        self._since = now
        recorded = self.record(servers)
        if self._changed and self.publish_changes is not None:
            changed, self._changed = self._changed, []
            await self.publish_changes(changed)
        self.kick_api_checks()
        if (self.settings.resource_interval > 0 and now_mono - self._resources_at >= self.settings.resource_interval
                and (self._resource_task is None or self._resource_task.done())):
            self._resources_at = now_mono
            # beside the servers' listing, never in its way: a slow Octavia or Cinder must not delay a server's news
            self._resource_task = asyncio.create_task(self._list_resources_logged(), name="provisioner-watch-resources")
        return recorded

    async def _list_resources_logged(self) -> None:
        try:
            await self.list_resources()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the next interval lists again; the servers are still watched
            self.stats.failures += 1
            log.warning("watch_resources_failed", error=repr(exc))

    def kick_api_checks(self) -> int:
        """Kick each watched cluster whose COE health check is due, except those whose API this copy found out of
        reach; returns how many. A cluster's first kick falls somewhere in the first interval (the same place for
        the same cluster: the checks of many clusters are spread out); after that, when the check that ran since
        the last kick says (``ApiState.next_at``: sooner after a failure), else an interval after the last kick."""
        interval = self.settings.api_interval
        if interval <= 0:
            return 0
        now = time.monotonic()
        kicked = 0
        for cluster_id in self.watched:
            state = self.api.get(cluster_id)
            if state is not None and state.unreachable:
                continue
            last = self._api_due.get(cluster_id)
            if last is None:
                last = self._api_due[cluster_id] = now - interval + interval * (zlib.crc32(cluster_id.encode()) % 1000
                                                                               ) / 1000
            due = state.next_at if state is not None and state.next_at > last else last + interval
            if now < due:
                continue
            self._api_due[cluster_id] = now
            self.stats.api_kicks += 1
            kicked += 1
            self._kick(cluster_id)
        return kicked

    async def list_resources(self) -> int:
        """One listing of every load balancer and of the volumes changed since the last one (all volumes, at the
        sweep's interval); records what changed of the watched clusters' and kicks them. Returns how many
        clusters it kicked."""
        loop = asyncio.get_running_loop()
        now, now_mono = datetime.now(UTC), time.monotonic()
        since: datetime | None = None
        sweep = self._volumes_since is None or now_mono - self._swept_at >= self.settings.volume_sweep
        if not sweep and self._volumes_since is not None:
            since = self._volumes_since - timedelta(seconds=self.settings.overlap)
        conn = self._resource_connection()
        lbs = await loop.run_in_executor(self._resource_executor, lambda: fetch_load_balancers(conn))
        volumes = await loop.run_in_executor(self._resource_executor, lambda: fetch_volumes(conn, since))
        self._volumes_since = now
        if sweep:
            self._swept_at = now_mono
        self.stats.resource_listings += 1
        self.stats.resources_seen += len(lbs) + len(volumes)
        kicked = self.record_resources([s for s in map(load_balancer_seen, lbs) if s is not None],
                                       [s for s in map(volume_seen, volumes) if s is not None], full_volumes=sweep)
        await self.share_resources()
        return kicked

    async def share_resources(self) -> int:
        """Send what the resource listings changed since the last send to the other copies (one message per
        listing, in order); returns how many."""
        if not self._resources_changed or self.publish_resources is None:
            return 0
        changed, self._resources_changed = self._resources_changed, []
        await self.publish_resources(changed)
        return len(changed)

    def record_resources(self, lbs: list[ResourceSeen], volumes: list[ResourceSeen], *, full_volumes: bool) -> int:
        """Record the watched clusters' load balancers (a full listing: one no longer listed is ``gone``) and
        volumes (``gone`` only after a full listing), and kick each cluster with a change; what changed waits in
        ``_resources_changed`` for the other copies (with copies)."""
        dirty: set[str] = set()
        listed: set[str] = set()

        def keep(seen: ResourceSeen) -> None:
            if seen.cluster_id not in self.watched:
                return
            listed.add(seen.resource_id)
            views = self.resources.setdefault(seen.cluster_id, {})
            if views.get(seen.resource_id) != seen:
                views[seen.resource_id] = seen
                dirty.add(seen.cluster_id)
                changed.append(seen)

        changed: list[ResourceSeen] = []
        for seen in [*lbs, *volumes]:
            keep(seen)
        for cluster_id, views in self.resources.items():
            for rid, seen in list(views.items()):
                vanished = rid not in listed and not seen.gone and (
                    seen.kind == "load_balancer" or (seen.kind == "volume" and full_volumes))
                if vanished:
                    views[rid] = ResourceSeen(seen.kind, seen.resource_id, seen.name, seen.cluster_id, seen.status,
                                              seen.operating_status, seen.server_id, gone=True)
                    dirty.add(cluster_id)
                    changed.append(views[rid])
        if self.publish_resources is not None:
            self._resources_changed.extend(changed)
        for cluster_id in dirty:
            self.stats.resource_changes += 1
            self._kick(cluster_id)
        return len(dirty)

    def record(self, servers: list[dict[str, Any]]) -> int:
        """Record what changed of the watched clusters' servers and kick each cluster that has a change."""
        return self._apply([seen for seen in map(observed, servers) if seen is not None], watched_only=True,
                           kick=self._kick)

    def _apply(self, seen_servers: list[Observed], *, watched_only: bool, kick: Callable[[str], None]) -> int:
        dirty: set[str] = set()
        for seen in seen_servers:
            if watched_only and seen.cluster_id not in self.watched:
                continue
            views = self.views.setdefault(seen.cluster_id, {})
            before = views.get(seen.server_id)
            if before == seen or (before is not None and before.status == "DELETED"):
                continue
            views[seen.server_id] = seen
            dirty.add(seen.cluster_id)
            self.stats.changes += 1
            if self.on_change is not None:
                self.on_change(seen)
            if watched_only and self.publish_changes is not None:
                self._changed.append(seen)
        for cluster_id in dirty:
            self.stats.kicks += 1
            kick(cluster_id)
        return len(dirty)

    async def refresh(self, *, kick: bool = True) -> None:
        """Which clusters are watched now; a cluster that just became watched is kicked once (its first health)."""
        watched = await self._load_watched()
        if kick:
            for cluster_id in watched.keys() - self.watched.keys():
                self._kick(cluster_id)
        for cluster_id in self.watched.keys() - watched.keys():
            self.views.pop(cluster_id, None)
            self.resources.pop(cluster_id, None)
            self.api.pop(cluster_id, None)
            self._api_due.pop(cluster_id, None)
            self._primed.discard(cluster_id)
        self.watched = watched

    async def _list(self, since: datetime) -> list[dict[str, Any]]:
        if self.scope == "all":
            try:
                return await asyncio.get_running_loop().run_in_executor(
                    self._executor, lambda: fetch_changes(self._connection(), since, all_tenants=True))
            except PermissionError as exc:
                if self._list_for_trust is None:
                    raise
                log.warning("watch_scope_fallback", reason=str(exc), scope="project")
                self.scope = "project"
        assert self._list_for_trust is not None
        trusts: dict[str, str] = {}
        for w in self.watched.values():
            if w.project_id and w.trust_id:
                trusts.setdefault(w.project_id, w.trust_id)
        found = await asyncio.gather(*(self._list_for_trust(trust, since) for trust in trusts.values()))
        return [s for part in found for s in part]

    def _connection(self) -> openstack.connection.Connection:
        """The Cove service user's own connection, scoped to its project (its admin role lists every project)."""
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def _resource_connection(self) -> openstack.connection.Connection:
        """Another such connection for the resource listings, which run in their own thread."""
        if self._resource_conn is None:
            self._resource_conn = self._connect()
        return self._resource_conn

    def _connect(self) -> openstack.connection.Connection:
        s = self.cloud_settings
        auth = v3.Password(auth_url=s.auth_url, username=s.username, password=s.password,
                           user_domain_name=s.user_domain_name, project_name=s.project_name,
                           project_domain_name=s.project_domain_name)
        return openstack.connection.Connection(session=ks_session.Session(auth=auth),
                                               app_name="cove-provisioner-watch")

