"""The billed resources around a cluster's servers (volumes, floating IPs, the load balancer): the provisioner reports
each one's life at the cloud to accounting (``VolumeCreated``/``VolumeDeleted``, ``FloatingIpAllocated``/
``FloatingIpReleased``, ``LoadBalancerCreated``/``LoadBalancerDeleted``), timed by the cloud: created when the
create call returned (or by the cloud's own ``created_at`` for one found already there), gone when the delete call
returned for a synchronous delete (floating IPs) or when a listing no longer shows it (Cinder and Octavia delete
asynchronously).

Each event has a deterministic id (``<Type>:<resource id>``) and goes through ``Reconciler.emit_many``. The task
remembers what it reported (``TaskState.billed``) so a pass does not report it again, and when a listing first no
longer showed a resource (``Billed.gone_at``): a report that failed (NATS losing a node, PostgreSQL restarting) is
retried with that time, not the retry's. A restarted task reports what it finds once more (same ids: JetStream
drops the copy within its window, accounting keeps the first report).

A copy killed while a cluster's volumes or load balancer go away (Cinder and Octavia delete asynchronously, and
neither shows a deleted one, or when it went) leaves the copy resuming the delete nothing to see: without more, their
end would be the cluster's ``ClusterDeleteCompleted``, seconds late. So each pass of the delete path that still sees
billed resources writes them down, with the listing's time, in the key-value bucket ``COVE_PROVISIONER_BILLING``
(``Notes``, one key per cluster, replicated like the streams); a task that finds one of them gone without having
seen it itself ends it at that last sighting (``Billed.noted_at``): at most a poll interval plus the cloud's own
deletion time early, where waiting for the cluster's completion was the whole outage late. The teardown's thread
also has each volume and load balancer written down just before it sends its delete (``noting_deletes``), so a copy
killed the moment after the cloud accepted it still leaves when that was.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.errors
import requests
import structlog
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from proto import streams
from proto.events import (
    Event,
    FloatingIpAllocated,
    FloatingIpReleased,
    LoadBalancerCreated,
    LoadBalancerDeleted,
    VolumeCreated,
    VolumeDeleted,
)
from services.provisioner import store
from services.provisioner.cloud import (
    CLOUD_ROUNDING,
    CloudError,
    ClusterCloud,
    FloatingIpRef,
    LoadBalancerState,
    Seen,
    VolumeState,
    cloud_time,
    fetch_changes,
    made_at,
)
from services.provisioner.state import TaskState
from services.runtime.keyvalue import open_bucket

if TYPE_CHECKING:
    from services.provisioner.loop import Reconciler

log = structlog.get_logger(__name__)

VOLUME, FLOATING_IP, LOAD_BALANCER = "volume", "floating_ip", "load_balancer"


@dataclass(frozen=True)
class Billed:
    """A billed resource as the cloud showed it when the provisioner made or found it."""

    kind: str
    id: str
    name: str
    created_at: datetime
    size_gb: int = 0
    address: str = ""
    node_name: str | None = None
    """The node it belongs to (its volumes, its floating IP), released with it on a resize down."""
    seen_at: datetime | None = None
    """When this task's latest listing showed it still there."""
    gone_at: datetime | None = None
    """Its end, fixed by the first listing that no longer showed it (or when its synchronous delete returned),
    however many passes it takes to report it."""
    noted_at: datetime | None = None
    """The last time an earlier task of the cluster saw it (``Notes``): its end if this task never sees it."""
    deleting_at: datetime | None = None
    """When the cloud accepted its delete (``Seen.deleting``): its end comes a moment later."""


def now() -> datetime:
    return datetime.now(UTC)


__all__ = ["Billed", "Notes", "cloud_time", "created", "gone", "note_going", "noting", "noting_deletes", "nova_created",
           "now", "recall", "server_ends", "server_made", "server_starts", "watch_going"]

LOOKBACK = timedelta(hours=1)
"""How far back ``server_ends`` asks Nova for the deletions of servers gone while no task watched them."""


