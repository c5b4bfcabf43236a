"""Health and auto-healing of a cluster that exists (CREATE_COMPLETE, UPDATE_COMPLETE, and the failed states), from
what the provisioner's watch (``watch.py``) last saw of its servers at the cloud.

Pure part: ``node_health`` (one node: its server ACTIVE, ERROR, SHUTOFF, on a host that is down, or gone) and
``cluster_health`` (Magnum's ``health_status`` and its ``health_status_reason`` dict, ``{"<node>.Ready": "True"}``),
``coe_verdict`` (a node the COE's own health check calls not ready) and ``resource_problems`` (the cluster's load
balancer in ERROR or OFFLINE, a volume of a running node in error or gone, as the watch last listed them).

The COE's health check (``check_coe``): every ``COVE_PROVISIONER_API_CHECK_INTERVAL`` (15 s; the watch kicks each
watched cluster when its check is due) the pass sends the driver's probes (``drivers.base.Probe``) to the cluster's
API address, when that address lies in ``COVE_PROVISIONER_COE_NETWORKS``, each bounded by
``COVE_PROVISIONER_API_CHECK_TIMEOUT``. An API that fails two checks in a row (the second 2 s after the first) puts
``api: <why>`` in the reason and makes the cluster UNHEALTHY; a node the COE reports not ready while its server runs
gets ``<node>.Ready: False`` and the COE's words. Neither drives auto-healing: the repair replaces what the *cloud*
lost (NodeLost, billing ends); a node whose server runs but whose kubelet is NotReady is the COE's to heal (a reboot,
magnum-auto-healer inside the cluster), and an API the provisioner cannot reach would otherwise make every node of a
partitioned cluster look lost at once.

``reconcile`` is a pass of the cluster's own reconcile task (the single writer of its subject; the watch only kicks
it): ``NodeLost`` for a node the cloud lost (accounting stops billing at the cloud's time), ``ClusterHealthChanged``
when the health changed, and, with the label ``auto_healing_enabled``, the repair: the lost node's server is
deleted and ``nodes.converge`` (the one code path that boots nodes) creates it again under the same name in the
same nodegroup (same flavor, image, volumes), at most ``max_repairs_per_nodegroup`` nodes of a group at a time;
once it is ACTIVE the load balancer's members and floating IPs are brought up to date (``infra.expose``) and
``NodeRepaired`` says which server replaced which.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

import msgspec
import structlog

from proto import labels
from proto.events import ClusterHealthChanged, NodeHealth, NodeLost, NodeRepaired
from services.provisioner import certificates, coeapi, infra, model, nodeplan, nodes, store
from services.provisioner.certificates import NodeTLS
from services.provisioner.cloud import CloudError, find_api_host
from services.provisioner.drivers import driver_for
from services.provisioner.drivers.base import CoeHealth
from services.provisioner.drivers.render import host_name
from services.provisioner.state import Outcome, TaskState

if TYPE_CHECKING:
    from services.provisioner.loop import Reconciler

log = structlog.get_logger(__name__)

HEALTHY, UNHEALTHY, UNKNOWN = "HEALTHY", "UNHEALTHY", "UNKNOWN"
WATCHED = frozenset({model.CREATE_COMPLETE, model.UPDATE_COMPLETE, model.CREATE_FAILED, model.UPDATE_FAILED})
"""The statuses in which a cluster is watched for health (a build or a delete watches its servers itself)."""
HEALABLE = frozenset({model.CREATE_COMPLETE, model.UPDATE_COMPLETE})
LOST = frozenset({"ERROR", "DELETED"})
DOWN_HOSTS = frozenset({"DOWN", "UNKNOWN"})


@dataclass(frozen=True)
class Observed:
    """One server as the watch last saw it in a listing."""

    server_id: str
    name: str
    status: str
    cluster_id: str
    nodegroup: str | None = None
    role: str | None = None
    fault: str | None = None
    updated: datetime | None = None
    terminated_at: datetime | None = None
    host_status: str | None = None
    addresses: tuple[str, ...] = ()
    """The server's fixed and floating IPs (a Mesos agent is known to its master by its IP)."""

    @property
    def changed_at(self) -> datetime | None:
        """The cloud's time of the server's last change (its deletion's, to the microsecond, when it is gone)."""
        return self.terminated_at or self.updated if self.status == "DELETED" else self.updated


