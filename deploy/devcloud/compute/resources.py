"""Compute's other resources' handlers: keypairs, server groups, limits and quota sets, availability zones and
hypervisors."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import uuid
from typing import Any

import structlog
from aiohttp import web

from deploy.devcloud.clock import now_iso
from deploy.devcloud.compute.http import _all_projects, _api, _page_links, _project, _writer, at_least
from deploy.devcloud.compute.model import (
    ERR,
    GROUP_POLICIES,
    GROUPS,
    KEYPAIRS,
    MAX_LIMIT,
    SERVERS,
    _usage,
    compute_state,
)
from deploy.devcloud.compute.servers import _keypair, _required_spec, _valid_name
from deploy.devcloud.state import Cloud, Host, cloud_of
from deploy.devcloud.web import ctx, drop_nulls, json_response, paginate, qbool, qint, qstr, read_json

log = structlog.get_logger("devcloud.compute")


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