async def server_ends(r: Reconciler, row: store.ClusterRow, server_ids: Iterable[str],
                      listed_at: datetime) -> dict[str, datetime]:
    """When each of ``server_ids`` (servers a listing made at ``listed_at`` no longer shows) was deleted at the
    cloud: Nova's ``OS-SRV-USG:terminated_at`` from one ``changes-since`` listing of the project (Nova lists deleted
    servers there), else ``listed_at``. The deletion time matters after a restart: a server deleted while no
    provisioner watched would otherwise be billed until the restarted one looked."""
    wanted = set(server_ids)
    if not wanted or row.trust_id is None:
        return {sid: listed_at for sid in wanted}
    since = listed_at - LOOKBACK

    def ends(c: ClusterCloud) -> dict[str, datetime]:
        out: dict[str, datetime] = {}
        changed = c._api("Listing the project's deleted servers failed",  # retried on a transient answer
                         lambda: fetch_changes(c.conn, since, all_tenants=False))
        for server in changed:
            sid = str(server.get("id"))
            at = cloud_time(server.get("OS-SRV-USG:terminated_at"))
            if sid in wanted and str(server.get("status", "")).upper() == "DELETED" and at is not None:
                out[sid] = min(at, listed_at)
        return out

    try:
        found = await r.cloud.call(row.trust_id, ends)
    except Exception as exc:  # noqa: BLE001 - a billing detail must not stop a delete or a resize
        log.warning("server_deletion_times_unknown", cluster_id=row.uuid, error=repr(exc))
        found = {}
    return {sid: found.get(sid, listed_at) for sid in wanted}


SLOW_CREATE = timedelta(seconds=1)
"""A server create call that took longer than this is timed with Nova's ``created`` as well (``server_made``)."""


async def server_made(r: Reconciler, row: store.ClusterRow,
                      calls: Mapping[str, tuple[datetime, datetime]]) -> dict[str, datetime]:
    """When each server was made, from its create call (server id -> when it was sent and answered): the middle of
    the call (``cloud.made_at``), narrowed by Nova's whole-second ``created`` for a call that took longer than a
    second (Nova's answer to the create has no ``created``: one show per such server, rare)."""
    slow = [sid for sid, (sent, answered) in calls.items() if answered - sent > SLOW_CREATE]
    created = await nova_created(r, row, slow) if slow else {}
    return {sid: made_at(sent, answered, created.get(sid)) for sid, (sent, answered) in calls.items()}


async def server_starts(r: Reconciler, row: store.ClusterRow, server_ids: Iterable[str]) -> dict[str, datetime]:
    """When each of ``server_ids`` was made, for the servers a listing found that the cluster's events do not name:
    made by a task killed, or fenced by a lost lease, between the create call and its ``NodeCreated``. Without it
    the found server was billed from when it was found (seen: 11 s short, a lease lost while a NATS node was down).
    Nova's ``created`` is whole seconds: the middle of what it allows (``cloud.made_at``)."""
    return {sid: made_at(at - CLOUD_ROUNDING, at + timedelta(seconds=1))
            for sid, at in (await nova_created(r, row, server_ids)).items()}


async def nova_created(r: Reconciler, row: store.ClusterRow, server_ids: Iterable[str]) -> dict[str, datetime]:
    """Nova's ``created`` of each of ``server_ids``, as it gives it (whole seconds): one show per server; a server
    gone since, or one Nova does not answer for, is left out."""
    wanted = sorted(set(server_ids))
    if not wanted or row.trust_id is None:
        return {}

    def show(c: ClusterCloud, sid: str) -> dict[str, Any]:
        response = c.conn.compute.get(f"/servers/{sid}")
        response.raise_for_status()  # (a raw get raises no HTTP error by itself: a 500 was read as no time)
        return response.json().get("server") or {}

    def starts(c: ClusterCloud) -> dict[str, datetime]:
        out: dict[str, datetime] = {}
        for sid in wanted:
            try:  # retried on a transient answer (the cloud's RetryPolicy)
                server = c._api(f"Showing server {sid} failed", lambda sid=sid: show(c, sid),  # type: ignore[misc]
                                passthrough=(requests.HTTPError,))
            except requests.HTTPError:
                continue  # gone since (404): its NodeDeleted follows; billed from when it was found
            except CloudError as exc:
                log.warning("server_creation_time_unknown", cluster_id=row.uuid, server_id=sid, error=exc.reason)
                continue
            at = cloud_time(server.get("created"))
            if at is not None:
                out[sid] = at
        return out

    try:
        return await r.cloud.call(row.trust_id, starts)
    except Exception as exc:  # noqa: BLE001 - a billing detail must not stop a build
        log.warning("server_creation_time_unknown", cluster_id=row.uuid, servers=wanted, error=repr(exc))
        return {}