def node_health(node: model.KnownNode, seen: Observed | None, nodegroup: str | None = None) -> NodeHealth:
    """One node's health: the watch's view of its server when it has one, else what the store recorded."""
    def health(healthy: bool, status: str, reason: str | None = None) -> NodeHealth:
        return NodeHealth(node_name=node.name, server_id=node.server_id, healthy=healthy, status=status,
                          reason=reason, nodegroup=nodegroup)

    if seen is None:
        if node.status == model.NODE_ACTIVE:
            return health(True, "ACTIVE")
        if node.status == model.NODE_FAILED:
            return health(False, "ERROR", "the server failed (recorded before this watch began)")
        return health(False, "BUILD", "the server is being built")
    if seen.status == "DELETED":
        return health(False, "DELETED", "the server is gone from the cloud")
    if seen.status == "ERROR":
        return health(False, "ERROR", seen.fault or "the server went to ERROR without a fault message")
    if seen.status == "ACTIVE":
        if (seen.host_status or "").upper() in DOWN_HOSTS:
            return health(False, "ACTIVE", f"the server's host is {seen.host_status}")
        return health(True, "ACTIVE")
    if seen.status in ("SHUTOFF", "PAUSED", "SUSPENDED", "SHELVED", "SHELVED_OFFLOADED", "STOPPED"):
        return health(False, seen.status, f"the server is {seen.status.lower().replace('_', ' ')}")
    return health(False, seen.status, f"the server is in {seen.status}")


API_OK = "ok"
"""``health_status_reason``'s ``api`` when the COE's API passed its health check (what Magnum's monitor shows:
the answer of Kubernetes' ``/healthz``)."""


