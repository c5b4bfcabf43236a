"""Compute (Nova v2.1 with microversions up to 2.96): discovery, flavors, servers and their state machine,
actions, metadata, tags, keypairs, server groups, limits, quota sets, volume attachments, availability zones and
hypervisors; plus the server faults the admin API injects.

A server's life: BUILD (task_state scheduling) -> waits for a build slot -> spawning -> after
timing.boot_seconds ACTIVE (or ERROR when the boot failure rate strikes). Placement happens at create: the quota
first (403), then a host from the hypervisor capacity (none -> ERROR "No valid host was found"). Delete sets
task_state deleting and the server 404s after timing.delete_seconds; capacity, ports and volumes are released then.
The Neutron side of a server's NICs and the Cinder side of its volumes live in network.py and volume.py."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog
from aiohttp import web

from deploy.devcloud.clock import now_iso
from deploy.devcloud.config import ServerFault
from deploy.devcloud.state import Cloud, Host, cloud_of
from deploy.devcloud.web import (
    ApiError,
    Ctx,
    Routes,
    ctx,
    drop_nulls,
    is_uuid,
    json_response,
    next_link,
    nova_error,
    paginate,
    qbool,
    qint,
    qstr,
    read_json,
    tag_filter,
)

log = structlog.get_logger("devcloud.compute")

routes = Routes("compute")
PREFIX = "/compute"
V21 = f"{PREFIX}/v2.1"
ERR = nova_error

MIN_VERSION = (2, 1)
MAX_VERSION = (2, 96)
MAX_LIMIT = 1000
MAX_USER_DATA = 65535

SERVERS = "server"
KEYPAIRS = "keypair"
GROUPS = "server_group"

# vm_state -> the API status, as Nova maps them
POWER_RUNNING = 1
POWER_SHUTDOWN = 4
POWER_NOSTATE = 0

NO_VALID_HOST = "No valid host was found. There are not enough hosts available."
GROUP_POLICIES = ("affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity")

Version = tuple[int, int]
MV: web.RequestKey[Version] = web.RequestKey("compute_microversion", tuple)


# --------------------------------------------------------------------------------------------------------------------
# Per-cloud compute state that the generic tables do not hold


@dataclass
class Usage:
    instances: int = 0
    cores: int = 0
    ram: int = 0


@dataclass
class ComputeState:
    flavors: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> flavor, in seed order
    usage: dict[str, Usage] = field(default_factory=dict)  # project id -> live servers' counted usage
    seq: int = 0  # creation order, the default sort (newest first)
    keypair_ids: int = 0


_STATES: weakref.WeakKeyDictionary[Cloud, ComputeState] = weakref.WeakKeyDictionary()


def compute_state(cloud: Cloud) -> ComputeState:
    state = _STATES.get(cloud)
    if state is None:
        state = _STATES[cloud] = ComputeState()
    return state


def _usage(cloud: Cloud, project_id: str) -> Usage:
    usage = compute_state(cloud).usage
    u = usage.get(project_id)
    if u is None:
        u = usage[project_id] = Usage()
    return u


def seed(cloud: Cloud) -> None:
    """Flavors from the configuration, with ids that stay the same across restarts."""
    state = compute_state(cloud)
    for f in cloud.config.flavors:
        fid = f.id or str(uuid.uuid5(uuid.NAMESPACE_URL, f"devcloud/flavor/{f.name}"))
        state.flavors[fid] = {
            "id": fid,
            "name": f.name,
            "vcpus": f.vcpus,
            "ram": f.ram_mb,
            "disk": f.disk_gb,
            "ephemeral": 0,
            "swap": 0,
            "is_public": f.is_public,
            "description": None,
            "extra_specs": {},
        }


# --------------------------------------------------------------------------------------------------------------------
# Microversions


def parse_version(raw: str) -> Version:
    """'2.61' -> (2, 61); 'latest' -> the maximum; out of [min, max] -> 406; garbage -> 400."""
    raw = raw.strip()
    if raw.lower() == "latest":
        return MAX_VERSION
    m = re.fullmatch(r"(\d+)\.(\d+)", raw)
    if not m:
        raise ERR(400, f"API Version String {raw} is of invalid format. Must be of format MajorNum.MinorNum.")
    version = (int(m.group(1)), int(m.group(2)))
    if not MIN_VERSION <= version <= MAX_VERSION:
        raise ApiError(
            406,
            {
                "computeFault": {
                    "code": 406,
                    "message": f"Version {raw} is not supported by the API. Minimum is "
                    f"{MIN_VERSION[0]}.{MIN_VERSION[1]} and maximum is {MAX_VERSION[0]}.{MAX_VERSION[1]}.",
                }
            },
        )
    return version


def negotiate(request: web.Request) -> Version:
    """The requested microversion: `OpenStack-API-Version: compute X` wins over `X-OpenStack-Nova-API-Version: X`;
    none means 2.1."""
    header = request.headers.get("OpenStack-API-Version")
    if header:
        for item in header.split(","):
            bits = item.split()
            if len(bits) == 2 and bits[0].lower() == "compute":
                return parse_version(bits[1])
    legacy = request.headers.get("X-OpenStack-Nova-API-Version")
    if legacy:
        return parse_version(legacy)
    return MIN_VERSION


def _version_headers(v: Version) -> dict[str, str]:
    text = f"{v[0]}.{v[1]}"
    return {
        "OpenStack-API-Version": f"compute {text}",
        "X-OpenStack-Nova-API-Version": text,
        "Vary": "OpenStack-API-Version, X-OpenStack-Nova-API-Version",
    }


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _versioned(fn: Handler) -> Handler:
    """Negotiate the microversion, keep it on the request, echo it on the response (errors included)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        version = negotiate(request)
        request[MV] = version
        headers = _version_headers(version)
        try:
            response = await fn(request)
        except web.HTTPException as exc:
            exc.headers.update(headers)
            raise
        response.headers.update(headers)
        return response

    handler.__name__ = fn.__name__
    handler.__doc__ = fn.__doc__
    return handler