def of_volume(v: VolumeState, node_name: str | None) -> Billed:
    return Billed(VOLUME, v.id, v.name, v.created_at or now(), size_gb=v.size_gb, node_name=node_name)


def of_floating_ip(f: FloatingIpRef, name: str, node_name: str | None) -> Billed:
    return Billed(FLOATING_IP, f.id, name, f.created_at or now(), address=f.address, node_name=node_name)


def of_load_balancer(lb: LoadBalancerState) -> Billed:
    return Billed(LOAD_BALANCER, lb.lb_id, lb.name, lb.created_at or now())


def _created(row: store.ClusterRow, b: Billed) -> Event:
    project = row.project_id or ""
    if b.kind == VOLUME:
        return VolumeCreated(cluster_id=row.uuid, project_id=project, volume_id=b.id, name=b.name,
                             size_gb=b.size_gb, created_at=b.created_at, node_name=b.node_name)
    if b.kind == FLOATING_IP:
        return FloatingIpAllocated(cluster_id=row.uuid, project_id=project, floating_ip_id=b.id, address=b.address,
                                   name=b.name, created_at=b.created_at)
    return LoadBalancerCreated(cluster_id=row.uuid, project_id=project, load_balancer_id=b.id, name=b.name,
                               created_at=b.created_at)


def _gone(row: store.ClusterRow, b: Billed, at: datetime) -> Event:
    project = row.project_id or ""
    if b.kind == VOLUME:
        return VolumeDeleted(cluster_id=row.uuid, project_id=project, volume_id=b.id, deleted_at=at)
    if b.kind == FLOATING_IP:
        return FloatingIpReleased(cluster_id=row.uuid, project_id=project, floating_ip_id=b.id, released_at=at)
    return LoadBalancerDeleted(cluster_id=row.uuid, project_id=project, load_balancer_id=b.id, deleted_at=at)


async def created(r: Reconciler, row: store.ClusterRow, st: TaskState, found: Iterable[Billed | None]) -> None:
    """Report the resources of ``found`` this task has not reported yet, in one ``emit_many``."""
    fresh: dict[str, Billed] = {}
    for b in found:
        if b is not None and b.id not in st.billed and b.id not in fresh:
            fresh[b.id] = b
    if not fresh:
        return
    await r.emit_many(row, [(_created(row, b), f"{type(_created(row, b)).__name__}:{b.id}") for b in fresh.values()])
    st.billed.update(fresh)


