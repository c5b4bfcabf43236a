"""Load balancer (Octavia v2) under /load-balancer, served at both /v2 and /v2.0: load balancers, listeners, pools,
members and health monitors with Octavia's provisioning semantics (the object and its load balancer go PENDING_*,
then back to ACTIVE, or to ERROR under the `lb_failure_rate` fault; writes while PENDING_* are 409), parent
linkage, cascade delete, the status tree, stats, providers and quotas. The VIP is a Neutron port from the network package."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web

from deploy.devcloud import network
from deploy.devcloud.clock import now_iso
from deploy.devcloud.config import LoadBalancerFault
from deploy.devcloud.state import Cloud, cloud_of
from deploy.devcloud.web import (
    Ctx,
    Handler,
    Routes,
    ctx,
    json_response,
    new_id,
    next_link,
    octavia_error,
    paginate,
    qbool,
    qint,
    qstr,
    read_json,
    sort_items,
    tag_filter,
)

log = structlog.get_logger("devcloud.loadbalancer")

routes = Routes("load-balancer")
ERR = octavia_error
PREFIXES = ("/load-balancer/v2", "/load-balancer/v2.0")
MAX_LIMIT = 1000

LB, LISTENER, POOL, MEMBER, HM = "load_balancer", "listener", "pool", "member", "health_monitor"
QUOTA_NAMES = {LB: "Load Balancer", LISTENER: "Listener", POOL: "Pool", MEMBER: "Member", HM: "Health Monitor"}
PROTOCOLS = {"TCP", "HTTP", "HTTPS", "TERMINATED_HTTPS", "UDP", "SCTP", "PROXY", "PROXYV2"}
ALGORITHMS = {"ROUND_ROBIN", "LEAST_CONNECTIONS", "SOURCE_IP", "SOURCE_IP_PORT"}
HM_TYPES = {"TCP", "HTTP", "HTTPS", "PING", "UDP-CONNECT", "SCTP", "TLS-HELLO"}


# --------------------------------------------------------------------------------------------------------------------
# Discovery


@routes.get("/load-balancer/", public=True)
async def versions(request: web.Request) -> web.Response:
    cloud = cloud_of(request)
    href = cloud.url("/load-balancer/v2")
    minors = range(28)
    return json_response(
        {
            "versions": [
                {"id": f"v2.{m}", "status": "CURRENT" if m == 27 else "SUPPORTED", "updated": "2016-12-11T00:00:00Z",
                 "links": [{"rel": "self", "href": href}]}
                for m in minors
            ]
        }
    )


# --------------------------------------------------------------------------------------------------------------------
# Helpers: rendering, visibility, immutability, the provisioning state machine


def render(obj: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in obj.items() if not k.startswith("_")}
    for key in ("listeners", "pools", "members", "loadbalancers", "tags", "allowed_cidrs", "l7policies"):
        if isinstance(out.get(key), list):
            out[key] = [dict(x) if isinstance(x, dict) else x for x in out[key]]
    return out


def _get(request: web.Request, kind: str, obj_id: str) -> dict[str, Any]:
    c = ctx(request)
    obj = cloud_of(request).table(kind).get(obj_id)
    if obj is None or (not c.is_admin and obj["_project_id"] != c.project_id):
        raise ERR(404, f"{QUOTA_NAMES[kind]} {obj_id} not found.")
    return obj


def _writer(c: Ctx) -> None:
    if not c.can_write:
        raise ERR(403, "Policy does not allow this request to be performed.")


def _lb_of(cloud: Cloud, obj: dict[str, Any]) -> dict[str, Any]:
    lb = cloud.table(LB).get(obj["_lb_id"])
    if lb is None:  # the load balancer went with a cascade: the child is going too
        raise ERR(404, f"Load Balancer {obj['_lb_id']} not found.")
    return lb


def _mutable(lb: dict[str, Any], deleting: bool = False) -> None:
    allowed = ("ACTIVE", "ERROR") if deleting else ("ACTIVE",)
    if lb["provisioning_status"] not in allowed:
        raise ERR(409, f"Load Balancer {lb['id']} is immutable and cannot be updated.")


def _check_quota(cloud: Cloud, project_id: str, kind: str) -> None:
    limit = cloud.quota(project_id, "load_balancer").get(kind, -1)
    if limit >= 0 and cloud.table(kind).count(project_id) >= limit:
        raise ERR(403, f"Quota has been met for resources: {QUOTA_NAMES[kind]}")


def _base(request: web.Request, kind: str, body: dict[str, Any], project_id: str) -> dict[str, Any]:
    at = now_iso()
    return {
        "id": new_id(),
        "name": body.get("name") or "",
        "description": body.get("description") or "",
        "provisioning_status": "PENDING_CREATE",
        "operating_status": "OFFLINE",
        "admin_state_up": bool(body.get("admin_state_up", True)),
        "project_id": project_id,
        "tenant_id": project_id,
        "created_at": at,
        "updated_at": None,
        "tags": list(body.get("tags") or []),
    }


def _set(cloud: Cloud, obj: dict[str, Any], status: str) -> None:
    obj["provisioning_status"] = status
    obj["updated_at"] = now_iso()
    cloud.ledger.changed(obj["id"], status)


def _online(cloud: Cloud, kind: str, obj: dict[str, Any]) -> None:
    if not obj["admin_state_up"]:
        obj["operating_status"] = "OFFLINE"
    elif kind == MEMBER:
        pool = cloud.table(POOL).get(obj["_pool_id"])
        obj["operating_status"] = "ONLINE" if pool and pool.get("healthmonitor_id") else "NO_MONITOR"
    else:
        obj["operating_status"] = "ONLINE"


def _provision(cloud: Cloud, kind: str, obj: dict[str, Any], op: str,
               on_delete: Callable[[], None] | None = None) -> None:
    """`op` (create/update/delete) of `obj`: it and its load balancer go PENDING_*; after the timing model's delay
    both go ACTIVE (or ERROR under lb_failure_rate), and a deleted object leaves its table."""
    lb = obj if kind == LB else cloud.table(LB).get(obj["_lb_id"])
    _set(cloud, obj, f"PENDING_{op.upper()}")
    if lb is not None and lb is not obj:
        _set(cloud, lb, "PENDING_UPDATE")
    timing = cloud.config.timing
    delay = cloud.delay(timing.load_balancer_seconds if kind == LB else timing.load_balancer_child_seconds)

    def done() -> None:
        failed = cloud.faults.lb_failure_rate > 0 and cloud.rng.random() < cloud.faults.lb_failure_rate
        live = cloud.table(kind).get(obj["id"]) is obj
        if live and failed:
            _set(cloud, obj, "ERROR")
            obj["operating_status"] = "ERROR"
            log.info("lb_object_failed", kind=kind, id=obj["id"], op=op)
        elif live and op == "delete":
            if on_delete is not None:
                on_delete()
        elif live:
            _set(cloud, obj, "ACTIVE")
            _online(cloud, kind, obj)
        if lb is not None and lb is not obj and cloud.table(LB).get(lb["id"]) is lb:
            _set(cloud, lb, "ERROR" if failed else "ACTIVE")
            if not failed:
                _online(cloud, LB, lb)
        if kind == HM and live and not failed:
            pool = cloud.table(POOL).get(obj["_pool_id"])
            for m in _members_of(cloud, pool):
                _online(cloud, MEMBER, m)

    cloud.later(delay, done)


def _remove(cloud: Cloud, kind: str, obj: dict[str, Any]) -> None:
    if cloud.table(kind).remove(obj["id"]) is not None:
        cloud.ledger.deleted(obj["id"])
        log.info("lb_object_deleted", kind=kind, id=obj["id"])


def _members_of(cloud: Cloud, pool: dict[str, Any] | None) -> list[dict[str, Any]]:
    if pool is None:
        return []
    table = cloud.table(MEMBER)
    return [m for m in (table.get(ref["id"]) for ref in pool["members"]) if m is not None]


def _unlink(items: list[dict[str, Any]], obj_id: str) -> None:
    items[:] = [ref for ref in items if ref["id"] != obj_id]


# --------------------------------------------------------------------------------------------------------------------
# Listing


def _list(request: web.Request, kind: str, coll: str, items: list[dict[str, Any]] | None = None) -> web.Response:
    c = ctx(request)
    cloud = cloud_of(request)
    if items is None:
        project = qstr(request, "project_id")
        if c.is_admin:
            items = list(cloud.table(kind).of_project(project) if project else cloud.table(kind).items.values())
        else:
            items = list(cloud.table(kind).of_project(c.project_id or ""))
    skip = {"limit", "marker", "page_reverse", "sort", "sort_key", "sort_dir", "fields", "tags", "tags-any",
            "not-tags", "not-tags-any", "project_id"}
    for key, value in request.query.items():
        if key in skip or value == "None":
            continue
        if key == "admin_state_up":
            want = qbool(value)
            items = [i for i in items if i.get(key) == want]
        else:
            items = [i for i in items if key in i and str(i[key]) == value]
    items = tag_filter(items, request)
    sort = qstr(request, "sort")
    key, direction = (sort.split(":") + ["asc"])[:2] if sort else (
        qstr(request, "sort_key") or "created_at", qstr(request, "sort_dir") or "asc")
    items = sort_items(items, key, direction)
    if qbool(qstr(request, "page_reverse"), False):
        items.reverse()
    limit = qint(request, "limit", ERR)
    page = paginate(items, limit=limit, marker=qstr(request, "marker"), max_limit=MAX_LIMIT, error=ERR)
    links = []
    if page.next_marker is not None:
        links.append({"rel": "next", "href": next_link(request, cloud.public_url, page.next_marker, limit)})
    fields = [f for value in request.query.getall("fields", []) for f in value.split(",") if f]
    rendered = [render(i) for i in page.items]
    if fields:  # Octavia's field selection: only these attributes of each object
        rendered = [{k: v for k, v in obj.items() if k in fields} for obj in rendered]
    return json_response({coll: rendered, f"{coll}_links": links})


async def _body(request: web.Request, key: str) -> dict[str, Any]:
    body = await read_json(request, ERR)
    spec = body.get(key)
    if not isinstance(spec, dict):
        raise ERR(400, f"Invalid input for field/attribute {key}. Value: {body}. Mandatory field missing.")
    return {k: v for k, v in spec.items() if v is not None}


def _int(spec: dict[str, Any], key: str, default: int | None = None, low: int = 0, high: int = 2**31) -> int:
    value = spec.get(key, default)
    if value is None:
        raise ERR(400, f"Invalid input for field/attribute {key}. Value: 'None'. Mandatory field missing.")
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ERR(400, f"Invalid input for field/attribute {key}. Value: '{value}'.") from None
    if not low <= n <= high:
        raise ERR(400, f"Invalid input for field/attribute {key}. Value: '{value}'. Value should be between "
                       f"{low} and {high}.")
    return n


def _choice(spec: dict[str, Any], key: str, allowed: set[str]) -> str:
    value = spec.get(key)
    if value not in allowed:
        raise ERR(400, f"Invalid input for field/attribute {key}. Value: '{value}'. Value should be one of: "
                       f"{', '.join(sorted(allowed))}")
    return str(value)


# --------------------------------------------------------------------------------------------------------------------
# Load balancers


def _vip(cloud: Cloud, project_id: str, lb_id: str, spec: dict[str, Any]) -> dict[str, Any]:
    """The VIP: an existing port (`vip_port_id`), or a new Octavia-owned Neutron port on `vip_subnet_id` or on
    `vip_network_id`'s first subnet (network.create_service_port validates visibility, quota and addresses)."""
    subnet_id = spec.get("vip_subnet_id")
    network_id = spec.get("vip_network_id")
    port_id = spec.get("vip_port_id")
    if not (subnet_id or network_id or port_id):
        raise ERR(400, "Validation failure: VIP must contain one of: vip_port_id, vip_network_id, vip_subnet_id.")
    if port_id:
        port = network.get_port(cloud, str(port_id))
        if port is None or port.get("project_id") != project_id:
            raise ERR(400, f"Validation failure: Port {port_id} not found.")
        own = False
    else:
        port = network.create_service_port(cloud, project_id, subnet_id, network_id, device_owner="Octavia",
                                           device_id=lb_id)
        own = True
    fixed = (port.get("fixed_ips") or [{}])[0]
    return {"vip_port_id": port["id"], "vip_network_id": port.get("network_id"),
            "vip_subnet_id": fixed.get("subnet_id"), "vip_address": fixed.get("ip_address"), "_own_port": own}