def cluster_health(nodes_health: Iterable[NodeHealth], *, api: str | None = None, api_checked: bool = False,
                   problems: Mapping[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """Magnum's ``health_status`` and ``health_status_reason``: one ``<node>.Ready`` per node (``True``/``False``),
    and for a node that is not ready, ``<node>.reason`` in words; ``api`` (the COE's API failing its health check,
    in words) and each of ``problems`` (``resource_problems``) make it UNHEALTHY and are named in the reason. An API
    that passed its check (``api_checked``, ``api`` None) shows as ``api: ok``, as in Magnum."""
    reason: dict[str, str] = {}
    status = UNKNOWN
    if api is not None:
        reason["api"] = api
        status = UNHEALTHY
    elif api_checked:
        reason["api"] = API_OK
    for key, why in sorted((problems or {}).items()):
        reason[key] = why
        status = UNHEALTHY
    for n in sorted(nodes_health, key=lambda n: n.node_name):
        reason[f"{n.node_name}.Ready"] = "True" if n.healthy else "False"
        if not n.healthy:
            reason[f"{n.node_name}.reason"] = n.reason or n.status
            status = UNHEALTHY
        elif status == UNKNOWN:
            status = HEALTHY
    return status, reason


def coe_verdict(health: NodeHealth, seen: Observed | None, coe: CoeHealth | None) -> NodeHealth:
    """A node whose server is healthy but whose COE reports it not ready (listed by its host name, its name or one
    of its addresses) is not healthy, in the COE's words; a node the COE does not list is judged by its server."""
    if coe is None or not health.healthy:
        return health
    names = (host_name(health.node_name), health.node_name, *(seen.addresses if seen is not None else ()))
    verdict = next((coe.nodes[n] for n in names if n in coe.nodes), None)
    if verdict is None or verdict[0]:
        return health
    return msgspec.structs.replace(health, healthy=False, reason=verdict[1])


@dataclass(frozen=True)
class ResourceSeen:
    """A load balancer or a volume of a watched cluster as the watch last listed it (``gone``: no longer listed)."""

    kind: str
    """``load_balancer`` or ``volume``."""
    resource_id: str
    name: str
    cluster_id: str
    status: str
    """Octavia's ``provisioning_status``, Cinder's ``status``."""
    operating_status: str | None = None
    server_id: str | None = None
    """The server a volume is attached to."""
    gone: bool = False


LB_BROKEN = frozenset({"ERROR"})
LB_DOWN = frozenset({"OFFLINE", "ERROR"})


def resource_problems(resources: Iterable[ResourceSeen], live_servers: Iterable[str]) -> dict[str, str]:
    """``<resource name>.status`` -> what is wrong, for the cluster's load balancer in ERROR, OFFLINE or gone, and for
    each volume of a running node (``live_servers``) in error or gone; empty when nothing is."""
    running = set(live_servers)
    out: dict[str, str] = {}
    for res in resources:
        key = f"{res.name or res.resource_id}.status"
        if res.kind == "load_balancer":
            if res.gone:
                out[key] = "the load balancer is gone from the cloud"
            elif res.status in LB_BROKEN or (res.operating_status or "") in LB_DOWN:
                out[key] = (f"the load balancer is provisioning_status {res.status}, "
                            f"operating_status {res.operating_status}")
        elif res.kind == "volume" and res.server_id in running:
            if res.gone:
                out[key] = f"the volume of server {res.server_id} is gone from the cloud"
            elif res.status.startswith("error"):
                out[key] = f"the volume of server {res.server_id} is in {res.status}"
    return out


def group_of(node: model.KnownNode, seen: Observed | None) -> str:
    if seen is not None and seen.nodegroup:
        return seen.nodegroup
    return nodeplan.DEFAULT_MASTER if node.role == model.MASTER else nodeplan.DEFAULT_WORKER


def auto_healing(row: store.ClusterRow) -> bool:
    if row.spec is None or row.spec.spec is None:
        return False
    value = labels.bool_value(row.resolved.labels.get(labels.AUTO_HEALING_LABEL, "") or "")
    return bool(value)


# ------------------------------------------------------------------------------------------- the task's pass


@dataclass
class Repair:
    """A node being replaced: the server it had, why, and when the next attempt may start (after a failed one)."""

    old_server_id: str
    reason: str
    nodegroup: str
    attempts: int = 1
    retry_at: float = 0.0


class Views(Protocol):
    """What a health pass reads of the watch (``watch.Watcher``)."""

    def views_of(self, cluster_id: str) -> Mapping[str, Observed]: ...


def _views(r: Reconciler, row: store.ClusterRow) -> Mapping[str, Observed]:
    return r.watcher.views_of(row.uuid) if r.watcher is not None else {}


def _resources(r: Reconciler, row: store.ClusterRow) -> Iterable[ResourceSeen]:
    found = getattr(r.watcher, "resources_of", None)
    return found(row.uuid).values() if found is not None else ()


@dataclass
class ApiState:
    """What the provisioner keeps of one cluster's COE health check between passes (``watch.Watcher.api``; a task
    ends when idle, this does not): where the API is, the client certificate, and the last verdicts."""

    host: str | None = None
    unreachable: bool = False
    """The API's address is outside ``COVE_PROVISIONER_COE_NETWORKS``: never checked (and the watch stops kicking)."""
    ca_cert_pem: str | None = None
    client: NodeTLS | None = None
    tls: ssl.SSLContext | None = None
    next_at: float = 0.0
    """``time.monotonic()`` when the next check is due."""
    failures: int = 0
    """Checks in a row whose API failed."""
    shown: CoeHealth | None = None
    """The verdict the cluster's health shows (an API failure only from its second check in a row)."""


API_FAILURES_SHOWN = 2
"""An API failing this many checks in a row is shown (one refused connection during a master's roll is not)."""
API_RETRY_SECONDS = 2.0
"""How soon a check whose API failed for the first time is made again (to confirm it)."""


async def check_coe(r: Reconciler, row: store.ClusterRow) -> CoeHealth | None:
    """The COE's health check when due (else its last verdict): None where there is none (no check interval, an
    API outside ``coe_networks`` or not found yet, a copy without a watch)."""
    states = getattr(r.watcher, "api", None)
    interval = getattr(getattr(r.watcher, "settings", None), "api_interval", 0.0)
    if states is None or interval <= 0 or row.spec is None or not row.trust_id:
        return None
    st = states.setdefault(row.uuid, ApiState())
    now = time.monotonic()
    if st.unreachable or now < st.next_at:
        return st.shown
    st.next_at = now + interval
    built = row.resolved
    try:
        if st.host is None:
            prefix = model.cluster_prefix(row.spec.name, row.uuid)
            st.host = await r.cloud.call(row.trust_id, lambda c: find_api_host(
                c, prefix, row.uuid, master_lb=built.master_lb_enabled))
            if st.host is None:
                return st.shown
            if not coeapi.reachable(st.host, r.settings.coe_networks):
                st.unreachable = True
                log.info("coe_health_check_skipped", api_host=st.host,
                         reason="the cluster's API is outside COVE_PROVISIONER_COE_NETWORKS")
                return None
        driver = driver_for(built.coe)
        probes = driver.health_probes()
        if any(p.tls for p in probes) and (st.tls is None or st.ca_cert_pem != row.ca_cert_pem):
            if st.client is None or st.ca_cert_pem != row.ca_cert_pem:
                st.client = await certificates.node_tls(r.bus.nc, row, coeapi.CLIENT_NAME, [])
            st.tls = coeapi.client_context(row.ca_cert_pem or "", st.client)
            st.ca_cert_pem = row.ca_cert_pem
    except (CloudError, ssl.SSLError, ValueError) as exc:
        log.warning("coe_health_check_unprepared", error=str(exc))
        return st.shown
    timeout = getattr(r.watcher.settings, "api_timeout", 5.0)  # type: ignore[union-attr]
    answers = await coeapi.check(st.host, built.apiserver_port, probes, tls=st.tls, timeout=timeout)
    verdict = driver.read_health(answers)
    if verdict.api is None:
        st.failures = 0
        st.shown = verdict
    else:
        st.failures += 1
        if st.failures < API_FAILURES_SHOWN:  # confirmed soon; a confirmed failure is checked at the interval again
            st.next_at = now + min(interval, API_RETRY_SECONDS)
        if st.failures >= API_FAILURES_SHOWN:
            st.shown = verdict
        log.info("coe_api_unhealthy", api_host=st.host, failures=st.failures, reason=verdict.api)
    return st.shown


async def reconcile(r: Reconciler, row: store.ClusterRow, st: TaskState) -> Outcome:
    """One health pass of a watched cluster (see the module's docstring)."""
    views = _views(r, row)
    project = row.project_id or ""
    live = {sid: n for sid, n in row.nodes.items() if n.status != model.NODE_DELETED}

    lost = []
    for sid, node in sorted(live.items()):
        seen = views.get(sid)
        if seen is None or seen.status not in LOST or node.status == model.NODE_FAILED:
            continue
        if seen.status == "ERROR" and node.status != model.NODE_ACTIVE:
            continue  # never ran (a failed build): billed until deleted, as Nova counts it (accounting's docstring)
        reason = node_health(node, seen).reason or seen.status
        lost.append((NodeLost(cluster_id=row.uuid, project_id=project, server_id=sid, node_name=node.name,
                              status=seen.status, reason=reason, lost_at=seen.changed_at), f"NodeLost:{sid}"))
        row.nodes[sid] = model.KnownNode(sid, node.name, node.role, model.NODE_FAILED)
        log.warning("node_lost", node=node.name, server_id=sid, status=seen.status, reason=reason)
    await r.emit_many(row, lost)

    outcome = Outcome.IDLE
    healing = row.status in HEALABLE and row.desired == "present" and auto_healing(row)
    if healing:
        outcome = await _repair(r, row, st, views)
    elif st.repairs:
        st.repairs.clear()

    coe = await check_coe(r, row)
    current = [coe_verdict(node_health(n, views.get(sid), group_of(n, views.get(sid))), views.get(sid), coe)
               for sid, n in row.nodes.items() if n.status != model.NODE_DELETED]
    running = [sid for sid, n in row.nodes.items() if n.status not in (model.NODE_DELETED, model.NODE_FAILED)]
    status, why = cluster_health(current, api=coe.api if coe is not None else None, api_checked=coe is not None,
                                 problems=resource_problems(_resources(r, row), running))
    if (status, why) != (row.health_status, row.health_reason or {}):
        await r.emit(row, ClusterHealthChanged(
            uuid=row.uuid, project_id=project, health_status=status,  # type: ignore[arg-type]
            health_status_reason=why, nodes=sorted((n for n in current if not n.healthy), key=lambda n: n.node_name),
        ), f"ClusterHealthChanged:{row.last_seq}")
        row.health_status, row.health_reason = status, why
        log.info("cluster_health_changed", health_status=status,
                 unhealthy=[n.node_name for n in current if not n.healthy])
    return outcome


async def _repair(r: Reconciler, row: store.ClusterRow, st: TaskState, views: Mapping[str, Observed]) -> Outcome:
    """Replace lost nodes, at most ``max_repairs_per_nodegroup`` per nodegroup at a time; POLL while any is in
    flight, IDLE when none is."""
    limit = max(1, r.settings.max_repairs_per_nodegroup)
    trust = row.trust_id
    if not trust or row.spec is None:
        return Outcome.IDLE
    now = time.monotonic()
    victims = {n.name: (sid, n) for sid, n in sorted(row.nodes.items()) if n.status == model.NODE_FAILED}
    busy: dict[str, int] = {}
    for repair in st.repairs.values():
        busy[repair.nodegroup] = busy.get(repair.nodegroup, 0) + 1
    for sid, n in row.nodes.items():  # a node still building (a repair a restarted task forgot) counts too
        if n.status == model.NODE_CREATED and n.name not in st.repairs:
            group = group_of(n, views.get(sid))
            busy[group] = busy.get(group, 0) + 1
    for name, (sid, node) in victims.items():
        seen = views.get(sid)
        repair = st.repairs.get(name)
        reason = node_health(node, seen).reason or "the node was lost"
        if repair is None:
            group = group_of(node, seen)
            if busy.get(group, 0) >= limit:
                continue
            busy[group] = busy.get(group, 0) + 1
            repair = st.repairs[name] = Repair(sid, reason, group)
            log.info("node_repair_started", node=name, server_id=sid, nodegroup=group, reason=reason)
        elif repair.old_server_id != sid:  # its replacement failed too: try again after a back-off
            if not repair.retry_at:
                repair.retry_at = now + min(2.0 ** repair.attempts, 60.0)
                repair.attempts += 1
            if now < repair.retry_at:
                continue
            repair.retry_at = 0.0
        if sid not in st.delete_requested and (seen is None or seen.status != "DELETED"):
            await r.cloud.call(trust, lambda c, sid=sid: c.delete_server(sid))  # type: ignore[misc]
            st.delete_requested.add(sid)
    if not st.repairs:
        return Outcome.IDLE

    around = await infra.ensure(r, row, st)
    due = {name for name, repair in st.repairs.items() if not repair.retry_at or now >= repair.retry_at}
    result = await nodes.converge(r, row, st, around, only=due)
    done = []
    for server in result.servers:
        repair = st.repairs.get(server.name)
        if repair is not None and server.status == "ACTIVE" and server.id != repair.old_server_id:
            done.append((server, repair))
    if done:
        if st.infra is not None and await infra.expose(r, row, st, result.servers) is None:
            return Outcome.POLL  # the load balancer is still working: report the repair once its pool has it
        await r.emit_many(row, [(NodeRepaired(
            cluster_id=row.uuid, project_id=row.project_id or "", node_name=server.name,
            old_server_id=repair.old_server_id, new_server_id=server.id, reason=repair.reason,
            nodegroup=repair.nodegroup,
        ), f"NodeRepaired:{server.id}") for server, repair in done])
        for server, repair in done:
            st.repairs.pop(server.name, None)
            log.info("node_repaired", node=server.name, old_server_id=repair.old_server_id, new_server_id=server.id)
    return Outcome.POLL if st.repairs or any(n.status == model.NODE_FAILED for n in row.nodes.values()) \
        else Outcome.IDLE