async def gone(
    r: Reconciler,
    row: store.ClusterRow,
    st: TaskState,
    *,
    present: Mapping[str, str],
    deleted: Mapping[str, datetime],
    listed_at: datetime,
    node_name: str | None = None,
    vanished: Mapping[str, datetime] | None = None,
) -> None:
    """Report the end of every reported resource (of ``node_name`` only, when given) that a listing made at
    ``listed_at`` no longer showed (``present``: id -> kind), or whose synchronous delete returned (``deleted``:
    floating IP id -> when). What the listing shows that this task never reported (a task restarted since) is
    remembered now, so that its end is reported when it comes; a floating IP it deleted is reported at once.

    A listing only tells that a volume or load balancer went between the pass that last showed it and the first
    that did not, and a pass of the teardown (ports, router, network, security groups deleted one after another)
    takes a second or more on a busy cloud: its end is the middle of that window, off by half a pass at most
    instead of a whole one. One an earlier task last saw (``noted_at``) ends there: that window spans a copy's
    outage, and Cinder and Octavia finish a delete within seconds of accepting it. ``vanished`` (id -> when first
    seen gone, by ``watch_going`` while the listing's pass went on) narrows a window to the watch's interval."""
    vanished = vanished or {}
    for rid, kind in present.items():
        b = st.billed.get(rid)
        if b is None:
            b = st.billed[rid] = Billed(kind, rid, "", listed_at, node_name=node_name, seen_at=listed_at)
        else:  # still there: this task sees it go
            seen = max(listed_at, b.seen_at) if b.seen_at is not None else listed_at
            b = st.billed[rid] = replace(b, seen_at=seen, gone_at=None, noted_at=None)
        if rid in vanished:  # shown by the pass's listing, gone before the pass ended
            st.billed[rid] = replace(b, gone_at=_end(b, vanished[rid]))
    for rid in deleted:
        if rid not in st.billed:
            st.billed[rid] = Billed(FLOATING_IP, rid, "", listed_at, node_name=node_name)
    ended: list[tuple[Billed, datetime]] = []
    for rid, b in sorted(st.billed.items()):
        if node_name is not None and b.node_name != node_name:
            continue
        if b.gone_at is None:
            if rid in deleted:
                end = deleted[rid]
            elif rid in present:
                continue
            elif b.noted_at is not None:
                end = min(b.noted_at, listed_at)
            else:
                end = _end(b, vanished.get(rid, listed_at))
            b = st.billed[rid] = replace(b, gone_at=end)
        assert b.gone_at is not None
        ended.append((b, b.gone_at))
    if not ended:
        return
    await r.emit_many(row, [(_gone(row, b, at), f"{type(_gone(row, b, at)).__name__}:{b.id}") for b, at in ended])
    for b, _ in ended:
        st.billed.pop(b.id, None)


SETTLE = timedelta(seconds=0.25)
"""Where in its window a resource whose delete the cloud accepted is taken to have gone, at most, after the later of
that acceptance and its last sighting: half a look interval (``watch_going``). Cinder finishes a delete within a
moment of accepting it (the devcloud: a fifth of a second in make chaos), while the first look that misses it can
come seconds late on a busy machine (looks at 100 deleting clusters' volumes queue for their threads)."""


def _between(seen_at: datetime | None, missed_at: datetime) -> datetime:
    """The middle of the window a resource went in: after the listing that last showed it, before the first
    that did not."""
    if seen_at is None or seen_at > missed_at:
        return missed_at
    return seen_at + (missed_at - seen_at) / 2


def _latest(b: Billed) -> datetime | None:
    """The latest time the resource is known to have been there: its last sighting (this task's, or an earlier
    task's it recalled), or its delete's acceptance. (Without the recalled one, a task that noted a resource it
    only knew from the note wrote it down at its own pass's start: each task killed moved the note on, and the
    resource's end with it; make chaos billed two volumes 15 s late so.)"""
    known = [t for t in (b.seen_at, b.deleting_at, b.noted_at) if t is not None]
    return max(known) if known else None


def _end(b: Billed, missed_at: datetime) -> datetime:
    """A resource's end, before ``missed_at`` (the first look that did not show it): the middle of its window, or,
    when its delete's acceptance is known, at most ``SETTLE`` after the later of that and its last sighting."""
    if b.deleting_at is None:
        return _between(b.seen_at, missed_at)
    lower = max(b.deleting_at, b.seen_at) if b.seen_at is not None else b.deleting_at
    if lower > missed_at:
        return missed_at
    return lower + min((missed_at - lower) / 2, SETTLE)


GOING = (VOLUME, LOAD_BALANCER)
"""What Cinder and Octavia delete asynchronously: ``watch_going`` looks at them while a teardown goes on."""