async def lb_list(request: web.Request) -> web.Response:
    return _list(request, LB, "loadbalancers")


async def lb_show(request: web.Request) -> web.Response:
    return json_response({"loadbalancer": render(_get(request, LB, request.match_info["id"]))})


async def lb_create(request: web.Request) -> web.Response:
    c = ctx(request)
    _writer(c)
    cloud = cloud_of(request)
    spec = await _body(request, "loadbalancer")
    project_id = str(spec["project_id"]) if c.is_admin and spec.get("project_id") else c.project_id or ""
    provider = spec.get("provider") or "amphora"
    if provider not in ("amphora", "octavia"):
        raise ERR(400, f"Provider '{provider}' is not enabled.")
    az = spec.get("availability_zone")
    if az is not None and az not in cloud.config.availability_zones:
        raise ERR(400, f"Validation failure: Invalid availability zone {az}.")
    _check_quota(cloud, project_id, LB)
    lb = _base(request, LB, spec, project_id)
    lb.update(_vip(cloud, project_id, lb["id"], spec))
    lb.update({
        "listeners": [], "pools": [], "provider": provider, "flavor_id": spec.get("flavor_id"),
        "availability_zone": az, "vip_qos_policy_id": spec.get("vip_qos_policy_id"), "additional_vips": [],
        "vip_vnic_type": "normal",
    })
    cloud.table(LB).add(lb, project_id)
    cloud.ledger.created(LB, lb["id"], project_id, name=lb["name"], status="PENDING_CREATE")
    log.info("load_balancer_creating", lb_id=lb["id"], project_id=project_id)
    _provision(cloud, LB, lb, "create")
    return json_response({"loadbalancer": render(lb)}, status=201)


