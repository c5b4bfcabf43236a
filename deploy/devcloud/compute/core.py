"""Compute's core: a server's state machine (build slots, boot, ERROR, release of capacity, ports and volumes),
placing and booting a new server, and the server and zone faults the admin API injects."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web

from deploy.devcloud.clock import now_iso
from deploy.devcloud.compute.model import (
    ERR,
    GROUPS,
    NO_VALID_HOST,
    POWER_NOSTATE,
    POWER_RUNNING,
    POWER_SHUTDOWN,
    SERVERS,
    _usage,
    compute_state,
)
from deploy.devcloud.config import ServerFault
from deploy.devcloud.state import Cloud, Host
from deploy.devcloud.web import Ctx

log = structlog.get_logger("devcloud.compute")


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
    _tombstone(cloud, s)
    log.info("server_deleted", server_id=s["id"], project_id=s["_project_id"])


DELETED_SERVERS = "server_deleted"
MAX_TOMBSTONES = 20000
"""Deleted servers a ``changes-since`` listing still shows (Nova keeps its soft-deleted rows until archived)."""


def _tombstone(cloud: Cloud, s: dict[str, Any]) -> None:
    """Keep what Nova's ``changes-since`` listing shows of a deleted server: status ``DELETED``, vm_state
    ``deleted``, ``updated`` and ``OS-SRV-USG:terminated_at`` at the deletion (the ledger's time)."""
    record = cloud.ledger.records.get(s["id"])
    terminated = (record or {}).get("deleted_at") or now_iso()
    gone = dict(s)
    gone.update(status="DELETED", _vm_state="deleted", _task_state=None, _power_state=POWER_NOSTATE, _fault=None,
                _ports=[], updated=now_iso(), _terminated_at=terminated.rstrip("Z"))
    table = cloud.table(DELETED_SERVERS)
    table.add(gone, s["_project_id"])
    while len(table) > MAX_TOMBSTONES:
        table.remove(next(iter(table.items)))


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
# Servers: placement and boot


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


@dataclass
class NicRequest:
    network_id: str | None
    port_id: str | None


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