async def watch_going(r: Reconciler, row: store.ClusterRow, st: TaskState, teardown: asyncio.Future[Any],
                      seen: Seen | None = None) -> dict[str, datetime]:
    """While ``teardown`` (the cloud call deleting the cluster's resources) runs, look at the volumes and load
    balancer going away every poll interval (half a second at least; one show of each, only those not yet seen
    gone): the reported ones, and those the call's own listing (``seen``) shows as it goes, which is all a delete
    task started after the build knows of them. A look that shows one still there is its sighting (``seen_at``, when
    the show was sent); the first that does not, returned, is when that show was answered: the end lies between.

    A teardown pass deletes the volumes, then the ports, router, network and security groups one by one: a second
    or more on a busy cloud (3 s seen), while the volumes it deleted went a third of a second after their delete.
    Judged by the pass's listings alone, their window spans the whole pass, or the wait for the next pass when the
    task first learns of them from this one's listing (seen: 10 s late with 100 clusters deleting at once). The
    looks go through the reconciler's own small pool (``Reconciler.looks``), not behind the teardowns queued in the
    cloud pool, and are timed where they are made: a look that waited for a thread, or whose answer waited for a
    starved event loop, neither widens nor shifts the window."""
    vanished: dict[str, datetime] = {}
    trust = row.trust_id
    if trust is None:
        return vanished
    pending = {rid: b.kind for rid, b in st.billed.items() if b.kind in GOING and b.gone_at is None}
    if not pending and seen is None:
        return vanished
    interval = max(r.settings.poll_interval, 0.5)
    began = now()  # before the teardown's listings: a bound for what they show

    def listed() -> bool:
        """Add what the teardown's listings found so far, and when the cloud accepted their deletes (the thread
        fills ``seen``; a dict copy is atomic). True when something was new: a copy killed now would leave the one
        resuming the delete nothing to end them by, so it is written down at once (``note_going``)."""
        if seen is None:
            return False
        new = False
        for rid, kind in list(seen.present.items()):
            if kind in GOING and rid not in vanished and rid not in pending:
                b = st.billed.get(rid)
                if b is None:
                    st.billed[rid] = Billed(kind, rid, "", began)
                    new = True
                elif b.gone_at is not None:
                    continue
                pending[rid] = kind
        for rid, at in list(seen.deleting.items()):
            b = st.billed.get(rid)
            if b is not None and b.gone_at is None and b.deleting_at is None:
                st.billed[rid] = replace(b, deleting_at=at)
                new = True
        return new

    def look(c: ClusterCloud, ids: dict[str, str]) -> dict[str, tuple[bool, datetime, datetime]]:
        """Id -> (still there, when its show was sent, when it was answered); an id whose show failed is left out."""
        out: dict[str, tuple[bool, datetime, datetime]] = {}
        for rid, kind in ids.items():
            sent = now()
            try:
                if kind == VOLUME:
                    response = c.conn.block_storage.get(f"/volumes/{rid}")
                else:
                    response = c.conn.load_balancer.get(f"/lbaas/loadbalancers/{rid}")  # the endpoint names v2
                answered = now()
                if response.status_code == 404:
                    out[rid] = (False, sent, answered)
                    continue
                response.raise_for_status()
                body = response.json()
            except Exception as exc:  # noqa: BLE001 - a look that failed narrows nothing; the next one may
                log.debug("billed_resource_unseen", cluster_id=row.uuid, resource_id=rid, error=repr(exc)[:200])
                continue
            status = str((body.get("loadbalancer") or {}).get("provisioning_status", "")).upper()
            out[rid] = (status != "DELETED", sent, answered)
        return out

    while True:
        if listed():
            await note_going(r, row, st, began)
        if not pending and teardown.done():
            break
        await asyncio.wait([teardown], timeout=interval)
        last = teardown.done()  # one more look as it ends: the pass's next steps (NATS, the store) may be slow
        if listed():
            await note_going(r, row, st, began)
        if pending:
            try:
                found = await r.cloud.call(trust, lambda c, ids=dict(pending): look(c, ids),  # type: ignore[misc]
                                           executor=r.looks)
            except Exception as exc:  # noqa: BLE001 - a look that failed narrows nothing; the next one may
                log.debug("billed_resources_unseen", cluster_id=row.uuid, error=repr(exc)[:200])
                found = {}
            for rid, (there, sent, answered) in found.items():
                if there:
                    b = st.billed[rid]
                    st.billed[rid] = replace(b, seen_at=max(sent, b.seen_at) if b.seen_at is not None else sent)
                else:
                    vanished[rid] = answered
                    del pending[rid]
        if last:
            break
    return vanished