async def lb_update(request: web.Request) -> web.Response:
    _writer(ctx(request))
    cloud = cloud_of(request)
    lb = _get(request, LB, request.match_info["id"])
    spec = await _body(request, "loadbalancer")
    _mutable(lb)
    for key in ("name", "description", "admin_state_up", "tags", "vip_qos_policy_id"):
        if key in spec:
            lb[key] = spec[key]
    _provision(cloud, LB, lb, "update")
    return json_response({"loadbalancer": render(lb)})


async def lb_delete(request: web.Request) -> web.Response:
    _writer(ctx(request))
    cloud = cloud_of(request)
    lb = _get(request, LB, request.match_info["id"])
    cascade = bool(qbool(qstr(request, "cascade"), False))
    _mutable(lb, deleting=True)
    if (lb["listeners"] or lb["pools"]) and not cascade:
        raise ERR(400, f"Cannot delete Load Balancer {lb['id']} - it has children")
    children = _children(cloud, lb)
    for kind, child in children:
        _set(cloud, child, "PENDING_DELETE")

    def gone() -> None:
        for kind, child in children:
            _remove(cloud, kind, child)
        if lb.get("_own_port") and lb.get("vip_port_id"):
            network.delete_port(cloud, lb["vip_port_id"])
        _remove(cloud, LB, lb)

    _provision(cloud, LB, lb, "delete", gone)
    log.info("load_balancer_deleting", lb_id=lb["id"], cascade=cascade)
    return web.Response(status=204)


