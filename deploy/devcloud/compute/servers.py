"""Compute's server handlers: flavors, servers (views, create, list, show, update, delete), actions,
metadata, tags and volume attachments."""

from __future__ import annotations

import base64
import binascii
import itertools
import re
import secrets
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import web

from deploy.devcloud.compute.core import (
    DELETED_SERVERS,
    NicRequest,
    _alive,
    _boot,
    _new_server,
    _pending_faults,
    _release,
    _set_state,
    _touch,
)
from deploy.devcloud.compute.http import (
    _all_projects,
    _api,
    _links,
    _page_links,
    _project,
    _ref_id,
    _writer,
    at_least,
)
from deploy.devcloud.compute.model import (
    ERR,
    GROUPS,
    KEYPAIRS,
    MAX_LIMIT,
    MAX_USER_DATA,
    POWER_RUNNING,
    POWER_SHUTDOWN,
    PREFIX,
    SERVERS,
    V21,
    _usage,
    compute_state,
)
from deploy.devcloud.state import Cloud, cloud_of
from deploy.devcloud.web import (
    ApiError,
    Ctx,
    ctx,
    drop_nulls,
    is_uuid,
    json_response,
    paginate,
    qbool,
    qint,
    qstr,
    read_json,
    tag_filter,
)

log = structlog.get_logger("devcloud.compute")


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
        "OS-SRV-USG:terminated_at": s.get("_terminated_at"),
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
        out = [s for s in out if s["status"] == wanted]
    if qbool(request.query.get("deleted"), False):  # admin only (Nova): the deleted servers alone
        out = [s for s in out if s["status"] == "DELETED"] if c.is_admin else []
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
        if point.tzinfo is None:  # Nova reads a time without an offset as UTC
            point = point.replace(tzinfo=UTC)
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
    if "changes-since" in request.query or (c.is_admin and qbool(request.query.get("deleted"), False)):
        # Nova: a changes-since listing shows deleted servers too (status DELETED), as does an admin's deleted=true
        gone = cloud.table(DELETED_SERVERS)
        tombs = gone.of_project(wanted_project) if every and wanted_project else gone.visible(c.project_id, every)
        pool = itertools.chain(pool, tombs)
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