NOTES_BUCKET = "COVE_PROVISIONER_BILLING"
NOTE_TTL_S = 7 * 24 * 3600.0
"""A note outlives any delete (a cluster's is removed when nothing billed is left); the TTL only bounds a
forgotten one."""


def notes_bucket() -> KeyValueConfig:
    """``COVE_PROVISIONER_BILLING``: per cluster, the billed resources its delete last saw still there."""
    return KeyValueConfig(bucket=NOTES_BUCKET, description="Cove: billed resources a delete last saw "
                          "(services/provisioner/billing.py)", history=1, ttl=NOTE_TTL_S,
                          storage=StorageType.FILE, replicas=streams.replicas(), direct=False)


class Notes:
    """What a cluster's delete last saw of its billed resources, where the copy resuming it after a kill finds it.

    ``recall`` before a pass's ``gone``, ``write_down`` after it: one read and at most one write per pass of the
    delete path's last stage (while volumes and the load balancer go away), none once nothing is left. A note this
    process could not write (NATS losing a node) is kept here too: the task of this copy that takes the cluster
    back still finds it, whatever the bucket holds."""

    def __init__(self, js: JetStreamContext, config: KeyValueConfig | None = None) -> None:
        self.js = js
        self.config = config or notes_bucket()
        self._kv: KeyValue | None = None
        self._recalled: weakref.WeakValueDictionary[str, TaskState] = weakref.WeakValueDictionary()
        """Cluster -> the task state that read its note: a task reads it once (it writes every later one)."""
        self._noted: set[str] = set()
        """Clusters with a note (read or written here): the only ones whose note is deleted."""
        self.unwritten: dict[str, dict[str, tuple[str, datetime]]] = {}
        """Cluster -> the last note this process failed to write (dropped once one is written)."""

    async def _bucket(self) -> KeyValue:
        if self._kv is None:  # read through the leader: a replica catching up may not have the last note yet
            self._kv = await open_bucket(self.js, self.config)
        return self._kv

    async def recall(self, cluster_id: str, st: TaskState) -> None:
        """Add to ``st.billed`` what an earlier task saw of the cluster and this one has not (once per task): the
        bucket's note, and this process's own unwritten one, each resource at the later of their sightings."""
        if self._recalled.get(cluster_id) is st:
            return
        try:
            entry = await (await self._bucket()).get(cluster_id)
        except nats.js.errors.KeyNotFoundError:
            entry = None
        self._recalled[cluster_id] = st
        found: dict[str, tuple[str, datetime]] = {}
        if entry is not None and entry.value:
            self._noted.add(cluster_id)
            for rid, seen in (json.loads(entry.value).get("present") or {}).items():
                if (at := cloud_time(seen.get("seen"))) is not None:
                    found[rid] = (str(seen.get("kind")), at)
        for rid, (kind, at) in self.unwritten.get(cluster_id, {}).items():
            if rid not in found or found[rid][1] < at:
                found[rid] = (kind, at)
        if not found:
            return
        log.info("billing_note_recalled", cluster_id=cluster_id, revision=entry.revision if entry else None,
                 unwritten=cluster_id in self.unwritten, seen={rid: at.isoformat() for rid, (_, at) in found.items()})
        for rid, (kind, at) in found.items():
            if rid not in st.billed:
                st.billed[rid] = Billed(kind, rid, "", at, noted_at=at)

    async def write_down(self, cluster_id: str, present: Mapping[str, tuple[str, datetime]]) -> None:
        """Note what is still there (id -> kind and when last seen); remove the note when nothing is left."""
        if not present:
            self.unwritten.pop(cluster_id, None)
        try:
            if present:
                await (await self._bucket()).put(cluster_id, json.dumps({"present": {
                    rid: {"kind": kind, "seen": at.isoformat()} for rid, (kind, at) in present.items()}}).encode())
                self._noted.add(cluster_id)
            elif cluster_id in self._noted:
                await (await self._bucket()).delete(cluster_id)
                self._noted.discard(cluster_id)
        except BaseException:
            if present:
                self.unwritten[cluster_id] = dict(present)
            raise
        self.unwritten.pop(cluster_id, None)