def _children(cloud: Cloud, lb: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    for ref in lb["listeners"]:
        item = cloud.table(LISTENER).get(ref["id"])
        if item is not None:
            out.append((LISTENER, item))
    for ref in lb["pools"]:
        pool = cloud.table(POOL).get(ref["id"])
        if pool is None:
            continue
        out.append((POOL, pool))
        out.extend((MEMBER, m) for m in _members_of(cloud, pool))
        hm = cloud.table(HM).get(pool.get("healthmonitor_id") or "")
        if hm is not None:
            out.append((HM, hm))
    return out


async def lb_status(request: web.Request) -> web.Response:
    cloud = cloud_of(request)
    lb = _get(request, LB, request.match_info["id"])

    def brief(o: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {"id": o["id"], "name": o["name"], "operating_status": o["operating_status"],
                "provisioning_status": o["provisioning_status"], **extra}

    listeners = []
    for ref in lb["listeners"]:
        listener = cloud.table(LISTENER).get(ref["id"])
        if listener is None:
            continue
        pools = []
        for pool in (cloud.table(POOL).get(p["id"]) for p in lb["pools"]):
            if pool is None or not any(x["id"] == listener["id"] for x in pool["listeners"]):
                continue
            extra: dict[str, Any] = {
                "members": [brief(m, address=m["address"], protocol_port=m["protocol_port"])
                            for m in _members_of(cloud, pool)]
            }
            hm = cloud.table(HM).get(pool.get("healthmonitor_id") or "")
            if hm is not None:
                extra["health_monitor"] = brief(hm, type=hm["type"])
            pools.append(brief(pool, **extra))
        listeners.append(brief(listener, pools=pools))
    return json_response({"statuses": {"loadbalancer": brief(lb, listeners=listeners)}})


async def lb_stats(request: web.Request) -> web.Response:
    _get(request, LB, request.match_info["id"])
    return json_response({"stats": {"bytes_in": 0, "bytes_out": 0, "active_connections": 0,
                                    "total_connections": 0, "request_errors": 0}})


async def lb_failover(request: web.Request) -> web.Response:
    c = ctx(request)
    if not c.is_admin:
        raise ERR(403, "Policy does not allow this request to be performed.")
    cloud = cloud_of(request)
    lb = _get(request, LB, request.match_info["id"])
    _mutable(lb)
    _provision(cloud, LB, lb, "update")
    return web.Response(status=202)


# --------------------------------------------------------------------------------------------------------------------
# Listeners


async def listener_list(request: web.Request) -> web.Response:
    return _list(request, LISTENER, "listeners")


async def listener_show(request: web.Request) -> web.Response:
    return json_response({"listener": render(_get(request, LISTENER, request.match_info["id"]))})


async def listener_create(request: web.Request) -> web.Response:
    c = ctx(request)
    _writer(c)
    cloud = cloud_of(request)
    spec = await _body(request, "listener")
    if "loadbalancer_id" not in spec:
        raise ERR(400, "Invalid input for field/attribute loadbalancer_id. Value: 'None'. Mandatory field missing.")
    lb = _get(request, LB, str(spec["loadbalancer_id"]))
    protocol = _choice(spec, "protocol", PROTOCOLS - {"PROXY", "PROXYV2"})
    port = _int(spec, "protocol_port", None, 1, 65535)
    _mutable(lb)
    for ref in lb["listeners"]:
        other = cloud.table(LISTENER).get(ref["id"])
        if other is not None and other["protocol_port"] == port and (other["protocol"] == "UDP") == (
                protocol == "UDP"):
            raise ERR(409, f"Another Listener on this Load Balancer is already using protocol_port {port}")
    pool_id = spec.get("default_pool_id")
    if pool_id is not None:
        pool = _get(request, POOL, str(pool_id))
        if pool["_lb_id"] != lb["id"]:
            raise ERR(400, f"Pool {pool_id} is on another load balancer.")
    _check_quota(cloud, lb["_project_id"], LISTENER)
    listener = _base(request, LISTENER, spec, lb["_project_id"])
    listener.update({
        "protocol": protocol, "protocol_port": port, "connection_limit": int(spec.get("connection_limit", -1)),
        "default_pool_id": pool_id, "loadbalancers": [{"id": lb["id"]}], "l7policies": [],
        "default_tls_container_ref": spec.get("default_tls_container_ref"),
        "sni_container_refs": list(spec.get("sni_container_refs") or []),
        "insert_headers": dict(spec.get("insert_headers") or {}),
        "timeout_client_data": int(spec.get("timeout_client_data", 50000)),
        "timeout_member_connect": int(spec.get("timeout_member_connect", 5000)),
        "timeout_member_data": int(spec.get("timeout_member_data", 50000)),
        "timeout_tcp_inspect": int(spec.get("timeout_tcp_inspect", 0)),
        "allowed_cidrs": list(spec.get("allowed_cidrs") or []) or None,
        "_lb_id": lb["id"],
    })
    cloud.table(LISTENER).add(listener, lb["_project_id"])
    lb["listeners"].append({"id": listener["id"]})
    default_pool = cloud.table(POOL).get(str(pool_id)) if pool_id is not None else None
    if default_pool is not None:
        default_pool["listeners"].append({"id": listener["id"]})
    cloud.ledger.created(LISTENER, listener["id"], lb["_project_id"], name=listener["name"], status="PENDING_CREATE")
    _provision(cloud, LISTENER, listener, "create")
    return json_response({"listener": render(listener)}, status=201)


async def listener_update(request: web.Request) -> web.Response:
    _writer(ctx(request))
    cloud = cloud_of(request)
    listener = _get(request, LISTENER, request.match_info["id"])
    spec = await _body(request, "listener")
    _mutable(_lb_of(cloud, listener))
    for key in ("name", "description", "admin_state_up", "connection_limit", "tags", "allowed_cidrs",
                "timeout_client_data", "timeout_member_connect", "timeout_member_data", "timeout_tcp_inspect",
                "insert_headers"):
        if key in spec:
            listener[key] = spec[key]
    if "default_pool_id" in spec:
        listener["default_pool_id"] = spec["default_pool_id"]
    _provision(cloud, LISTENER, listener, "update")
    return json_response({"listener": render(listener)})


async def listener_delete(request: web.Request) -> web.Response:
    _writer(ctx(request))
    cloud = cloud_of(request)
    listener = _get(request, LISTENER, request.match_info["id"])
    lb = _lb_of(cloud, listener)
    _mutable(lb)

    def gone() -> None:
        _unlink(lb["listeners"], listener["id"])
        for ref in lb["pools"]:
            pool = cloud.table(POOL).get(ref["id"])
            if pool is not None:
                _unlink(pool["listeners"], listener["id"])
        _remove(cloud, LISTENER, listener)

    _provision(cloud, LISTENER, listener, "delete", gone)
    return web.Response(status=204)


# --------------------------------------------------------------------------------------------------------------------
# Pools


async def pool_list(request: web.Request) -> web.Response:
    return _list(request, POOL, "pools")


async def pool_show(request: web.Request) -> web.Response:
    return json_response({"pool": render(_get(request, POOL, request.match_info["id"]))})


async def pool_create(request: web.Request) -> web.Response:
    c = ctx(request)
    _writer(c)
    cloud = cloud_of(request)
    spec = await _body(request, "pool")
    listener = None
    if spec.get("listener_id"):
        listener = _get(request, LISTENER, str(spec["listener_id"]))
        lb = _lb_of(cloud, listener)
    elif spec.get("loadbalancer_id"):
        lb = _get(request, LB, str(spec["loadbalancer_id"]))
    else:
        raise ERR(400, "Validation failure: A pool must have a listener_id or a loadbalancer_id.")
    protocol = _choice(spec, "protocol", PROTOCOLS)
    algorithm = _choice(spec, "lb_algorithm", ALGORITHMS)
    _mutable(lb)
    if listener is not None and listener.get("default_pool_id"):
        raise ERR(409, f"Listener {listener['id']} already has default pool {listener['default_pool_id']}.")
    _check_quota(cloud, lb["_project_id"], POOL)
    pool = _base(request, POOL, spec, lb["_project_id"])
    pool.update({
        "protocol": protocol, "lb_algorithm": algorithm, "session_persistence": spec.get("session_persistence"),
        "loadbalancers": [{"id": lb["id"]}], "listeners": [{"id": listener["id"]}] if listener else [],
        "members": [], "healthmonitor_id": None, "tls_enabled": bool(spec.get("tls_enabled", False)),
        "tls_container_ref": None, "ca_tls_container_ref": None, "crl_container_ref": None,
        "tls_versions": None, "tls_ciphers": None, "alpn_protocols": None, "_lb_id": lb["id"],
    })
    cloud.table(POOL).add(pool, lb["_project_id"])
    lb["pools"].append({"id": pool["id"]})
    if listener is not None:
        listener["default_pool_id"] = pool["id"]
    cloud.ledger.created(POOL, pool["id"], lb["_project_id"], name=pool["name"], status="PENDING_CREATE")
    _provision(cloud, POOL, pool, "create")
    return json_response({"pool": render(pool)}, status=201)


async def pool_update(request: web.Request) -> web.Response:
    _writer(ctx(request))
    cloud = cloud_of(request)
    pool = _get(request, POOL, request.match_info["id"])
    spec = await _body(request, "pool")
    _mutable(_lb_of(cloud, pool))
    if "lb_algorithm" in spec:
        pool["lb_algorithm"] = _choice(spec, "lb_algorithm", ALGORITHMS)
    for key in ("name", "description", "admin_state_up", "session_persistence", "tags"):
        if key in spec:
            pool[key] = spec[key]
    _provision(cloud, POOL, pool, "update")
    return json_response({"pool": render(pool)})


async def pool_delete(request: web.Request) -> web.Response:
    _writer(ctx(request))
    cloud = cloud_of(request)
    pool = _get(request, POOL, request.match_info["id"])
    lb = _lb_of(cloud, pool)
    _mutable(lb)
    members = _members_of(cloud, pool)
    hm = cloud.table(HM).get(pool.get("healthmonitor_id") or "")
    for m in members:
        _set(cloud, m, "PENDING_DELETE")

    def gone() -> None:
        _unlink(lb["pools"], pool["id"])
        for ref in lb["listeners"]:
            listener = cloud.table(LISTENER).get(ref["id"])
            if listener is not None and listener.get("default_pool_id") == pool["id"]:
                listener["default_pool_id"] = None
        for m in members:
            _remove(cloud, MEMBER, m)
        if hm is not None:
            _remove(cloud, HM, hm)
        _remove(cloud, POOL, pool)

    _provision(cloud, POOL, pool, "delete", gone)
    return web.Response(status=204)


# --------------------------------------------------------------------------------------------------------------------
# Members


def _pool_for_members(request: web.Request) -> dict[str, Any]:
    return _get(request, POOL, request.match_info["pool_id"])


def _member(request: web.Request, pool: dict[str, Any]) -> dict[str, Any]:
    member = _get(request, MEMBER, request.match_info["id"])
    if member["_pool_id"] != pool["id"]:
        raise ERR(404, f"Member {member['id']} not found.")
    return member


async def member_list(request: web.Request) -> web.Response:
    pool = _pool_for_members(request)
    return _list(request, MEMBER, "members", _members_of(cloud_of(request), pool))


async def member_show(request: web.Request) -> web.Response:
    pool = _pool_for_members(request)
    return json_response({"member": render(_member(request, pool))})


async def member_create(request: web.Request) -> web.Response:
    c = ctx(request)
    _writer(c)
    cloud = cloud_of(request)
    pool = _pool_for_members(request)
    spec = await _body(request, "member")
    address = spec.get("address")
    if not isinstance(address, str) or not address:
        raise ERR(400, "Invalid input for field/attribute address. Value: 'None'. Mandatory field missing.")
    port = _int(spec, "protocol_port", None, 1, 65535)
    weight = _int(spec, "weight", 1, 0, 256)
    lb = _lb_of(cloud, pool)
    _mutable(lb)
    for m in _members_of(cloud, pool):
        if m["address"] == address and m["protocol_port"] == port:
            raise ERR(409, f"Duplicate member with address {address} and protocol_port {port} in pool "
                           f"{pool['id']}.")
    subnet_id = spec.get("subnet_id")
    if subnet_id and network.get_subnet(cloud, subnet_id) is None:
        raise ERR(400, f"Validation failure: Subnet {subnet_id} not found.")
    _check_quota(cloud, pool["_project_id"], MEMBER)
    member = _base(request, MEMBER, spec, pool["_project_id"])
    member.update({
        "address": address, "protocol_port": port, "subnet_id": subnet_id, "weight": weight,
        "backup": bool(spec.get("backup", False)), "monitor_address": spec.get("monitor_address"),
        "monitor_port": spec.get("monitor_port"), "vnic_type": "normal", "_pool_id": pool["id"],
        "_lb_id": pool["_lb_id"],
    })
    cloud.table(MEMBER).add(member, pool["_project_id"])
    pool["members"].append({"id": member["id"]})
    cloud.ledger.created(MEMBER, member["id"], pool["_project_id"], name=member["name"], status="PENDING_CREATE")
    _provision(cloud, MEMBER, member, "create")
    return json_response({"member": render(member)}, status=201)


async def member_update(request: web.Request) -> web.Response:
    _writer(ctx(request))
    cloud = cloud_of(request)
    pool = _pool_for_members(request)
    member = _member(request, pool)
    spec = await _body(request, "member")
    _mutable(_lb_of(cloud, member))
    if "weight" in spec:
        member["weight"] = _int(spec, "weight", 1, 0, 256)
    for key in ("name", "admin_state_up", "backup", "monitor_address", "monitor_port", "tags"):
        if key in spec:
            member[key] = spec[key]
    _provision(cloud, MEMBER, member, "update")
    return json_response({"member": render(member)})


async def member_delete(request: web.Request) -> web.Response:
    _writer(ctx(request))
    cloud = cloud_of(request)
    pool = _pool_for_members(request)
    member = _member(request, pool)
    _mutable(_lb_of(cloud, member))

    def gone() -> None:
        _unlink(pool["members"], member["id"])
        _remove(cloud, MEMBER, member)

    _provision(cloud, MEMBER, member, "delete", gone)
    return web.Response(status=204)


# --------------------------------------------------------------------------------------------------------------------
# Health monitors


async def hm_list(request: web.Request) -> web.Response:
    return _list(request, HM, "healthmonitors")


async def hm_show(request: web.Request) -> web.Response:
    return json_response({"healthmonitor": render(_get(request, HM, request.match_info["id"]))})


async def hm_create(request: web.Request) -> web.Response:
    c = ctx(request)
    _writer(c)
    cloud = cloud_of(request)
    spec = await _body(request, "healthmonitor")
    if "pool_id" not in spec:
        raise ERR(400, "Invalid input for field/attribute pool_id. Value: 'None'. Mandatory field missing.")
    pool = _get(request, POOL, str(spec["pool_id"]))
    hm_type = _choice(spec, "type", HM_TYPES)
    delay = _int(spec, "delay", None, 0, 2**31)
    timeout = _int(spec, "timeout", None, 0, 2**31)
    retries = _int(spec, "max_retries", None, 1, 10)
    retries_down = _int(spec, "max_retries_down", 3, 1, 10)
    if timeout > delay:
        raise ERR(400, "Validation failure: The request delay value must be greater than or equal to the timeout "
                       "value.")
    lb = _lb_of(cloud, pool)
    _mutable(lb)
    if pool.get("healthmonitor_id"):
        raise ERR(409, f"This pool already has a health monitor: {pool['healthmonitor_id']}")
    _check_quota(cloud, pool["_project_id"], HM)
    http = hm_type in ("HTTP", "HTTPS")
    hm = _base(request, HM, spec, pool["_project_id"])
    hm.update({
        "type": hm_type, "delay": delay, "timeout": timeout, "max_retries": retries,
        "max_retries_down": retries_down, "pools": [{"id": pool["id"]}],
        "http_method": spec.get("http_method", "GET") if http else None,
        "url_path": spec.get("url_path", "/") if http else None,
        "expected_codes": spec.get("expected_codes", "200") if http else None,
        "http_version": spec.get("http_version"), "domain_name": spec.get("domain_name"),
        "_pool_id": pool["id"], "_lb_id": pool["_lb_id"],
    })
    cloud.table(HM).add(hm, pool["_project_id"])
    pool["healthmonitor_id"] = hm["id"]
    cloud.ledger.created(HM, hm["id"], pool["_project_id"], name=hm["name"], status="PENDING_CREATE")
    _provision(cloud, HM, hm, "create")
    return json_response({"healthmonitor": render(hm)}, status=201)


async def hm_update(request: web.Request) -> web.Response:
    _writer(ctx(request))
    cloud = cloud_of(request)
    hm = _get(request, HM, request.match_info["id"])
    spec = await _body(request, "healthmonitor")
    _mutable(_lb_of(cloud, hm))
    for key in ("name", "admin_state_up", "delay", "timeout", "max_retries", "max_retries_down", "http_method",
                "url_path", "expected_codes", "tags"):
        if key in spec:
            hm[key] = spec[key]
    _provision(cloud, HM, hm, "update")
    return json_response({"healthmonitor": render(hm)})


async def hm_delete(request: web.Request) -> web.Response:
    _writer(ctx(request))
    cloud = cloud_of(request)
    hm = _get(request, HM, request.match_info["id"])
    _mutable(_lb_of(cloud, hm))

    def gone() -> None:
        pool = cloud.table(POOL).get(hm["_pool_id"])
        if pool is not None:
            pool["healthmonitor_id"] = None
            for m in _members_of(cloud, pool):
                _online(cloud, MEMBER, m)
        _remove(cloud, HM, hm)

    _provision(cloud, HM, hm, "delete", gone)
    return web.Response(status=204)


# --------------------------------------------------------------------------------------------------------------------
# Providers and quotas

QUOTA_KEYS = (LB, LISTENER, POOL, MEMBER, HM)


def _quota_body(cloud: Cloud, project_id: str) -> dict[str, Any]:
    quota = cloud.quota(project_id, "load_balancer")
    out: dict[str, Any] = {k: quota.get(k, -1) for k in QUOTA_KEYS}
    out.update({"l7policy": -1, "l7rule": -1, "project_id": project_id})
    return out


async def providers(request: web.Request) -> web.Response:
    return json_response({"providers": [
        {"name": "amphora", "description": "The Octavia Amphora driver."},
        {"name": "octavia", "description": "Deprecated alias of the Octavia Amphora driver."},
    ]})


async def quota_list(request: web.Request) -> web.Response:
    c = ctx(request)
    cloud = cloud_of(request)
    projects = list(cloud.identity.projects) if c.is_admin else [c.project_id or ""]
    return json_response({"quotas": [_quota_body(cloud, p) for p in projects], "quotas_links": []})


async def quota_defaults(request: web.Request) -> web.Response:
    defaults = cloud_of(request).config.quotas.default.get("load_balancer", {})
    body = {k: defaults.get(k, -1) for k in QUOTA_KEYS}
    return json_response({"quota": {**body, "l7policy": -1, "l7rule": -1}})


async def quota_show(request: web.Request) -> web.Response:
    c = ctx(request)
    project = request.match_info["project_id"]
    if project != c.project_id and not c.is_admin:
        raise ERR(403, "Policy does not allow this request to be performed.")
    body = _quota_body(cloud_of(request), project)
    body.pop("project_id")
    return json_response({"quota": body})


async def quota_update(request: web.Request) -> web.Response:
    c = ctx(request)
    if not c.is_admin:
        raise ERR(403, "Policy does not allow this request to be performed.")
    cloud = cloud_of(request)
    project = request.match_info["project_id"]
    spec = await _body(request, "quota")
    aliases = {"loadbalancer": LB, "healthmonitor": HM}
    values: dict[str, int] = {}
    for key, value in spec.items():
        key = aliases.get(key, key)
        if key in ("l7policy", "l7rule"):
            continue
        if key not in QUOTA_KEYS:
            raise ERR(400, f"Invalid input for field/attribute {key}.")
        values[key] = _int({key: value}, key, None, -1, 2**31)
    cloud.set_quota(project, "load_balancer", values)
    body = _quota_body(cloud, project)
    body.pop("project_id")
    return json_response({"quota": body}, status=202)


async def quota_reset(request: web.Request) -> web.Response:
    c = ctx(request)
    if not c.is_admin:
        raise ERR(403, "Policy does not allow this request to be performed.")
    cloud_of(request).quota_overrides.get(request.match_info["project_id"], {}).pop("load_balancer", None)
    return web.Response(status=204)


# --------------------------------------------------------------------------------------------------------------------
# The route table: every path under both /v2 and /v2.0

_TABLE: list[tuple[str, str, Handler]] = [
    ("GET", "/lbaas/loadbalancers", lb_list),
    ("POST", "/lbaas/loadbalancers", lb_create),
    ("GET", "/lbaas/loadbalancers/{id}", lb_show),
    ("PUT", "/lbaas/loadbalancers/{id}", lb_update),
    ("DELETE", "/lbaas/loadbalancers/{id}", lb_delete),
    ("GET", "/lbaas/loadbalancers/{id}/status", lb_status),
    ("GET", "/lbaas/loadbalancers/{id}/stats", lb_stats),
    ("PUT", "/lbaas/loadbalancers/{id}/failover", lb_failover),
    ("GET", "/lbaas/listeners", listener_list),
    ("POST", "/lbaas/listeners", listener_create),
    ("GET", "/lbaas/listeners/{id}", listener_show),
    ("PUT", "/lbaas/listeners/{id}", listener_update),
    ("DELETE", "/lbaas/listeners/{id}", listener_delete),
    ("GET", "/lbaas/pools", pool_list),
    ("POST", "/lbaas/pools", pool_create),
    ("GET", "/lbaas/pools/{id}", pool_show),
    ("PUT", "/lbaas/pools/{id}", pool_update),
    ("DELETE", "/lbaas/pools/{id}", pool_delete),
    ("GET", "/lbaas/pools/{pool_id}/members", member_list),
    ("POST", "/lbaas/pools/{pool_id}/members", member_create),
    ("GET", "/lbaas/pools/{pool_id}/members/{id}", member_show),
    ("PUT", "/lbaas/pools/{pool_id}/members/{id}", member_update),
    ("DELETE", "/lbaas/pools/{pool_id}/members/{id}", member_delete),
    ("GET", "/lbaas/healthmonitors", hm_list),
    ("POST", "/lbaas/healthmonitors", hm_create),
    ("GET", "/lbaas/healthmonitors/{id}", hm_show),
    ("PUT", "/lbaas/healthmonitors/{id}", hm_update),
    ("DELETE", "/lbaas/healthmonitors/{id}", hm_delete),
    ("GET", "/lbaas/providers", providers),
    ("GET", "/lbaas/quotas", quota_list),
    ("GET", "/lbaas/quotas/defaults", quota_defaults),
    ("GET", "/lbaas/quotas/{project_id}", quota_show),
    ("PUT", "/lbaas/quotas/{project_id}", quota_update),
    ("DELETE", "/lbaas/quotas/{project_id}", quota_reset),
]

for _prefix in PREFIXES:
    routes.route("GET", _prefix, public=True)(versions)
    for _method, _path, _handler in _TABLE:
        routes.route(_method, f"{_prefix}{_path}")(_handler)


def apply_load_balancer_fault(cloud: Cloud, fault: LoadBalancerFault) -> bool:
    """The load balancer named (or with the id) ``fault.name`` takes the fault's statuses now (an amphora lost:
    ``provisioning_status`` ERROR, ``operating_status`` OFFLINE); False when there is none."""
    table = cloud.table(LB)
    direct = table.get(fault.name)
    targets = [direct] if direct is not None else [lb for lb in table.items.values() if lb["name"] == fault.name]
    for lb in targets:
        log.info("load_balancer_fault", lb_id=lb["id"], provisioning_status=fault.provisioning_status,
                 operating_status=fault.operating_status)
        if fault.operating_status:
            lb["operating_status"] = fault.operating_status
        _set(cloud, lb, fault.provisioning_status or lb["provisioning_status"])
    return bool(targets)