def _api(method: str, path: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        routes.route(method, f"{V21}{path}")(_versioned(fn))
        return fn

    return register


def mv(request: web.Request) -> Version:
    return request.get(MV, MIN_VERSION)


def at_least(request: web.Request, minor: int) -> bool:
    return mv(request) >= (2, minor)


# --------------------------------------------------------------------------------------------------------------------
# Discovery (no token)


def _version_doc(cloud: Cloud) -> dict[str, Any]:
    return {
        "id": "v2.1",
        "status": "CURRENT",
        "version": f"{MAX_VERSION[0]}.{MAX_VERSION[1]}",
        "min_version": f"{MIN_VERSION[0]}.{MIN_VERSION[1]}",
        "updated": "2013-07-23T11:33:21Z",
        "links": [{"rel": "self", "href": cloud.url(f"{V21}/")}],
        "media-types": [{"base": "application/json", "type": "application/vnd.openstack.compute+json;version=2.1"}],
    }


@routes.get(V21, public=True)
async def version(request: web.Request) -> web.Response:
    return json_response({"version": _version_doc(cloud_of(request))})


@routes.get(PREFIX, public=True)
async def versions(request: web.Request) -> web.Response:
    cloud = cloud_of(request)
    v20 = {
        "id": "v2.0",
        "status": "SUPPORTED",
        "version": "",
        "min_version": "",
        "updated": "2011-01-21T11:33:21Z",
        "links": [{"rel": "self", "href": cloud.url(f"{PREFIX}/v2/")}],
    }
    return json_response({"versions": [v20, _version_doc(cloud)]})


# --------------------------------------------------------------------------------------------------------------------
# Shared helpers


def _writer(c: Ctx, action: str) -> None:
    if not c.can_write:
        raise ERR(403, f"Policy doesn't allow os_compute_api:{action} to be performed.")


def _project(c: Ctx) -> str:
    if c.project_id is None:
        raise ERR(403, "A project-scoped token is required.")
    return c.project_id


def _links(cloud: Cloud, kind: str, item_id: str) -> list[dict[str, str]]:
    return [
        {"rel": "self", "href": cloud.url(f"{V21}/{kind}/{item_id}")},
        {"rel": "bookmark", "href": cloud.url(f"{PREFIX}/{kind}/{item_id}")},
    ]


def _ref_id(ref: Any) -> str:
    """flavorRef/imageRef may be an id or an href ending in the id."""
    text = str(ref).rstrip("/")
    return text.rsplit("/", 1)[-1]


def _all_projects(request: web.Request, c: Ctx) -> bool:
    wanted = qbool(request.query.get("all_tenants"), None)
    if wanted is None and "all_tenants" in request.query and request.query["all_tenants"] == "":
        wanted = True
    if wanted is None:
        wanted = qbool(request.query.get("all_projects"), False)
    return bool(wanted) and c.is_admin


def _page_links(request: web.Request, key: str, marker: str | None, limit: int | None) -> dict[str, Any]:
    if marker is None:
        return {}
    href = next_link(request, cloud_of(request).public_url, marker, limit)
    return {f"{key}_links": [{"rel": "next", "href": href}]}


def _nested_error(exc: web.HTTPException) -> tuple[int, str]:
    """The status and message of another service's error (Neutron's, Cinder's), to re-raise in Nova's words."""
    try:
        body = json.loads(exc.text or "{}")
    except ValueError:
        return exc.status, exc.reason
    if isinstance(body, dict):
        for value in body.values():
            if isinstance(value, dict) and "message" in value:
                return exc.status, str(value["message"])
        if "faultstring" in body:
            return exc.status, str(body["faultstring"])
    return exc.status, exc.reason


# --------------------------------------------------------------------------------------------------------------------
# Flavors


def _flavor_view(request: web.Request, f: dict[str, Any], detail: bool = True) -> dict[str, Any]:
    cloud = cloud_of(request)
    view: dict[str, Any] = {"id": f["id"], "name": f["name"], "links": _links(cloud, "flavors", f["id"])}
    if at_least(request, 55):
        view["description"] = f["description"]
    if not detail:
        return view
    view.update(
        {
            "ram": f["ram"],
            "vcpus": f["vcpus"],
            "disk": f["disk"],
            "OS-FLV-EXT-DATA:ephemeral": f["ephemeral"],
            "OS-FLV-DISABLED:disabled": False,
            "swap": f["swap"] if at_least(request, 75) else (f["swap"] or ""),
            "rxtx_factor": 1.0,
            "os-flavor-access:is_public": f["is_public"],
        }
    )
    if at_least(request, 61):
        view["extra_specs"] = dict(f["extra_specs"])
    return view


def _find_flavor(cloud: Cloud, flavor_id: str) -> dict[str, Any] | None:
    return compute_state(cloud).flavors.get(flavor_id)


async def _list_flavors(request: web.Request, detail: bool) -> web.Response:
    cloud = cloud_of(request)
    c = ctx(request)
    is_public = qbool(request.query.get("is_public"), True)
    if not c.is_admin:
        is_public = True
    min_disk = qint(request, "minDisk", ERR) or 0
    min_ram = qint(request, "minRam", ERR) or 0
    items = [
        f
        for f in compute_state(cloud).flavors.values()
        if (request.query.get("is_public", "").lower() == "none" and c.is_admin or f["is_public"] == is_public)
        and f["disk"] >= min_disk
        and f["ram"] >= min_ram
    ]
    sort_key = qstr(request, "sort_key") or "flavorid"
    sort_key = {"flavorid": "id", "memory_mb": "ram", "root_gb": "disk"}.get(sort_key, sort_key)
    reverse = (qstr(request, "sort_dir") or "asc").lower() == "desc"
    if sort_key in ("id", "name", "ram", "vcpus", "disk"):
        items.sort(key=lambda f: f[sort_key], reverse=reverse)
    limit = qint(request, "limit", ERR)
    page = paginate(items, limit=limit, marker=qstr(request, "marker"), max_limit=MAX_LIMIT, error=ERR)
    body: dict[str, Any] = {"flavors": [_flavor_view(request, f, detail) for f in page.items]}
    body.update(_page_links(request, "flavors", page.next_marker, limit))
    return json_response(body)


@_api("GET", "/flavors/detail")
async def list_flavors_detail(request: web.Request) -> web.Response:
    return await _list_flavors(request, True)


@_api("GET", "/flavors")
async def list_flavors(request: web.Request) -> web.Response:
    return await _list_flavors(request, False)


def _flavor_or_404(request: web.Request) -> dict[str, Any]:
    fid = request.match_info["flavor_id"]
    f = _find_flavor(cloud_of(request), fid)
    if f is None or (not f["is_public"] and not ctx(request).is_admin):
        raise ERR(404, f"Flavor {fid} could not be found.")
    return f


@_api("GET", "/flavors/{flavor_id}")
async def get_flavor(request: web.Request) -> web.Response:
    return json_response({"flavor": _flavor_view(request, _flavor_or_404(request))})


@_api("GET", "/flavors/{flavor_id}/os-extra_specs")
async def flavor_extra_specs(request: web.Request) -> web.Response:
    return json_response({"extra_specs": dict(_flavor_or_404(request)["extra_specs"])})


@_api("GET", "/flavors/{flavor_id}/os-extra_specs/{key}")
async def flavor_extra_spec(request: web.Request) -> web.Response:
    f = _flavor_or_404(request)
    key = request.match_info["key"]
    if key not in f["extra_specs"]:
        raise ERR(404, f"Flavor {f['id']} has no extra specs with key {key}.")
    return json_response({key: f["extra_specs"][key]})


# --------------------------------------------------------------------------------------------------------------------
# Servers: views


def _server_flavor(request: web.Request, s: dict[str, Any]) -> dict[str, Any]:
    f = s["_flavor"]
    if at_least(request, 47):
        return {
            "original_name": f["name"],
            "vcpus": f["vcpus"],
            "ram": f["ram"],
            "disk": f["disk"],
            "ephemeral": f["ephemeral"],
            "swap": f["swap"],
            "extra_specs": dict(f["extra_specs"]),
        }
    return {"id": f["id"], "links": [{"rel": "bookmark", "href": cloud_of(request).url(f"{PREFIX}/flavors/{f['id']}")}]}


def server_addresses(cloud: Cloud, s: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Nova's `addresses`: the fixed IPs of the server's Neutron ports by network name, plus floating IPs."""
    ports = s["_ports"]
    if not ports:
        return {}
    from deploy.devcloud import network

    port_table = cloud.table("port")
    out: dict[str, list[dict[str, Any]]] = {}
    macs: dict[str, str] = {}
    for stored in ports:
        port = port_table.get(stored["id"]) or stored
        net_name = network.network_name(cloud, port["network_id"]) or port["network_id"]
        entries = out.setdefault(net_name, [])
        for ip in port.get("fixed_ips") or ():
            addr = ip["ip_address"]
            macs[addr] = port["mac_address"]
            entries.append(
                {
                    "version": 6 if ":" in addr else 4,
                    "addr": addr,
                    "OS-EXT-IPS:type": "fixed",
                    "OS-EXT-IPS-MAC:mac_addr": port["mac_address"],
                }
            )
    for net_name, fixed, floating in network.floating_ips_of_server(cloud, s["id"]):
        out.setdefault(net_name, []).append(
            {
                "version": 6 if ":" in floating else 4,
                "addr": floating,
                "OS-EXT-IPS:type": "floating",
                "OS-EXT-IPS-MAC:mac_addr": macs.get(fixed, ""),
            }
        )
    return out


def _volumes_attached(cloud: Cloud, s: dict[str, Any], request: web.Request) -> list[dict[str, Any]]:
    from deploy.devcloud import volume

    out = []
    for a in volume.volumes_of_server(cloud, s["id"]):
        item: dict[str, Any] = {"id": a["volume_id"]}
        if at_least(request, 3):
            item["delete_on_termination"] = bool(s["_bdm_delete"].get(a["volume_id"], False))
        out.append(item)
    return out


def server_view(request: web.Request, s: dict[str, Any]) -> dict[str, Any]:
    cloud = cloud_of(request)
    c = ctx(request)
    view: dict[str, Any] = {
        "id": s["id"],
        "name": s["name"],
        "status": s["status"],
        "tenant_id": s["_project_id"],
        "user_id": s["user_id"],
        "metadata": dict(s["metadata"]),
        "hostId": s["hostId"],
        "image": (
            {"id": s["_image_id"], "links": [{"rel": "bookmark", "href": cloud.url(f"{PREFIX}/images/{s['_image_id']}")}]}
            if s["_image_id"]
            else ""
        ),
        "flavor": _server_flavor(request, s),
        "created": s["created"],
        "updated": s["updated"],
        "addresses": server_addresses(cloud, s),
        "accessIPv4": "",
        "accessIPv6": "",
        "links": _links(cloud, "servers", s["id"]),
        "OS-DCF:diskConfig": "MANUAL",
        "progress": 0,
        "OS-EXT-AZ:availability_zone": s["_az"] or "",
        "config_drive": s["config_drive"],
        "key_name": s["key_name"],
        "OS-SRV-USG:launched_at": s["_launched_at"],
        "OS-SRV-USG:terminated_at": None,
        "security_groups": [{"name": n} for n in s["_security_groups"]],
        "OS-EXT-STS:task_state": s["_task_state"],
        "OS-EXT-STS:vm_state": s["_vm_state"],
        "OS-EXT-STS:power_state": s["_power_state"],
        "os-extended-volumes:volumes_attached": _volumes_attached(cloud, s, request),
    }
    if s["status"] == "ERROR" and s["_fault"]:
        fault = {k: v for k, v in s["_fault"].items() if k != "details" or c.is_admin}
        view["fault"] = fault
    if c.is_admin:
        view["OS-EXT-SRV-ATTR:host"] = s["_host"]
        view["OS-EXT-SRV-ATTR:hypervisor_hostname"] = s["_host"]
        view["OS-EXT-SRV-ATTR:instance_name"] = s["_instance_name"]
        if at_least(request, 3):
            view.update(
                {
                    "OS-EXT-SRV-ATTR:reservation_id": s["_reservation_id"],
                    "OS-EXT-SRV-ATTR:launch_index": s["_launch_index"],
                    "OS-EXT-SRV-ATTR:kernel_id": "",
                    "OS-EXT-SRV-ATTR:ramdisk_id": "",
                    "OS-EXT-SRV-ATTR:root_device_name": "/dev/vda",
                    "OS-EXT-SRV-ATTR:user_data": s["_user_data"],
                }
            )
        if at_least(request, 16):
            view["host_status"] = "UP" if s["_host"] and s["_az"] not in cloud.faults.down_availability_zones else ""
    if at_least(request, 3) and (c.is_admin or at_least(request, 90)):
        view["OS-EXT-SRV-ATTR:hostname"] = s["_hostname"]
    if at_least(request, 9):
        view["locked"] = False
    if at_least(request, 19):
        view["description"] = s["description"]
    if at_least(request, 26):
        view["tags"] = list(s["tags"])
    if at_least(request, 63):
        view["trusted_image_certificates"] = None
    if at_least(request, 71):
        view["server_groups"] = list(s["_groups"])
    if at_least(request, 73):
        view["locked_reason"] = None
    if at_least(request, 96):
        view["pinned_availability_zone"] = s["_requested_az"]
    return view


def _brief_view(request: web.Request, s: dict[str, Any]) -> dict[str, Any]:
    return {"id": s["id"], "name": s["name"], "links": _links(cloud_of(request), "servers", s["id"])}


def _server_or_404(request: web.Request, server_id: str | None = None) -> dict[str, Any]:
    sid = server_id or request.match_info["server_id"]
    s = cloud_of(request).table(SERVERS).get(sid)
    c = ctx(request)
    if s is None or (s["_project_id"] != c.project_id and not c.is_admin):
        raise ERR(404, f"Instance {sid} could not be found.")
    return s


# --------------------------------------------------------------------------------------------------------------------
# Servers: state transitions


def _touch(s: dict[str, Any]) -> None:
    s["updated"] = now_iso()


def _set_state(
    cloud: Cloud,
    s: dict[str, Any],
    status: str,
    vm_state: str,
    task_state: str | None,
    power_state: int | None = None,
) -> None:
    previous = s["status"]
    s["status"] = status
    s["_vm_state"] = vm_state
    s["_task_state"] = task_state
    if power_state is not None:
        s["_power_state"] = power_state
    _touch(s)
    if status != previous:
        cloud.ledger.changed(s["id"], status, host=s["_host"])
        log.info("server_status", server_id=s["id"], status=status, previous=previous)


def _fail(cloud: Cloud, s: dict[str, Any], message: str, code: int = 500, details: str = "") -> None:
    s["_fault"] = {"code": code, "message": message, "created": now_iso(), "details": details}
    _set_state(cloud, s, "ERROR", "error", None, POWER_NOSTATE if s["_vm_state"] == "building" else None)


def _alive(cloud: Cloud, s: dict[str, Any]) -> bool:
    return cloud.table(SERVERS).get(s["id"]) is s


def _start_build(cloud: Cloud, s: dict[str, Any]) -> None:
    """A build slot is ours: spawn, then become ACTIVE (or ERROR) after the boot time."""
    if not _alive(cloud, s) or s["status"] != "BUILD":
        cloud.builds.release()
        return
    s["_task_state"] = "spawning"
    _touch(s)

    def finish() -> None:
        cloud.builds.release()
        if not _alive(cloud, s) or s["status"] != "BUILD" or s["_task_state"] == "deleting":
            return
        if cloud.faults.boot_failure_rate > 0 and cloud.rng.random() < cloud.faults.boot_failure_rate:
            _fail(cloud, s, f"Build of instance {s['id']} aborted: Failed to spawn the instance (injected boot failure).",
                  details="devcloud boot_failure_rate")
            return
        s["_launched_at"] = now_iso().replace("Z", ".000000")
        _set_state(cloud, s, "ACTIVE", "active", None, POWER_RUNNING)
        _pending_faults(cloud, s)

    cloud.later(cloud.delay(cloud.config.timing.boot_seconds), finish)


def _pending_faults(cloud: Cloud, s: dict[str, Any]) -> None:
    """A fault injected for a server name before the server existed strikes once the server is ACTIVE."""
    for fault in list(cloud.faults.servers):
        if fault.name in (s["name"], s["id"]):
            cloud.faults.servers.remove(fault)
            _schedule_fault(cloud, s, fault)


def _release(cloud: Cloud, s: dict[str, Any]) -> None:
    """The server is gone: capacity, ports, volumes, group membership, quota usage, the table, the ledger."""
    from deploy.devcloud import network, volume

    cloud.table(SERVERS).remove(s["id"])
    f = s["_flavor"]
    if s["_host"]:
        cloud.capacity.release(s["_host"], f["vcpus"], f["ram"], s["_disk_gb"])
    if s["_ports"]:
        network.release_server_ports(cloud, s["id"])
    volume.release_server_volumes(cloud, s["id"])
    groups = cloud.table(GROUPS)
    for gid in s["_groups"]:
        group = groups.get(gid)
        if group is not None and s["id"] in group["members"]:
            group["members"].remove(s["id"])
    u = _usage(cloud, s["_project_id"])
    u.instances -= 1
    u.cores -= f["vcpus"]
    u.ram -= f["ram"]
    cloud.ledger.deleted(s["id"])
    log.info("server_deleted", server_id=s["id"], project_id=s["_project_id"])


def _schedule_fault(cloud: Cloud, s: dict[str, Any], fault: ServerFault) -> None:
    def strike() -> None:
        if not _alive(cloud, s):
            return
        log.info("server_fault", server_id=s["id"], action=fault.action)
        if fault.action == "vanish":
            _release(cloud, s)
        else:
            _fail(cloud, s, "Hardware failure", details="devcloud injected server fault")
            s["_power_state"] = POWER_SHUTDOWN

    cloud.later(max(0.0, fault.after_seconds) * cloud.time_factor, strike)


def apply_server_fault(cloud: Cloud, fault: ServerFault) -> bool:
    """Schedule `fault` on every existing server whose name or id matches; False when there is none yet (the admin
    API then keeps the fault and it strikes when a server of that name becomes ACTIVE)."""
    table = cloud.table(SERVERS)
    direct = table.get(fault.name)
    targets = [direct] if direct is not None else [s for s in table.items.values() if s["name"] == fault.name]
    for s in targets:
        _schedule_fault(cloud, s, fault)
    return bool(targets)


def apply_zone_down(cloud: Cloud, az: str) -> None:
    """Every server in the availability zone goes to ERROR."""
    for s in list(cloud.table(SERVERS).items.values()):
        if s["_az"] == az and s["status"] != "ERROR" and s["_task_state"] != "deleting":
            _fail(cloud, s, f"Availability zone {az} is down", details="devcloud injected zone fault")
            s["_power_state"] = POWER_NOSTATE


# --------------------------------------------------------------------------------------------------------------------
# Servers: create


def _quota_check(cloud: Cloud, project_id: str, flavor: dict[str, Any], wanted: int, min_count: int) -> int:
    """How many of `wanted` servers (at least `min_count`) the compute quota allows; else Nova's 403."""
    quota = cloud.quota(project_id, "compute")
    used = _usage(cloud, project_id)
    allowed = wanted
    first_over: tuple[str, int, int, int] | None = None
    for resource, per, in_use in (
        ("instances", 1, used.instances),
        ("cores", flavor["vcpus"], used.cores),
        ("ram", flavor["ram"], used.ram),
    ):
        limit = quota.get(resource, -1)
        if limit < 0 or per == 0:
            continue
        fits = max(0, (limit - in_use) // per)
        if fits < min_count and first_over is None:
            first_over = (resource, per * min_count, in_use, limit)
        allowed = min(allowed, fits)
    if first_over is not None:
        resource, requested, in_use, limit = first_over
        raise ERR(
            403,
            f"Quota exceeded for {resource}: Requested {requested}, but already used {in_use} of {limit} {resource}",
        )
    return max(min_count, allowed)


def _validate_user_data(raw: Any) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise ERR(400, "Invalid input for field/attribute user_data. Value: not a string.")
    if len(raw) > MAX_USER_DATA:
        raise ERR(400, f"User data too large. User data must be no larger than {MAX_USER_DATA} bytes once base64 "
                       f"encoded. Your data is {len(raw)} bytes")
    try:
        base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ERR(400, "User data needs to be valid base 64.") from None
    return raw


def _count(body: dict[str, Any], key: str, default: int) -> int:
    value = body.get(key, default)
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ERR(400, f"Invalid input for field/attribute {key}. Value: {value}.") from None
    if n < 1:
        raise ERR(400, f"Invalid input for field/attribute {key}. Value: {value}. {value} is less than the minimum of 1")
    return n


@dataclass
class NicRequest:
    network_id: str | None
    port_id: str | None


def _nic_requests(cloud: Cloud, request: web.Request, project_id: str, networks: Any) -> list[NicRequest]:
    if networks is None:
        if at_least(request, 37):
            raise ERR(400, "Invalid input for field/attribute networks. Value: None. 'networks' is a required "
                           "property")
        networks = "auto" if len(_project_networks(cloud, project_id)) == 1 else "none"
    if networks == "none":
        return []
    if networks == "auto":
        nets = _project_networks(cloud, project_id)
        if len(nets) != 1:
            raise ERR(
                400,
                f"Unable to automatically allocate a network for project {project_id}: it has {len(nets)} networks; "
                "'auto' needs exactly one. Pass networks explicitly.",
            )
        return [NicRequest(nets[0], None)]
    if not isinstance(networks, list):
        raise ERR(400, f"Invalid input for field/attribute networks. Value: {networks!r}.")
    nics = []
    for item in networks:
        if not isinstance(item, dict):
            raise ERR(400, f"Invalid input for field/attribute networks. Value: {networks!r}.")
        item = drop_nulls(item)
        port_id = item.get("port")
        net_id = item.get("uuid")
        if port_id is not None and not is_uuid(str(port_id)):
            raise ERR(400, f"Bad networks format: port uuid ({port_id}) is not in proper format")
        if net_id is not None and not is_uuid(str(net_id)):
            raise ERR(400, f"Bad networks format: network uuid is not in proper format ({net_id})")
        if port_id is None and net_id is None:
            raise ERR(400, "Bad networks format: a network entry needs 'uuid' or 'port'")
        nics.append(NicRequest(None if port_id else str(net_id), str(port_id) if port_id else None))
    return nics


def _project_networks(cloud: Cloud, project_id: str) -> list[str]:
    return [
        n["id"] for n in cloud.table("network").of_project(project_id) if not n.get("router:external", False)
    ]


def _security_group_names(body: dict[str, Any]) -> list[str]:
    raw = body.get("security_groups")
    if raw is None:
        return ["default"]
    if not isinstance(raw, list):
        raise ERR(400, "Invalid input for field/attribute security_groups.")
    names = []
    for item in raw:
        name = item.get("name") if isinstance(item, dict) else None
        if not name:
            raise ERR(400, "Invalid input for field/attribute security_groups: each needs a 'name'.")
        names.append(str(name))
    return names or ["default"]


def _validate_metadata(cloud: Cloud, project_id: str, metadata: Any) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise ERR(400, "Invalid input for field/attribute metadata. Value must be an object.")
    for k, v in metadata.items():
        if not isinstance(v, str) or not 1 <= len(k) <= 255 or len(v) > 255:
            raise ERR(400, f"Invalid input for field/attribute metadata. Value: {{{k!r}: {v!r}}}.")
    limit = cloud.quota(project_id, "compute").get("metadata_items", -1)
    if 0 <= limit < len(metadata):
        raise ERR(403, "Quota exceeded for metadata_items: the number of metadata items exceeds the maximum "
                       f"({len(metadata)} of {limit}).")
    return {str(k): v for k, v in metadata.items()}


def _keypair(cloud: Cloud, user_id: str, name: str) -> dict[str, Any] | None:
    return cloud.table(KEYPAIRS).get(f"{user_id}/{name}")


def _image(cloud: Cloud, ref: str) -> dict[str, Any] | None:
    image = cloud.table("image").get(ref)
    return image


def _place(
    cloud: Cloud, flavor: dict[str, Any], disk_gb: int, az: str | None, group: dict[str, Any] | None
) -> Host | None:
    down = set(cloud.faults.down_availability_zones)
    avoid: set[str] = set()
    if group is not None and group["members"]:
        servers = cloud.table(SERVERS)
        member_hosts = {(servers.get(m) or {}).get("_host") for m in group["members"]} - {None}
        policy = group["policy"]
        if policy in ("anti-affinity", "soft-anti-affinity"):
            avoid = {h for h in member_hosts if h}
        elif policy in ("affinity", "soft-affinity") and member_hosts:
            avoid = {h.name for h in cloud.capacity.hosts if h.name not in member_hosts}
        host = cloud.capacity.place(flavor["vcpus"], flavor["ram"], disk_gb, az, down, avoid)
        if host is not None or not policy.startswith("soft-"):
            return host
    return cloud.capacity.place(flavor["vcpus"], flavor["ram"], disk_gb, az, down)


def _required_spec(body: dict[str, Any], key: str) -> dict[str, Any]:
    """The body's `key` object (Nova's 400 when it is missing), with OSC's explicit nulls dropped."""
    spec = body.get(key)
    if not isinstance(spec, dict):
        raise ERR(400, f"Invalid input for field/attribute {key}: '{key}' is a required property")
    return drop_nulls(spec)


def _valid_name(spec: dict[str, Any]) -> str:
    name = spec.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 255:
        raise ERR(400, f"Invalid input for field/attribute name. Value: {name!r}.")
    return name


@_api("POST", "/servers")
async def create_server(request: web.Request) -> web.Response:
    cloud = cloud_of(request)
    c = ctx(request)
    _writer(c, "servers:create")
    project_id = _project(c)
    body = await read_json(request, ERR)
    spec = _required_spec(body, "server")
    name = _valid_name(spec)
    flavor_ref = spec.get("flavorRef")
    if flavor_ref is None:
        raise ERR(400, "Invalid input for field/attribute server: 'flavorRef' is a required property")
    flavor = _find_flavor(cloud, _ref_id(flavor_ref))
    if flavor is None:
        raise ERR(400, f"Flavor {flavor_ref} could not be found.")

    bdm = spec.get("block_device_mapping_v2") or []
    if not isinstance(bdm, list):
        raise ERR(400, "Invalid input for field/attribute block_device_mapping_v2.")
    root = next((b for b in bdm if isinstance(b, dict) and str(b.get("boot_index", "")) == "0"), None)
    boot_from_volume = root is not None and root.get("destination_type") == "volume"
    image_ref = spec.get("imageRef") or ""
    if not image_ref and root is not None and root.get("source_type") == "image":
        image_ref = root.get("uuid") or ""
    image_id = _ref_id(image_ref) if image_ref else ""
    if image_id:
        if _image(cloud, image_id) is None:
            raise ERR(400, f"Image {image_ref} could not be found.")
    elif not boot_from_volume:
        raise ERR(400, "Missing imageRef attribute")
    volume_ids = [
        str(b["uuid"])
        for b in bdm
        if isinstance(b, dict) and b.get("source_type") == "volume" and b.get("uuid")
    ]
    if boot_from_volume and root is not None and root.get("source_type") == "volume":
        image_id = ""

    key_name = spec.get("key_name")
    if key_name is not None and _keypair(cloud, c.user_id, str(key_name)) is None:
        raise ERR(400, "Invalid key_name provided.")
    user_data = _validate_user_data(spec.get("user_data"))
    metadata = _validate_metadata(cloud, project_id, spec.get("metadata"))
    security_groups = _security_group_names(spec)
    requested_az = spec.get("availability_zone")
    az = None
    if requested_az:
        az = str(requested_az).split(":", 1)[0] or None
        if az is not None and az not in cloud.config.availability_zones:
            raise ERR(400, "The requested availability zone is not available")
    tags = spec.get("tags") or []
    if tags and not at_least(request, 52):
        raise ERR(400, "Additional properties are not allowed ('tags' was unexpected)")
    if not isinstance(tags, list) or len(tags) > 50 or any(not isinstance(t, str) or "," in t or "/" in t
                                                          for t in tags):
        raise ERR(400, f"Invalid input for field/attribute tags. Value: {tags!r}.")
    description = spec.get("description")
    if description is not None and not at_least(request, 19):
        raise ERR(400, "Additional properties are not allowed ('description' was unexpected)")
    nics = _nic_requests(cloud, request, project_id, spec.get("networks"))
    min_count = _count(spec, "min_count", 1)
    max_count = _count(spec, "max_count", min_count)
    if max_count < min_count:
        raise ERR(400, "min_count must be <= max_count")
    if (nics and any(n.port_id for n in nics) or volume_ids) and max_count > 1:
        raise ERR(400, "Unable to launch multiple instances with a single configured port or volume ID.")

    hints = body.get("OS-SCH-HNT:scheduler_hints") or body.get("os:scheduler_hints") or {}
    group = None
    if isinstance(hints, dict) and hints.get("group"):
        gid = str(hints["group"])
        group = cloud.table(GROUPS).get(gid)
        if group is None or (group["_project_id"] != project_id and not c.is_admin):
            raise ERR(400, f"Invalid input for field/attribute group. Value: {gid}. Server group {gid} not found.")

    count = _quota_check(cloud, project_id, flavor, max_count, min_count)
    if group is not None:
        limit = cloud.quota(project_id, "compute").get("server_group_members", -1)
        if 0 <= limit < len(group["members"]) + count:
            raise ERR(403, "Quota exceeded, too many servers in group")

    disk_gb = 0 if boot_from_volume else flavor["disk"]
    reservation_id = f"r-{secrets.token_hex(4)}"
    created: list[dict[str, Any]] = []
    for index in range(count):
        server_name = name if count == 1 else f"{name}-{index + 1}"
        s = _new_server(
            cloud, c, project_id, server_name, flavor, image_id, disk_gb, az, requested_az, key_name, user_data,
            metadata, security_groups, tags, description, spec, reservation_id, index,
        )
        try:
            _boot(cloud, s, nics, group, volume_ids, bdm)
        except web.HTTPException:
            for done in created + [s]:
                if _alive(cloud, done):
                    _release(cloud, done)
            raise
        created.append(s)

    first = created[0]
    location = cloud.url(f"{V21}/servers/{first['id']}")
    reply: dict[str, Any] = {
        "server": {
            "id": first["id"],
            "links": _links(cloud, "servers", first["id"]),
            "OS-DCF:diskConfig": "MANUAL",
            "security_groups": [{"name": n} for n in security_groups],
            "adminPass": first["_admin_pass"],
        }
    }
    if body.get("return_reservation_id") or spec.get("return_reservation_id"):
        reply = {"reservation_id": reservation_id}
    return json_response(reply, status=202, headers={"Location": location})


def _new_server(
    cloud: Cloud,
    c: Ctx,
    project_id: str,
    name: str,
    flavor: dict[str, Any],
    image_id: str,
    disk_gb: int,
    az: str | None,
    requested_az: Any,
    key_name: Any,
    user_data: str | None,
    metadata: dict[str, str],
    security_groups: list[str],
    tags: list[str],
    description: Any,
    spec: dict[str, Any],
    reservation_id: str,
    index: int,
) -> dict[str, Any]:
    state = compute_state(cloud)
    state.seq += 1
    sid = str(uuid.uuid4())
    at = now_iso()
    s: dict[str, Any] = {
        "id": sid,
        "name": name,
        "status": "BUILD",
        "user_id": c.user_id,
        "metadata": dict(metadata),
        "hostId": "",
        "created": at,
        "updated": at,
        "key_name": key_name,
        "config_drive": "True" if spec.get("config_drive") in (True, "true", "True") else "",
        "description": description,
        "tags": list(dict.fromkeys(tags)),
        "_seq": state.seq,
        "_flavor": flavor,
        "_image_id": image_id,
        "_disk_gb": disk_gb,
        "_az": az,
        "_requested_az": requested_az if isinstance(requested_az, str) else None,
        "_host": None,
        "_ports": [],
        "_groups": [],
        "_bdm_delete": {},
        "_security_groups": list(security_groups),
        "_vm_state": "building",
        "_task_state": "scheduling",
        "_power_state": POWER_NOSTATE,
        "_fault": None,
        "_launched_at": None,
        "_user_data": user_data,
        "_admin_pass": secrets.token_urlsafe(9),
        "_instance_name": f"instance-{state.seq:08x}",
        "_hostname": re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63] or "server",
        "_reservation_id": reservation_id,
        "_launch_index": index,
    }
    cloud.table(SERVERS).add(s, project_id)
    u = _usage(cloud, project_id)
    u.instances += 1
    u.cores += flavor["vcpus"]
    u.ram += flavor["ram"]
    cloud.ledger.created(
        "server", sid, project_id, name=name, status="BUILD", vcpus=flavor["vcpus"], ram_mb=flavor["ram"],
        disk_gb=disk_gb, flavor=flavor["name"], host=None, availability_zone=az,
    )
    log.info("server_created", server_id=sid, project_id=project_id, name=name, flavor=flavor["name"])
    return s


def _boot(
    cloud: Cloud,
    s: dict[str, Any],
    nics: list[NicRequest],
    group: dict[str, Any] | None,
    volume_ids: list[str],
    bdm: list[Any],
) -> None:
    """Place the new server. No host: ERROR with Nova's fault. A host: ports, volumes, then a build slot."""
    flavor = s["_flavor"]
    host = _place(cloud, flavor, s["_disk_gb"], s["_az"], group)
    if group is not None:
        group["members"].append(s["id"])
        s["_groups"].append(group["id"])
    if host is None:
        _fail(cloud, s, NO_VALID_HOST, details="devcloud capacity: no host fits")
        return
    s["_host"] = host.name
    s["_az"] = host.az
    s["hostId"] = hashlib.sha224(f"{s['_project_id']}{host.name}".encode()).hexdigest()
    cloud.ledger.changed(s["id"], "BUILD", host=host.name, availability_zone=host.az)
    if nics:
        from deploy.devcloud import network

        s["_task_state"] = "networking"
        for nic in nics:
            # network.py raises Nova's own errors: 400 unknown network or group, 404 port, 409 in use, 403 quota
            port = network.create_server_port(
                cloud, s["_project_id"], nic.network_id, nic.port_id, s["id"], s["_security_groups"]
            )
            s["_ports"].append(port)
        # Nova shows the names of the groups on the server's ports, whatever the request named them by (OSC
        # sends ids as {"name": <id>})
        groups_table = cloud.table("security_group")
        names = [g["name"] for p in s["_ports"] for gid in p.get("security_groups") or ()
                 if (g := groups_table.get(gid)) is not None]
        if names:
            s["_security_groups"] = list(dict.fromkeys(names))
        s["_task_state"] = "scheduling"
    if volume_ids:
        from deploy.devcloud import volume

        for b in bdm:
            if isinstance(b, dict) and b.get("source_type") == "volume" and b.get("uuid"):
                try:
                    volume.attach_volume(cloud, str(b["uuid"]), s["id"], s["_project_id"], b.get("device_name"))
                except web.HTTPException as exc:
                    raise ERR(400, _nested_error(exc)[1]) from None
                s["_bdm_delete"][str(b["uuid"])] = bool(b.get("delete_on_termination"))
    cloud.builds.acquire(lambda: _start_build(cloud, s))


# --------------------------------------------------------------------------------------------------------------------
# Servers: read, list, update, delete


def _filter_servers(request: web.Request, items: Iterable[dict[str, Any]], c: Ctx) -> list[dict[str, Any]]:
    out = list(items)
    name = qstr(request, "name")
    if name:
        try:
            pattern = re.compile(name)
        except re.error:
            raise ERR(400, f"Invalid name filter: {name}") from None
        out = [s for s in out if pattern.search(s["name"])]
    status = qstr(request, "status")
    if status:
        wanted = status.upper()
        if wanted == "DELETED":
            return []
        out = [s for s in out if s["status"] == wanted]
    if qbool(request.query.get("deleted"), False):
        return []
    image = qstr(request, "image")
    if image:
        out = [s for s in out if s["_image_id"] == _ref_id(image)]
    flavor = qstr(request, "flavor")
    if flavor:
        out = [s for s in out if s["_flavor"]["id"] == _ref_id(flavor)]
    az = qstr(request, "availability_zone")
    if az:
        out = [s for s in out if s["_az"] == az]
    key_name = qstr(request, "key_name")
    if key_name:
        out = [s for s in out if s["key_name"] == key_name]
    if c.is_admin:
        host = qstr(request, "host")
        if host:
            out = [s for s in out if s["_host"] == host]
    ip = qstr(request, "ip")
    if ip:
        try:
            ip_re = re.compile(ip)
        except re.error:
            raise ERR(400, f"Invalid ip filter: {ip}") from None
        out = [s for s in out if any(ip_re.search(a["ip_address"])
                                     for p in s["_ports"] for a in p.get("fixed_ips") or ())]
    since = qstr(request, "changes-since") or qstr(request, "changes-before")
    if since:
        try:
            point = datetime.fromisoformat(since)
        except ValueError:
            raise ERR(400, f"Invalid input for query parameters changes-since. Value: {since}.") from None
        if "changes-since" in request.query:
            out = [s for s in out if datetime.fromisoformat(s["updated"]) >= point]
        else:
            out = [s for s in out if datetime.fromisoformat(s["updated"]) <= point]
    out = tag_filter(out, request)
    return out


_SORT_KEYS = {
    "created_at": "_seq", "updated_at": "updated", "display_name": "name", "name": "name", "uuid": "id",
    "vm_state": "_vm_state", "task_state": "_task_state", "power_state": "_power_state", "host": "_host",
    "availability_zone": "_az", "key_name": "key_name", "project_id": "_project_id", "user_id": "user_id",
    "launched_at": "_launched_at", "hostname": "_hostname",
}


def _sort_key(attr: str) -> Callable[[dict[str, Any]], tuple[bool, Any]]:
    def key(s: dict[str, Any]) -> tuple[bool, Any]:
        value = s.get(attr)
        return (value is None, value if value is not None else 0)

    return key


async def _list_servers(request: web.Request, detail: bool) -> web.Response:
    cloud = cloud_of(request)
    c = ctx(request)
    table = cloud.table(SERVERS)
    every = _all_projects(request, c)
    wanted_project = qstr(request, "project_id") or qstr(request, "tenant_id")
    if every and wanted_project:
        pool: Iterable[dict[str, Any]] = table.of_project(wanted_project)
    else:
        pool = table.visible(c.project_id, every)
    items = _filter_servers(request, pool, c)
    sort_keys = request.query.getall("sort_key", [])
    sort_dirs = request.query.getall("sort_dir", [])
    if sort_keys:
        for i in range(len(sort_keys) - 1, -1, -1):
            attr = _SORT_KEYS.get(sort_keys[i])
            if attr is None:
                raise ERR(400, f"Invalid sort_key: {sort_keys[i]}")
            reverse = (sort_dirs[i] if i < len(sort_dirs) else "desc").lower() == "desc"
            items.sort(key=_sort_key(attr), reverse=reverse)
    else:
        items.sort(key=lambda s: s["_seq"], reverse=True)
    limit = qint(request, "limit", ERR)
    page = paginate(items, limit=limit, marker=qstr(request, "marker"), max_limit=MAX_LIMIT, error=ERR)
    view = server_view if detail else _brief_view
    body: dict[str, Any] = {"servers": [view(request, s) for s in page.items]}
    body.update(_page_links(request, "servers", page.next_marker, limit))
    return json_response(body)


@_api("GET", "/servers/detail")
async def list_servers_detail(request: web.Request) -> web.Response:
    return await _list_servers(request, True)


@_api("GET", "/servers")
async def list_servers(request: web.Request) -> web.Response:
    return await _list_servers(request, False)


@_api("GET", "/servers/{server_id}")
async def get_server(request: web.Request) -> web.Response:
    return json_response({"server": server_view(request, _server_or_404(request))})


@_api("PUT", "/servers/{server_id}")
async def update_server(request: web.Request) -> web.Response:
    c = ctx(request)
    _writer(c, "servers:update")
    s = _server_or_404(request)
    body = await read_json(request, ERR)
    spec = body.get("server")
    if not isinstance(spec, dict):
        raise ERR(400, "Invalid input for field/attribute server.")
    if "name" in spec:
        if not isinstance(spec["name"], str) or not spec["name"].strip():
            raise ERR(400, "Invalid input for field/attribute name.")
        s["name"] = spec["name"]
    if "description" in spec:
        if not at_least(request, 19):
            raise ERR(400, "Additional properties are not allowed ('description' was unexpected)")
        s["description"] = spec["description"]
    _touch(s)
    return json_response({"server": server_view(request, s)})


@_api("DELETE", "/servers/{server_id}")
async def delete_server(request: web.Request) -> web.Response:
    cloud = cloud_of(request)
    c = ctx(request)
    _writer(c, "servers:delete")
    s = _server_or_404(request)
    if s["_task_state"] != "deleting":
        s["_task_state"] = "deleting"
        _touch(s)
        cloud.ledger.changed(s["id"], "DELETING")
        log.info("server_deleting", server_id=s["id"])

        def gone() -> None:
            if _alive(cloud, s):
                _release(cloud, s)

        cloud.later(cloud.delay(cloud.config.timing.delete_seconds), gone)
    return web.Response(status=204)


# --------------------------------------------------------------------------------------------------------------------
# Server actions


def _conflict(s: dict[str, Any], action: str) -> ApiError:
    return ERR(409, f"Cannot '{action}' instance {s['id']} while it is in vm_state {s['_vm_state']}")


@_api("POST", "/servers/{server_id}/action")
async def server_action(request: web.Request) -> web.Response:
    cloud = cloud_of(request)
    c = ctx(request)
    s = _server_or_404(request)
    body = await read_json(request, ERR)
    if len(body) != 1:
        raise ERR(400, "There is either no action or more than one action in the request body.")
    action, arg = next(iter(body.items()))
    _writer(c, f"servers:{action}")
    if s["_task_state"] == "deleting":
        raise ERR(409, f"Cannot '{action}' instance {s['id']} while it is in task_state deleting")
    timing = cloud.config.timing

    def settle(status: str, vm_state: str, power: int, task: str) -> None:
        def done() -> None:
            if _alive(cloud, s) and s["_task_state"] == task:
                _set_state(cloud, s, status, vm_state, None, power)

        cloud.later(cloud.delay(timing.delete_seconds), done)

    if action == "reboot":
        kind = str((arg or {}).get("type", "SOFT")).upper()
        if kind not in ("SOFT", "HARD"):
            raise ERR(400, f"Invalid input for field/attribute type. Value: {kind}.")
        allowed = ("active",) if kind == "SOFT" else ("active", "stopped", "error")
        if s["_vm_state"] not in allowed or s["_task_state"] is not None:
            raise _conflict(s, "reboot")
        task = "rebooting" if kind == "SOFT" else "rebooting_hard"
        _set_state(cloud, s, kind == "SOFT" and "REBOOT" or "HARD_REBOOT", "active", task)
        s["_fault"] = None
        settle("ACTIVE", "active", POWER_RUNNING, task)
    elif action == "os-stop":
        if s["_vm_state"] not in ("active", "error") or s["_task_state"] is not None:
            raise _conflict(s, "stop")
        s["_task_state"] = "powering-off"
        _touch(s)
        settle("SHUTOFF", "stopped", POWER_SHUTDOWN, "powering-off")
    elif action == "os-start":
        if s["_vm_state"] != "stopped" or s["_task_state"] is not None:
            raise _conflict(s, "start")
        s["_task_state"] = "powering-on"
        _touch(s)
        settle("ACTIVE", "active", POWER_RUNNING, "powering-on")
    elif action == "rebuild":
        return await _rebuild(request, s, arg)
    elif action in ("lock", "unlock", "pause", "unpause", "suspend", "resume"):
        raise ERR(400, f"The devcloud does not emulate the {action} action.")
    else:
        raise ERR(400, f"Invalid server action: {action}")
    return web.Response(status=202)


async def _rebuild(request: web.Request, s: dict[str, Any], arg: Any) -> web.Response:
    cloud = cloud_of(request)
    if not isinstance(arg, dict) or not arg.get("imageRef"):
        raise ERR(400, "Invalid input for field/attribute rebuild: 'imageRef' is a required property")
    if s["_vm_state"] not in ("active", "stopped", "error") or s["_task_state"] is not None:
        raise _conflict(s, "rebuild")
    image_id = _ref_id(arg["imageRef"])
    if _image(cloud, image_id) is None:
        raise ERR(400, f"Image {arg['imageRef']} could not be found.")
    spec = drop_nulls(arg)
    if "name" in spec:
        s["name"] = str(spec["name"])
    if "metadata" in spec:
        s["metadata"] = _validate_metadata(cloud, s["_project_id"], spec["metadata"])
    if "user_data" in spec and at_least(request, 57):
        s["_user_data"] = _validate_user_data(spec["user_data"])
    if "key_name" in spec and at_least(request, 54):
        if _keypair(cloud, ctx(request).user_id, str(spec["key_name"])) is None:
            raise ERR(400, "Invalid key_name provided.")
        s["key_name"] = spec["key_name"]
    s["_image_id"] = image_id
    s["_fault"] = None
    _set_state(cloud, s, "REBUILD", s["_vm_state"], "rebuilding")

    def done() -> None:
        if _alive(cloud, s) and s["_task_state"] == "rebuilding":
            _set_state(cloud, s, "ACTIVE", "active", None, POWER_RUNNING)
            _pending_faults(cloud, s)

    cloud.later(cloud.delay(cloud.config.timing.boot_seconds), done)
    view = server_view(request, s)
    view["adminPass"] = s["_admin_pass"]
    return json_response({"server": view}, status=202)


# --------------------------------------------------------------------------------------------------------------------
# Server metadata and tags


@_api("GET", "/servers/{server_id}/metadata")
async def get_metadata(request: web.Request) -> web.Response:
    return json_response({"metadata": dict(_server_or_404(request)["metadata"])})


async def _write_metadata(request: web.Request, replace: bool) -> web.Response:
    cloud = cloud_of(request)
    _writer(ctx(request), "server-metadata:update")
    s = _server_or_404(request)
    body = await read_json(request, ERR)
    if not isinstance(body.get("metadata"), dict):
        raise ERR(400, "Malformed request body: 'metadata' is required")
    merged = dict(body["metadata"]) if replace else {**s["metadata"], **body["metadata"]}
    s["metadata"] = _validate_metadata(cloud, s["_project_id"], merged)
    _touch(s)
    return json_response({"metadata": dict(s["metadata"])})


@_api("POST", "/servers/{server_id}/metadata")
async def update_metadata(request: web.Request) -> web.Response:
    return await _write_metadata(request, replace=False)


@_api("PUT", "/servers/{server_id}/metadata")
async def replace_metadata(request: web.Request) -> web.Response:
    return await _write_metadata(request, replace=True)


@_api("GET", "/servers/{server_id}/metadata/{key}")
async def get_metadata_item(request: web.Request) -> web.Response:
    s = _server_or_404(request)
    key = request.match_info["key"]
    if key not in s["metadata"]:
        raise ERR(404, "Metadata item was not found")
    return json_response({"meta": {key: s["metadata"][key]}})


@_api("PUT", "/servers/{server_id}/metadata/{key}")
async def set_metadata_item(request: web.Request) -> web.Response:
    cloud = cloud_of(request)
    _writer(ctx(request), "server-metadata:update")
    s = _server_or_404(request)
    key = request.match_info["key"]
    body = await read_json(request, ERR)
    meta = body.get("meta")
    if not isinstance(meta, dict) or len(meta) != 1 or key not in meta:
        raise ERR(400, "Request body and URI mismatch")
    s["metadata"] = _validate_metadata(cloud, s["_project_id"], {**s["metadata"], **meta})
    _touch(s)
    return json_response({"meta": {key: s["metadata"][key]}})


@_api("DELETE", "/servers/{server_id}/metadata/{key}")
async def delete_metadata_item(request: web.Request) -> web.Response:
    _writer(ctx(request), "server-metadata:delete")
    s = _server_or_404(request)
    key = request.match_info["key"]
    if key not in s["metadata"]:
        raise ERR(404, "Metadata item was not found")
    del s["metadata"][key]
    _touch(s)
    return web.Response(status=204)


def _tags_allowed(request: web.Request) -> None:
    if not at_least(request, 26):
        raise ERR(404, "The resource could not be found.")


@_api("GET", "/servers/{server_id}/tags")
async def list_tags(request: web.Request) -> web.Response:
    _tags_allowed(request)
    return json_response({"tags": list(_server_or_404(request)["tags"])})


@_api("PUT", "/servers/{server_id}/tags")
async def replace_tags(request: web.Request) -> web.Response:
    _tags_allowed(request)
    _writer(ctx(request), "os-server-tags:update_all")
    s = _server_or_404(request)
    body = await read_json(request, ERR)
    tags = body.get("tags")
    if not isinstance(tags, list) or len(tags) > 50 or any(not isinstance(t, str) for t in tags):
        raise ERR(400, "Invalid input for field/attribute tags.")
    s["tags"] = list(dict.fromkeys(tags))
    _touch(s)
    return json_response({"tags": list(s["tags"])})


@_api("DELETE", "/servers/{server_id}/tags")
async def delete_tags(request: web.Request) -> web.Response:
    _tags_allowed(request)
    _writer(ctx(request), "os-server-tags:delete_all")
    s = _server_or_404(request)
    s["tags"] = []
    _touch(s)
    return web.Response(status=204)


@_api("GET", "/servers/{server_id}/tags/{tag}")
async def check_tag(request: web.Request) -> web.Response:
    _tags_allowed(request)
    s = _server_or_404(request)
    if request.match_info["tag"] not in s["tags"]:
        raise ERR(404, f"Tag {request.match_info['tag']} could not be found.")
    return web.Response(status=204)


@_api("PUT", "/servers/{server_id}/tags/{tag}")
async def add_tag(request: web.Request) -> web.Response:
    _tags_allowed(request)
    _writer(ctx(request), "os-server-tags:update")
    s = _server_or_404(request)
    tag = request.match_info["tag"]
    if tag in s["tags"]:
        return web.Response(status=204)
    if len(s["tags"]) >= 50:
        raise ERR(400, "The number of tags exceeded the per-server limit 50")
    s["tags"].append(tag)
    _touch(s)
    return web.Response(status=201, headers={"Location": cloud_of(request).url(f"{V21}/servers/{s['id']}/tags/{tag}")})


@_api("DELETE", "/servers/{server_id}/tags/{tag}")
async def delete_tag(request: web.Request) -> web.Response:
    _tags_allowed(request)
    _writer(ctx(request), "os-server-tags:delete")
    s = _server_or_404(request)
    tag = request.match_info["tag"]
    if tag not in s["tags"]:
        raise ERR(404, f"Tag {tag} could not be found.")
    s["tags"].remove(tag)
    _touch(s)
    return web.Response(status=204)


# --------------------------------------------------------------------------------------------------------------------
# Volume attachments (the Cinder side is volume.py's)


def _attachment_view(request: web.Request, s: dict[str, Any], a: dict[str, Any]) -> dict[str, Any]:
    view: dict[str, Any] = {"device": a["device"], "serverId": s["id"], "volumeId": a["volume_id"]}
    if at_least(request, 70):
        view["tag"] = a.get("tag")
    if at_least(request, 79):
        view["delete_on_termination"] = bool(s["_bdm_delete"].get(a["volume_id"], False))
    if at_least(request, 89):
        view["attachment_id"] = a["attachment_id"]
        view["bdm_uuid"] = a.get("bdm_uuid") or str(uuid.uuid5(uuid.NAMESPACE_OID, a["attachment_id"]))
    else:
        view["id"] = a["volume_id"]
    return view


@_api("GET", "/servers/{server_id}/os-volume_attachments")
async def list_attachments(request: web.Request) -> web.Response:
    from deploy.devcloud import volume

    s = _server_or_404(request)
    items = volume.volumes_of_server(cloud_of(request), s["id"])
    limit = qint(request, "limit", ERR)
    offset = qint(request, "offset", ERR) or 0
    items = items[offset:] if limit is None else items[offset : offset + limit]
    return json_response({"volumeAttachments": [_attachment_view(request, s, a) for a in items]})


@_api("GET", "/servers/{server_id}/os-volume_attachments/{volume_id}")
async def get_attachment(request: web.Request) -> web.Response:
    from deploy.devcloud import volume

    s = _server_or_404(request)
    vid = request.match_info["volume_id"]
    for a in volume.volumes_of_server(cloud_of(request), s["id"]):
        if a["volume_id"] == vid:
            return json_response({"volumeAttachment": _attachment_view(request, s, a)})
    raise ERR(404, f"Instance {s['id']} is not attached to volume {vid}.")


@_api("POST", "/servers/{server_id}/os-volume_attachments")
async def attach(request: web.Request) -> web.Response:
    from deploy.devcloud import volume

    cloud = cloud_of(request)
    _writer(ctx(request), "os-volumes-attachments:create")
    s = _server_or_404(request)
    body = await read_json(request, ERR)
    spec = body.get("volumeAttachment")
    if not isinstance(spec, dict) or not spec.get("volumeId"):
        raise ERR(400, "Invalid input for field/attribute volumeAttachment: 'volumeId' is a required property")
    spec = drop_nulls(spec)
    if s["_vm_state"] not in ("active", "stopped", "paused", "suspended") or s["_task_state"] is not None:
        raise _conflict(s, "attach_volume")
    vid = str(spec["volumeId"])
    attachment = volume.attach_volume(cloud, vid, s["id"], s["_project_id"], spec.get("device"))
    attachment["tag"] = spec.get("tag")
    s["_bdm_delete"][vid] = bool(spec.get("delete_on_termination", False))
    _touch(s)
    return json_response({"volumeAttachment": _attachment_view(request, s, attachment)})


@_api("DELETE", "/servers/{server_id}/os-volume_attachments/{volume_id}")
async def detach(request: web.Request) -> web.Response:
    from deploy.devcloud import volume

    _writer(ctx(request), "os-volumes-attachments:delete")
    s = _server_or_404(request)
    vid = request.match_info["volume_id"]
    if s["_task_state"] is not None and s["_task_state"] != "deleting":
        raise _conflict(s, "detach_volume")
    volume.detach_volume(cloud_of(request), vid, s["id"])
    s["_bdm_delete"].pop(vid, None)
    _touch(s)
    return web.Response(status=202)


# --------------------------------------------------------------------------------------------------------------------
# Keypairs (owned by the user, not the project)


def _fingerprint_ssh(public_key: str) -> str:
    parts = public_key.split()
    if len(parts) < 2:
        raise ValueError("not an ssh public key")
    blob = base64.b64decode(parts[1], validate=True)
    digest = hashlib.md5(blob, usedforsecurity=False).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def _validate_public_key(public_key: str, key_type: str) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    try:
        if key_type == "x509":
            cert = x509.load_pem_x509_certificate(public_key.encode())
            digest = cert.fingerprint(hashes.SHA1())
            return ":".join(f"{b:02x}" for b in digest)
        serialization.load_ssh_public_key(public_key.strip().encode())
        return _fingerprint_ssh(public_key)
    except (ValueError, TypeError, binascii.Error, IndexError) as exc:
        raise ERR(400, f"Keypair data is invalid: failed to generate fingerprint ({exc})") from None


def _generate_ssh_key(name: str) -> tuple[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, f"{public.decode()} Generated-by-Nova"


def _keypair_view(request: web.Request, k: dict[str, Any], full: bool = False) -> dict[str, Any]:
    view: dict[str, Any] = {"name": k["name"], "public_key": k["public_key"], "fingerprint": k["fingerprint"]}
    if at_least(request, 2):
        view["type"] = k["type"]
    if full:
        view.update({"user_id": k["user_id"], "id": k["_int_id"], "created_at": k["created_at"],
                     "deleted": False, "deleted_at": None, "updated_at": None})
    return view


def _keypair_owner(request: web.Request) -> str:
    c = ctx(request)
    wanted = qstr(request, "user_id")
    if wanted and wanted != c.user_id:
        if not (c.is_admin and at_least(request, 10)):
            raise ERR(403, "Policy doesn't allow os_compute_api:os-keypairs:index to be performed.")
        return wanted
    return c.user_id


@_api("GET", "/os-keypairs")
async def list_keypairs(request: web.Request) -> web.Response:
    cloud = cloud_of(request)
    user_id = _keypair_owner(request)
    items = sorted(cloud.table(KEYPAIRS).of_project(user_id), key=lambda k: k["name"])
    limit = qint(request, "limit", ERR) if at_least(request, 35) else None
    marker = qstr(request, "marker") if at_least(request, 35) else None
    page = paginate(items, limit=limit, marker=marker, max_limit=MAX_LIMIT, error=ERR, key="name")
    body: dict[str, Any] = {"keypairs": [{"keypair": _keypair_view(request, k)} for k in page.items]}
    body.update(_page_links(request, "keypairs", page.next_marker, limit))
    return json_response(body)


@_api("POST", "/os-keypairs")
async def create_keypair(request: web.Request) -> web.Response:
    cloud = cloud_of(request)
    c = ctx(request)
    _writer(c, "os-keypairs:create")
    body = await read_json(request, ERR)
    spec = _required_spec(body, "keypair")
    name = spec.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9 _\-.@]{1,255}", name) or not name.strip():
        raise ERR(400, f"Keypair data is invalid: Keypair name contains unsafe characters ({name!r})")
    key_type = str(spec.get("type", "ssh"))
    if key_type not in ("ssh", "x509") or ("type" in spec and not at_least(request, 2)):
        raise ERR(400, f"Invalid input for field/attribute type. Value: {key_type}.")
    user_id = c.user_id
    if spec.get("user_id") and spec["user_id"] != c.user_id:
        if not (c.is_admin and at_least(request, 10)):
            raise ERR(403, "Policy doesn't allow os_compute_api:os-keypairs:create to be performed.")
        user_id = str(spec["user_id"])
    table = cloud.table(KEYPAIRS)
    limit = cloud.quota(_project(c), "compute").get("key_pairs", -1)
    if 0 <= limit <= table.count(user_id):
        raise ERR(403, "Quota exceeded, too many key pairs.")
    if _keypair(cloud, user_id, name) is not None:
        raise ERR(409, f"Key pair '{name}' already exists.")
    private_key = None
    public_key = spec.get("public_key")
    if public_key is None:
        if at_least(request, 92):
            raise ERR(400, "Invalid input for field/attribute keypair: 'public_key' is a required property")
        if key_type == "x509":
            raise ERR(400, "The devcloud generates ssh keypairs only; pass public_key for an x509 keypair.")
        private_key, public_key = _generate_ssh_key(name)
    fingerprint = _validate_public_key(str(public_key), key_type)
    state = compute_state(cloud)
    state.keypair_ids += 1
    k: dict[str, Any] = {
        "id": f"{user_id}/{name}",
        "name": name,
        "public_key": public_key,
        "fingerprint": fingerprint,
        "type": key_type,
        "user_id": user_id,
        "created_at": now_iso().replace("Z", ".000000"),
        "_int_id": state.keypair_ids,
        "_owner_project": c.project_id,
    }
    table.add(k, user_id)
    cloud.ledger.created("keypair", k["id"], c.project_id or "", name=name, status="created")
    view = _keypair_view(request, k)
    view["user_id"] = user_id
    if private_key is not None:
        view["private_key"] = private_key
    return json_response({"keypair": view}, status=201 if at_least(request, 2) else 200)


def _keypair_or_404(request: web.Request) -> dict[str, Any]:
    name = request.match_info["name"]
    k = _keypair(cloud_of(request), _keypair_owner(request), name)
    if k is None:
        raise ERR(404, f"Keypair {name} not found for user {_keypair_owner(request)}")
    return k


@_api("GET", "/os-keypairs/{name}")
async def get_keypair(request: web.Request) -> web.Response:
    return json_response({"keypair": _keypair_view(request, _keypair_or_404(request), full=True)})


@_api("DELETE", "/os-keypairs/{name}")
async def delete_keypair(request: web.Request) -> web.Response:
    cloud = cloud_of(request)
    _writer(ctx(request), "os-keypairs:delete")
    k = _keypair_or_404(request)
    cloud.table(KEYPAIRS).remove(k["id"])
    cloud.ledger.deleted(k["id"])
    return web.Response(status=204 if at_least(request, 2) else 202)


# --------------------------------------------------------------------------------------------------------------------
# Server groups


def _group_view(request: web.Request, g: dict[str, Any]) -> dict[str, Any]:
    view: dict[str, Any] = {"id": g["id"], "name": g["name"], "members": list(g["members"])}
    if at_least(request, 64):
        view["policy"] = g["policy"]
        view["rules"] = dict(g["rules"])
    else:
        view["policies"] = [g["policy"]]
        view["metadata"] = {}
    if at_least(request, 13):
        view["project_id"] = g["_project_id"]
        view["user_id"] = g["user_id"]
    return view


@_api("GET", "/os-server-groups")
async def list_groups(request: web.Request) -> web.Response:
    cloud = cloud_of(request)
    c = ctx(request)
    items = list(cloud.table(GROUPS).visible(c.project_id, _all_projects(request, c)))
    offset = qint(request, "offset", ERR) or 0
    limit = qint(request, "limit", ERR)
    items = items[offset:] if limit is None else items[offset : offset + limit]
    return json_response({"server_groups": [_group_view(request, g) for g in items]})


@_api("POST", "/os-server-groups")
async def create_group(request: web.Request) -> web.Response:
    cloud = cloud_of(request)
    c = ctx(request)
    _writer(c, "os-server-groups:create")
    project_id = _project(c)
    body = await read_json(request, ERR)
    spec = _required_spec(body, "server_group")
    name = _valid_name(spec)
    rules: dict[str, Any] = {}
    if at_least(request, 64):
        if "policies" in spec:
            raise ERR(400, "Additional properties are not allowed ('policies' was unexpected)")
        policy = spec.get("policy")
        rules = spec.get("rules") or {}
        if not isinstance(rules, dict) or set(rules) - {"max_server_per_host"}:
            raise ERR(400, f"Invalid input for field/attribute rules. Value: {rules!r}.")
        if rules and policy != "anti-affinity":
            raise ERR(400, "Only anti-affinity policy supports rules.")
        if "max_server_per_host" in rules:
            try:
                if int(rules["max_server_per_host"]) < 1:
                    raise ValueError
            except (TypeError, ValueError):
                raise ERR(400, "Invalid input for field/attribute max_server_per_host.") from None
    else:
        policies = spec.get("policies")
        if not isinstance(policies, list) or len(policies) != 1:
            raise ERR(400, f"Invalid input for field/attribute policies. Value: {policies!r}.")
        policy = policies[0]
    if policy not in GROUP_POLICIES:
        raise ERR(400, f"Invalid input for field/attribute policy. Value: {policy!r}. "
                       f"It must be one of {', '.join(GROUP_POLICIES)}")
    table = cloud.table(GROUPS)
    limit = cloud.quota(project_id, "compute").get("server_groups", -1)
    if 0 <= limit <= table.count(project_id):
        raise ERR(403, "Quota exceeded, too many server groups.")
    g: dict[str, Any] = {"id": str(uuid.uuid4()), "name": name, "policy": policy, "rules": rules, "members": [],
                         "user_id": c.user_id}
    table.add(g, project_id)
    cloud.ledger.created("server_group", g["id"], project_id, name=name, status="created", policy=policy)
    return json_response({"server_group": _group_view(request, g)})


def _group_or_404(request: web.Request) -> dict[str, Any]:
    gid = request.match_info["group_id"]
    g = cloud_of(request).table(GROUPS).get(gid)
    c = ctx(request)
    if g is None or (g["_project_id"] != c.project_id and not c.is_admin):
        raise ERR(404, f"Server group {gid} could not be found.")
    return g


@_api("GET", "/os-server-groups/{group_id}")
async def get_group(request: web.Request) -> web.Response:
    return json_response({"server_group": _group_view(request, _group_or_404(request))})


@_api("DELETE", "/os-server-groups/{group_id}")
async def delete_group(request: web.Request) -> web.Response:
    cloud = cloud_of(request)
    _writer(ctx(request), "os-server-groups:delete")
    g = _group_or_404(request)
    cloud.table(GROUPS).remove(g["id"])
    for sid in g["members"]:
        s = cloud.table(SERVERS).get(sid)
        if s is not None and g["id"] in s["_groups"]:
            s["_groups"].remove(g["id"])
    cloud.ledger.deleted(g["id"])
    return web.Response(status=204)


# --------------------------------------------------------------------------------------------------------------------
# Limits and quota sets


def usage_of(cloud: Cloud, project_id: str) -> dict[str, int]:
    """In-use counts for every compute quota key."""
    u = _usage(cloud, project_id)
    return {
        "instances": u.instances,
        "cores": u.cores,
        "ram": u.ram,
        "server_groups": cloud.table(GROUPS).count(project_id),
        "key_pairs": 0,  # keypairs are per user; Nova reports 0 in use here too
        "server_group_members": 0,
        "metadata_items": 0,
        "injected_files": 0,
        "injected_file_content_bytes": 0,
        "injected_file_path_bytes": 0,
    }


@_api("GET", "/limits")
async def limits(request: web.Request) -> web.Response:
    cloud = cloud_of(request)
    c = ctx(request)
    project_id = _project(c)
    wanted = qstr(request, "tenant_id")
    if wanted and wanted != project_id:
        if not c.is_admin:
            raise ERR(403, "Policy doesn't allow os_compute_api:limits:other_project to be performed.")
        project_id = cloud.identity.project_id(wanted) or wanted
    q = cloud.quota(project_id, "compute")
    used = usage_of(cloud, project_id)
    absolute = {
        "maxTotalInstances": q.get("instances", -1),
        "maxTotalCores": q.get("cores", -1),
        "maxTotalRAMSize": q.get("ram", -1),
        "maxServerMeta": q.get("metadata_items", 128),
        "maxTotalKeypairs": q.get("key_pairs", -1),
        "maxServerGroups": q.get("server_groups", -1),
        "maxServerGroupMembers": q.get("server_group_members", -1),
        "totalInstancesUsed": used["instances"],
        "totalCoresUsed": used["cores"],
        "totalRAMUsed": used["ram"],
        "totalServerGroupsUsed": used["server_groups"],
    }
    if not at_least(request, 57):
        absolute.update({"maxPersonality": 5, "maxPersonalitySize": 10240})
    if not at_least(request, 36):
        absolute.update({"maxTotalFloatingIps": -1, "totalFloatingIpsUsed": 0, "maxSecurityGroups": -1,
                         "totalSecurityGroupsUsed": 0, "maxSecurityGroupRules": -1})
    return json_response({"limits": {"rate": [], "absolute": absolute}})


_QUOTA_KEYS = ("instances", "cores", "ram", "key_pairs", "server_groups", "server_group_members", "metadata_items")
_PRE_257 = ("injected_files", "injected_file_content_bytes", "injected_file_path_bytes")
_PRE_257_DEFAULTS = {"injected_files": 5, "injected_file_content_bytes": 10240, "injected_file_path_bytes": 255}


def _quota_values(request: web.Request, q: dict[str, int]) -> dict[str, int]:
    values = {k: q.get(k, -1) for k in _QUOTA_KEYS}
    if not at_least(request, 57):
        values.update({k: q.get(k, _PRE_257_DEFAULTS[k]) for k in _PRE_257})
    if not at_least(request, 36):
        values.update({"fixed_ips": -1, "floating_ips": -1, "security_groups": -1, "security_group_rules": -1})
    return values


def _quota_project(request: web.Request) -> str:
    cloud = cloud_of(request)
    c = ctx(request)
    raw = request.match_info["project_id"]
    pid = cloud.identity.project_id(raw) or raw
    if pid != c.project_id and not c.is_admin:
        raise ERR(403, "Policy doesn't allow os_compute_api:os-quota-sets:show to be performed.")
    return pid


@_api("GET", "/os-quota-sets/{project_id}")
async def get_quota(request: web.Request) -> web.Response:
    cloud = cloud_of(request)
    pid = _quota_project(request)
    values: dict[str, Any] = _quota_values(request, cloud.quota(pid, "compute"))
    if qbool(request.query.get("usage"), False):
        used = usage_of(cloud, pid)
        values = {k: {"limit": v, "in_use": used.get(k, 0), "reserved": 0} for k, v in values.items()}
    return json_response({"quota_set": {"id": pid, **values}})


@_api("GET", "/os-quota-sets/{project_id}/detail")
async def get_quota_detail(request: web.Request) -> web.Response:
    cloud = cloud_of(request)
    pid = _quota_project(request)
    used = usage_of(cloud, pid)
    values = _quota_values(request, cloud.quota(pid, "compute"))
    detail = {k: {"limit": v, "in_use": used.get(k, 0), "reserved": 0} for k, v in values.items()}
    return json_response({"quota_set": {"id": pid, **detail}})


@_api("GET", "/os-quota-sets/{project_id}/defaults")
async def get_quota_defaults(request: web.Request) -> web.Response:
    cloud = cloud_of(request)
    pid = request.match_info["project_id"]
    values = _quota_values(request, dict(cloud.config.quotas.default.get("compute", {})))
    return json_response({"quota_set": {"id": pid, **values}})


@_api("PUT", "/os-quota-sets/{project_id}")
async def set_quota(request: web.Request) -> web.Response:
    cloud = cloud_of(request)
    c = ctx(request)
    if not c.is_admin:
        raise ERR(403, "Policy doesn't allow os_compute_api:os-quota-sets:update to be performed.")
    raw = request.match_info["project_id"]
    pid = cloud.identity.project_id(raw) or raw
    body = await read_json(request, ERR)
    spec = body.get("quota_set")
    if not isinstance(spec, dict):
        raise ERR(400, "Invalid input for field/attribute quota_set.")
    values: dict[str, int] = {}
    for k, v in drop_nulls(spec).items():
        if k in ("force", "id"):
            continue
        if k not in _QUOTA_KEYS + _PRE_257:
            raise ERR(400, f"Additional properties are not allowed ('{k}' was unexpected)")
        try:
            n = int(v)
        except (TypeError, ValueError):
            raise ERR(400, f"Invalid input for field/attribute {k}. Value: {v}.") from None
        if n < -1:
            raise ERR(400, f"Invalid input for field/attribute {k}. Value: {v}. {v} is less than the minimum of -1")
        values[k] = n
    q = cloud.set_quota(pid, "compute", values)
    log.info("compute_quota_set", project_id=pid, values=values)
    return json_response({"quota_set": _quota_values(request, q)})


@_api("DELETE", "/os-quota-sets/{project_id}")
async def reset_quota(request: web.Request) -> web.Response:
    cloud = cloud_of(request)
    if not ctx(request).is_admin:
        raise ERR(403, "Policy doesn't allow os_compute_api:os-quota-sets:delete to be performed.")
    raw = request.match_info["project_id"]
    pid = cloud.identity.project_id(raw) or raw
    for key in (pid, cloud.identity.project_name(pid)):
        if key and key in cloud.quota_overrides:
            cloud.quota_overrides[key].pop("compute", None)
    return web.Response(status=202)


# --------------------------------------------------------------------------------------------------------------------
# Availability zones and hypervisors


@_api("GET", "/os-availability-zone")
async def list_zones(request: web.Request) -> web.Response:
    cloud = cloud_of(request)
    down = set(cloud.faults.down_availability_zones)
    zones = [{"zoneName": az, "zoneState": {"available": az not in down}, "hosts": None}
             for az in cloud.config.availability_zones]
    return json_response({"availabilityZoneInfo": zones})


@_api("GET", "/os-availability-zone/detail")
async def list_zones_detail(request: web.Request) -> web.Response:
    cloud = cloud_of(request)
    if not ctx(request).is_admin:
        raise ERR(403, "Policy doesn't allow os_compute_api:os-availability-zone:detail to be performed.")
    down = set(cloud.faults.down_availability_zones)
    zones = []
    for az in cloud.config.availability_zones:
        hosts = {
            h.name: {"nova-compute": {"available": az not in down, "active": True, "updated_at": now_iso()}}
            for h in cloud.capacity.hosts
            if h.az == az
        }
        zones.append({"zoneName": az, "zoneState": {"available": az not in down}, "hosts": hosts})
    return json_response({"availabilityZoneInfo": zones})


def _hypervisor_view(request: web.Request, h: Host, index: int, detail: bool) -> dict[str, Any]:
    down = h.az in cloud_of(request).faults.down_availability_zones
    view: dict[str, Any] = {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"devcloud/hypervisor/{h.name}")) if at_least(request, 53) else index,
        "hypervisor_hostname": h.name,
        "state": "down" if down else "up",
        "status": "enabled",
    }
    if detail:
        view.update({"host_ip": f"192.168.{index // 250}.{index % 250 + 1}", "hypervisor_type": "devcloud",
                     "hypervisor_version": 1, "service": {"host": h.name, "id": index, "disabled_reason": None}})
        if not at_least(request, 88):
            view.update({"vcpus": h.vcpus, "memory_mb": h.ram_mb, "local_gb": h.disk_gb, "vcpus_used": h.used_vcpus,
                         "memory_mb_used": h.used_ram_mb, "local_gb_used": h.used_disk_gb,
                         "free_ram_mb": h.ram_mb - h.used_ram_mb, "free_disk_gb": h.disk_gb - h.used_disk_gb,
                         "running_vms": 0, "current_workload": 0, "disk_available_least": h.disk_gb - h.used_disk_gb})
    return view


async def _list_hypervisors(request: web.Request, detail: bool) -> web.Response:
    if not ctx(request).is_admin:
        raise ERR(403, "Policy doesn't allow os_compute_api:os-hypervisors:list to be performed.")
    hosts = cloud_of(request).capacity.hosts
    return json_response({"hypervisors": [_hypervisor_view(request, h, i + 1, detail) for i, h in enumerate(hosts)]})


@_api("GET", "/os-hypervisors/detail")
async def list_hypervisors_detail(request: web.Request) -> web.Response:
    return await _list_hypervisors(request, True)


@_api("GET", "/os-hypervisors")
async def list_hypervisors(request: web.Request) -> web.Response:
    return await _list_hypervisors(request, False)