async def recall(r: Reconciler, row: store.ClusterRow, st: TaskState) -> None:
    """``Notes.recall`` for a pass of the delete path (once per task); a note that cannot be read is a warning."""
    try:
        await r.notes.recall(row.uuid, st)
    except (nats.errors.Error, nats.js.errors.Error, TimeoutError, ValueError) as exc:
        log.warning("billing_note_unread", cluster_id=row.uuid, error=repr(exc))


async def note_going(r: Reconciler, row: store.ClusterRow, st: TaskState, at: datetime) -> None:
    """Before a teardown call, and during it as its listings find more: note the volumes and load balancer it is
    about to delete, each at its latest sighting or its delete's acceptance (or ``at``, the pass's start, for one this
    task never listed): a copy killed during the call
    leaves the one resuming it a bound a second early rather than none (their end would be the cluster's
    completion, the whole outage late)."""
    going = {rid: (b.kind, _latest(b) or at) for rid, b in st.billed.items() if b.kind in GOING and b.gone_at is None}
    if not going:
        return
    try:
        await r.notes.write_down(row.uuid, going)
    except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
        log.warning("billing_note_unwritten", cluster_id=row.uuid, error=repr(exc))


NOTE_WAIT_S = 2.0
"""How long a teardown's thread waits for the note of a delete it is about to send (``noting_deletes``); past it
the delete is sent anyway."""


def noting_deletes(r: Reconciler, row: store.ClusterRow, st: TaskState) -> Callable[[str, str], None]:
    """``Seen.before_delete`` for a teardown call: in the event loop, the volume or load balancer about to be deleted
    is seen now and written down (``note_going``) before the call's thread sends the delete. A copy killed right
    after the cloud accepted it (between the send and the next look, or before this task ever listed it: a delete
    task starts knowing none) leaves the copy resuming the delete that moment, a fraction of a second before the end,
    instead of nothing (make chaos: a volume billed to the cluster's completion, 47 s long)."""
    loop = asyncio.get_running_loop()

    async def note(rid: str, kind: str) -> None:
        at = now()
        b = st.billed.get(rid)
        if b is None:
            st.billed[rid] = Billed(kind, rid, "", at, seen_at=at)
        elif b.gone_at is None:
            st.billed[rid] = replace(b, seen_at=max(at, b.seen_at) if b.seen_at is not None else at)
        await note_going(r, row, st, at)

    def before_delete(rid: str, kind: str) -> None:
        asyncio.run_coroutine_threadsafe(note(rid, kind), loop).result(timeout=NOTE_WAIT_S)

    return before_delete


async def noting(r: Reconciler, row: store.ClusterRow, st: TaskState, seen_present: Mapping[str, str],
                 seen_deleted: Mapping[str, datetime], listed_at: datetime,
                 vanished: Mapping[str, datetime] | None = None) -> None:
    """``gone`` for a pass of the delete path, between ``Notes.recall`` and ``Notes.write_down``: a read per task
    and a write per pass while billed resources are still there, none after. A note that cannot be read or written
    costs only its precision (a warning): it never stops a delete."""
    await recall(r, row, st)
    await gone(r, row, st, present=seen_present, deleted=seen_deleted, listed_at=listed_at, vanished=vanished)
    still = {rid: (kind, _latest(b) or listed_at) for rid, kind in seen_present.items()
             if (b := st.billed.get(rid)) is not None and b.gone_at is None}
    try:
        await r.notes.write_down(row.uuid, still)
    except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
        log.warning("billing_note_unwritten", cluster_id=row.uuid, error=repr(exc))
