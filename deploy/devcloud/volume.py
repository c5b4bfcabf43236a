"""Block storage (Cinder v3) under /volume/v3/{project_id}: volumes, their state machine and quotas, limits, quota
sets and volume types. Nova's volume attachments drive the volumes through the functions `attach_volume`,
`detach_volume`, `volumes_of_server` and `release_server_volumes`, which the compute package calls."""

from __future__ import annotations

import functools
import json
import re
import weakref
from datetime import UTC, datetime
from typing import Any

import structlog
from aiohttp import web

from deploy.devcloud.clock import now_iso_micro
from deploy.devcloud.config import VolumeFault
from deploy.devcloud.state import Cloud, cloud_of
from deploy.devcloud.web import (
    Ctx,
    Handler,
    Routes,
    ctx,
    json_response,
    new_id,
    next_link,
    nova_error,
    paginate,
    qbool,
    qint,
    qstr,
    read_json,
    sort_items,
)

log = structlog.get_logger("devcloud.volume")

routes = Routes("volume")

KIND = "volume"
MIN_VERSION = (3, 0)
MAX_VERSION = (3, 70)
DEFAULT_TYPE_ID = "bdfc7c8a-56a5-4c6f-9f05-3ad1ff3b0bc6"  # stable, like a deployment's __DEFAULT__ type
DEFAULT_TYPE_NAME = "__DEFAULT__"
MAX_LIMIT = 1000
QUOTA_KEYS = ("volumes", "gigabytes", "snapshots", "backups", "backup_gigabytes", "per_volume_gigabytes", "groups")


# --------------------------------------------------------------------------------------------------------------------
# State: the volume table plus an index server -> {volume_id: attachment}, so that Nova's lookups cost O(1)


_ATTACHED: weakref.WeakKeyDictionary[Cloud, dict[str, dict[str, dict[str, Any]]]] = weakref.WeakKeyDictionary()


def _by_server(cloud: Cloud) -> dict[str, dict[str, dict[str, Any]]]:
    index = _ATTACHED.get(cloud)
    if index is None:
        index = _ATTACHED[cloud] = {}
    return index


def _set_status(cloud: Cloud, vol: dict[str, Any], status: str) -> None:
    vol["status"] = status
    vol["updated_at"] = now_iso_micro()
    cloud.ledger.changed(vol["id"], status)


def _live(cloud: Cloud, vol: dict[str, Any]) -> bool:
    """The volume is still the same object in the table (it was not deleted meanwhile)."""
    return cloud.table(KIND).get(vol["id"]) is vol


# --------------------------------------------------------------------------------------------------------------------
# Functions other emulated services call (the compute package)


def attach_volume(cloud: Cloud, volume_id: str, server_id: str, project_id: str, device: str | None) -> dict[str, Any]:
    """Attach a volume to a server on Nova's behalf. The volume must exist in `project_id` (else 404) and be
    `available` (else 400). It goes attaching -> in-use after a short delay. Returns the attachment:
    {id (= volume id, as Cinder renders it), volume_id, server_id, attachment_id, device, host_name, attached_at}."""
    vol = cloud.table(KIND).get(volume_id)
    if vol is None or vol["_project_id"] != project_id:
        raise nova_error(404, f"Volume {volume_id} could not be found.")
    if vol["status"] != "available":
        raise nova_error(
            400, f"Invalid volume: volume {volume_id} status must be 'available'. Currently in '{vol['status']}'"
        )
    attached = _by_server(cloud).setdefault(server_id, {})
    used = {a["device"] for a in attached.values()}
    if device is None or device in used:
        device = next(f"/dev/vd{c}" for c in "bcdefghijklmnopqrstuvwxyz" if f"/dev/vd{c}" not in used)
    server = cloud.table("server").get(server_id) or {}
    host = server.get("OS-EXT-SRV-ATTR:host") or server.get("_host")
    attachment = {
        "id": volume_id,
        "attachment_id": new_id(),
        "volume_id": volume_id,
        "server_id": server_id,
        "host_name": host if isinstance(host, str) else None,
        "device": device,
        "attached_at": now_iso_micro(),
    }
    attached[volume_id] = attachment
    vol["_attachment"] = attachment
    _set_status(cloud, vol, "attaching")
    log.info("volume_attaching", volume_id=volume_id, server_id=server_id, device=device)

    def done() -> None:
        if _live(cloud, vol) and vol["status"] == "attaching" and vol.get("_attachment") is attachment:
            vol["attachments"] = [dict(attachment)]
            _set_status(cloud, vol, "in-use")
            log.info("volume_attached", volume_id=volume_id, server_id=server_id)

    cloud.later(_short_delay(cloud), done)
    return dict(attachment)


def detach_volume(cloud: Cloud, volume_id: str, server_id: str) -> None:
    """Detach on Nova's behalf: 404 when the volume is not attached to the server, 400 while it is already
    detaching; otherwise detaching -> available after a short delay."""
    attached = _by_server(cloud).get(server_id, {})
    vol = cloud.table(KIND).get(volume_id)
    if vol is None or volume_id not in attached:
        raise nova_error(404, f"Volume {volume_id} is not attached to server {server_id}.")
    if vol["status"] not in ("attaching", "in-use"):
        raise nova_error(
            400, f"Invalid volume: Unable to detach volume. Volume status must be 'in-use', not '{vol['status']}'."
        )
    attachment = attached[volume_id]
    _set_status(cloud, vol, "detaching")
    log.info("volume_detaching", volume_id=volume_id, server_id=server_id)

    def done() -> None:
        if _live(cloud, vol) and vol["status"] == "detaching" and vol.get("_attachment") is attachment:
            _unattach(cloud, vol, server_id)
            _set_status(cloud, vol, "available")
            log.info("volume_detached", volume_id=volume_id, server_id=server_id)

    cloud.later(_short_delay(cloud), done)


def volumes_of_server(cloud: Cloud, server_id: str) -> list[dict[str, Any]]:
    """The server's attachments in attach order (each has `id` = the volume id, `device`, `attachment_id`...),
    including those still attaching or detaching: what Nova shows as os-extended-volumes:volumes_attached."""
    return [dict(a) for a in _by_server(cloud).get(server_id, {}).values()]


def release_server_volumes(cloud: Cloud, server_id: str) -> None:
    """The server is gone: every volume attached to it becomes `available` at once, with no attachments."""
    attached = _by_server(cloud).pop(server_id, None) or {}
    for volume_id in attached:
        vol = cloud.table(KIND).get(volume_id)
        if vol is None:
            continue
        vol.pop("_attachment", None)
        vol["attachments"] = []
        _set_status(cloud, vol, "available")
        log.info("volume_released", volume_id=volume_id, server_id=server_id)


def _unattach(cloud: Cloud, vol: dict[str, Any], server_id: str) -> None:
    index = _by_server(cloud)
    attached = index.get(server_id)
    if attached is not None:
        attached.pop(vol["id"], None)
        if not attached:
            del index[server_id]
    vol.pop("_attachment", None)
    vol["attachments"] = []


def _short_delay(cloud: Cloud) -> float:
    return cloud.delay(cloud.config.timing.volume_seconds) / 2


def create_volume(
    cloud: Cloud,
    project_id: str,
    user_id: str,
    size: int,
    *,
    name: str | None = None,
    description: str | None = None,
    image_id: str | None = None,
    availability_zone: str | None = None,
    metadata: dict[str, str] | None = None,
    volume_type: str | None = None,
    multiattach: bool = False,
) -> dict[str, Any]:
    """Create a volume (status creating -> available after volume_seconds), checking the volume quota: a full
    quota is Cinder's 413 overLimit. Also for Nova's boot-from-volume (block_device_mapping_v2 with
    destination volume). Returns the table's item (internal keys included)."""
    if size < 1:
        raise nova_error(400, f"Invalid input received: Volume size '{size}' must be an integer and greater than 0.")
    _check_quota(cloud, project_id, size)
    vid = new_id()
    at = now_iso_micro()
    vtype = _find_type(volume_type)
    vol: dict[str, Any] = {
        "id": vid,
        "name": name,
        "description": description,
        "size": size,
        "status": "creating",
        "attachments": [],
        "availability_zone": availability_zone or "nova",
        "bootable": "true" if image_id else "false",
        "volume_type": vtype["name"],
        "volume_type_id": vtype["id"],
        "metadata": dict(metadata or {}),
        "multiattach": multiattach,
        "encrypted": False,
        "snapshot_id": None,
        "source_volid": None,
        "replication_status": None,
        "consistencygroup_id": None,
        "migration_status": None,
        "group_id": None,
        "provider_id": None,
        "service_uuid": None,
        "shared_targets": True,
        "cluster_name": None,
        "consumes_quota": True,
        "created_at": at,
        "updated_at": None,
        "user_id": user_id,
        "os-vol-tenant-attr:tenant_id": project_id,
    }
    if image_id:
        vol["volume_image_metadata"] = {"image_id": image_id}
    cloud.table(KIND).add(vol, project_id)
    cloud.ledger.created(KIND, vid, project_id, name=name or "", status="creating", volume_gb=size)
    log.info("volume_creating", volume_id=vid, project_id=project_id, size=size)

    def done() -> None:
        if _live(cloud, vol) and vol["status"] == "creating":
            _set_status(cloud, vol, "available")

    cloud.later(cloud.delay(cloud.config.timing.volume_seconds), done)
    return vol


def delete_volume(cloud: Cloud, volume_id: str) -> None:
    """Delete a volume that is not attached (status deleting, gone after volume_seconds). Nova uses it for
    delete_on_termination volumes after release_server_volumes. Raises 404/400 in Cinder's envelope."""
    vol = cloud.table(KIND).get(volume_id)
    if vol is None:
        raise nova_error(404, f"Volume {volume_id} could not be found.")
    if vol["status"] in ("attaching", "in-use", "detaching") or vol.get("_attachment"):
        raise nova_error(
            400,
            "Invalid volume: Volume status must be available or error or error_restoring or error_extending or "
            f"error_managing and must not be migrating, attached, belong to a group, have snapshots, awaiting a "
            f"transfer, or be disassociated from snapshots after volume transfer. (volume {volume_id} is "
            f"{vol['status']})",
        )
    if vol["status"] == "deleting":
        return
    _set_status(cloud, vol, "deleting")

    def done() -> None:
        if _live(cloud, vol):
            cloud.table(KIND).remove(volume_id)
            cloud.ledger.deleted(volume_id)
            log.info("volume_deleted", volume_id=volume_id)

    cloud.later(cloud.delay(cloud.config.timing.volume_seconds), done)


def _usage(cloud: Cloud, project_id: str) -> tuple[int, int]:
    count = gigabytes = 0
    for vol in cloud.table(KIND).of_project(project_id):
        count += 1
        gigabytes += vol["size"]
    return count, gigabytes


def _check_quota(cloud: Cloud, project_id: str, size: int, new_volumes: int = 1) -> None:
    quota = cloud.quota(project_id, "volume")
    per_volume = quota.get("per_volume_gigabytes", -1)
    if per_volume >= 0 and size > per_volume:
        raise nova_error(
            413,
            f"VolumeSizeExceedsLimit: Requested volume size {size}G is larger than maximum allowed limit "
            f"{per_volume}G.",
        )
    count, gigabytes = _usage(cloud, project_id)
    limit = quota.get("volumes", -1)
    if new_volumes and limit >= 0 and count + new_volumes > limit:
        raise nova_error(
            413, f"VolumeLimitExceeded: Maximum number of volumes allowed ({limit}) exceeded for quota 'volumes'."
        )
    glimit = quota.get("gigabytes", -1)
    if glimit >= 0 and gigabytes + size > glimit:
        raise nova_error(
            413,
            f"VolumeSizeExceedsAvailableQuota: Requested volume or snapshot exceeds allowed gigabytes quota. "
            f"Requested {size}G, quota is {glimit}G and {gigabytes}G has been consumed.",
        )


_TYPES: list[dict[str, Any]] = [
    {
        "id": DEFAULT_TYPE_ID,
        "name": DEFAULT_TYPE_NAME,
        "description": "Default Volume Type",
        "is_public": True,
        "extra_specs": {},
        "os-volume-type-access:is_public": True,
        "qos_specs_id": None,
    }
]


def _find_type(name_or_id: str | None) -> dict[str, Any]:
    if name_or_id is None:
        return _TYPES[0]
    for t in _TYPES:
        if name_or_id in (t["id"], t["name"]):
            return t
    raise nova_error(404, f"Volume type with name {name_or_id} could not be found.")


# --------------------------------------------------------------------------------------------------------------------
# HTTP: discovery, microversions, the project in the URL

PREFIX = "/volume/v3/{project_id}"
_VERSION_HEADER = re.compile(r"^\s*volume\s+(\S+)\s*$", re.IGNORECASE)


def _fmt(v: tuple[int, int]) -> str:
    return f"{v[0]}.{v[1]}"


def _versions(cloud: Cloud) -> dict[str, Any]:
    return {
        "versions": [
            {
                "id": "v3.0",
                "status": "CURRENT",
                "version": _fmt(MAX_VERSION),
                "min_version": _fmt(MIN_VERSION),
                "updated": "2023-08-31T00:00:00Z",
                "links": [
                    {"rel": "describedby", "type": "text/html", "href": "https://docs.openstack.org/"},
                    {"rel": "self", "href": cloud.url("/volume/v3/")},
                ],
                "media-types": [
                    {"base": "application/json", "type": "application/vnd.openstack.volume+json;version=3"}
                ],
            }
        ]
    }


@routes.get("/volume/", public=True)
async def root(request: web.Request) -> web.Response:
    return json_response(_versions(cloud_of(request)), status=300)


@routes.get("/volume/v3/", public=True)
async def v3_root(request: web.Request) -> web.Response:
    return json_response(_versions(cloud_of(request)))


def microversion(request: web.Request) -> tuple[int, int]:
    """The negotiated microversion: `OpenStack-API-Version: volume 3.x`; absent means 3.0, `latest` the maximum,
    anything outside [3.0, 3.70] is a 406."""
    raw = request.headers.get("OpenStack-API-Version")
    if not raw:
        return MIN_VERSION
    match = _VERSION_HEADER.match(raw)
    if match is None:
        return MIN_VERSION  # a header for another service
    value = match.group(1)
    if value.lower() == "latest":
        return MAX_VERSION
    try:
        major, minor = (int(p) for p in value.split("."))
    except ValueError:
        raise nova_error(400, f"Invalid API version request: {value}") from None
    if not MIN_VERSION <= (major, minor) <= MAX_VERSION:
        raise nova_error(
            406,
            f"Version {value} is not supported by the API. Minimum is {_fmt(MIN_VERSION)} and maximum is "
            f"{_fmt(MAX_VERSION)}.",
        )
    return (major, minor)


def _api(handler: Handler) -> Handler:
    """Every project-scoped Cinder handler: negotiate the microversion, echo it, check the URL's project."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        version = microversion(request)
        headers = {"OpenStack-API-Version": f"volume {_fmt(version)}", "Vary": "OpenStack-API-Version"}
        try:
            c = ctx(request)
            url_project = request.match_info["project_id"]
            if url_project != c.project_id and not c.is_admin:
                raise nova_error(403, "Malformed request url: the project in the URL is not the token's project.")
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers.update(headers)
            raise
        response.headers.update(headers)
        return response

    return wrapped


def _write(c: Ctx, action: str) -> None:
    if not c.can_write:
        raise nova_error(403, f"Policy doesn't allow volume:{action} to be performed.")


def _scope(request: web.Request) -> str:
    """The project a request acts in: the URL's (the token's own unless an admin addresses another project)."""
    return request.match_info["project_id"]


def _get_visible(request: web.Request, volume_id: str) -> dict[str, Any]:
    c = ctx(request)
    vol = cloud_of(request).table(KIND).get(volume_id)
    if vol is None or (not c.is_admin and vol["_project_id"] != c.project_id):
        raise nova_error(404, f"Volume {volume_id} could not be found.")
    return vol


def render(cloud: Cloud, vol: dict[str, Any], admin: bool) -> dict[str, Any]:
    out = {k: v for k, v in vol.items() if not k.startswith("_")}
    out["attachments"] = [dict(a) for a in vol["attachments"]]
    out["metadata"] = dict(vol["metadata"])
    href = cloud.url(f"/volume/v3/{vol['_project_id']}/volumes/{vol['id']}")
    out["links"] = [{"rel": "self", "href": href}, {"rel": "bookmark", "href": href}]
    if admin:
        out["os-vol-host-attr:host"] = "devcloud@lvmdriver-1#lvmdriver-1"
        out["os-vol-mig-status-attr:migstat"] = None
        out["os-vol-mig-status-attr:name_id"] = None
    return out


def _summary(cloud: Cloud, vol: dict[str, Any]) -> dict[str, Any]:
    href = cloud.url(f"/volume/v3/{vol['_project_id']}/volumes/{vol['id']}")
    return {"id": vol["id"], "name": vol["name"], "links": [{"rel": "self", "href": href}]}


# --------------------------------------------------------------------------------------------------------------------
# Volumes


def _int_field(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise nova_error(400, f"Invalid input received: {what} must be an integer.")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise nova_error(400, f"Invalid input received: {what} '{value}' must be an integer.") from None


@routes.post(f"{PREFIX}/volumes")
@_api
async def create(request: web.Request) -> web.Response:
    c = ctx(request)
    _write(c, "create")
    cloud = cloud_of(request)
    body = await read_json(request, nova_error)
    spec = body.get("volume")
    if not isinstance(spec, dict):
        raise nova_error(400, "Missing required element 'volume' in request body.")
    spec = {k: v for k, v in spec.items() if v is not None}
    for unsupported in ("snapshot_id", "source_volid", "backup_id"):
        if unsupported in spec:
            raise nova_error(400, f"Invalid input received: {unsupported} is not supported by this cloud.")
    if "size" not in spec:
        raise nova_error(400, "Invalid input received: size is required.")
    size = _int_field(spec["size"], "Volume size")
    image_id = spec.get("imageRef") or spec.get("image_id")
    if image_id:
        image = cloud.table("image").get(str(image_id))
        if image is None:
            raise nova_error(400, "Invalid image identifier or unable to access requested image.")
        min_disk = int(image.get("min_disk") or 0)
        if size < min_disk:
            raise nova_error(
                400, f"Invalid input received: Volume size {size}GB cannot be smaller than the image minDisk "
                f"size {min_disk}GB."
            )
    az = spec.get("availability_zone")
    if az is not None and az not in cloud.config.availability_zones:
        raise nova_error(400, f"Invalid input received: Availability zone '{az}' is invalid.")
    metadata = spec.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise nova_error(400, "Invalid input received: metadata must be a dictionary.")
    vol = create_volume(
        cloud,
        _scope(request),
        c.user_id,
        size,
        name=spec.get("name") or spec.get("display_name"),
        description=spec.get("description") or spec.get("display_description"),
        image_id=str(image_id) if image_id else None,
        availability_zone=az,
        metadata={str(k): str(v) for k, v in metadata.items()},
        volume_type=spec.get("volume_type"),
        multiattach=bool(spec.get("multiattach", False)),
    )
    return json_response({"volume": render(cloud, vol, c.is_admin)}, status=202)


def _metadata_filter(raw: str) -> dict[str, str]:
    for parse in (json.loads, _literal):
        try:
            value = parse(raw)
        except (ValueError, SyntaxError):
            continue
        if isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items()}
    raise nova_error(400, f"Invalid metadata filter: {raw}")


def _literal(raw: str) -> Any:
    import ast

    return ast.literal_eval(raw)


def _sort(request: web.Request, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    sort = qstr(request, "sort")
    keys: list[tuple[str, str]] = []
    if sort:
        for part in sort.split(","):
            key, _, direction = part.partition(":")
            keys.append((key.strip(), (direction or "desc").strip()))
    else:
        sort_key = qstr(request, "sort_key")
        if sort_key:
            keys.append((sort_key, qstr(request, "sort_dir") or "desc"))
    if not keys:
        keys = [("created_at", "desc")]
    allowed = {"id", "name", "status", "size", "created_at", "updated_at", "availability_zone", "bootable"}
    for key, direction in reversed(keys):
        if key not in allowed:
            raise nova_error(400, f"Invalid input received: Invalid sort key {key}")
        if direction.lower() not in ("asc", "desc"):
            raise nova_error(400, f"Invalid input received: Invalid sort direction {direction}")
        items = sort_items(items, key, direction)
    return items


TIME_OPERATORS = {"gt": lambda a, b: a > b, "gte": lambda a, b: a >= b, "eq": lambda a, b: a == b,
                  "neq": lambda a, b: a != b, "lt": lambda a, b: a < b, "lte": lambda a, b: a <= b}


def _when(value: object) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _time_filter(items: list[dict[str, Any]], key: str, raw: str) -> list[dict[str, Any]]:
    """Cinder 3.60's time filters: ``<op>:<ISO time>`` (``gt``, ``gte``, ``eq``, ``neq``, ``lt``, ``lte``; no
    operator means ``eq``), several joined by commas; a volume never updated compares by its ``created_at``."""
    for part in raw.split(","):
        op, sep, text = part.partition(":")
        if not sep or op not in TIME_OPERATORS:
            op, text = "eq", part
        at = _when(text)
        if at is None:
            raise nova_error(400, f"Invalid input received: invalid {key} filter {part!r}")
        test = TIME_OPERATORS[op]
        items = [v for v in items if (t := _when(v.get(key) or v.get("created_at"))) is not None and test(t, at)]
    return items


async def _list(request: web.Request, detail: bool) -> web.Response:
    c = ctx(request)
    cloud = cloud_of(request)
    table = cloud.table(KIND)
    all_tenants = bool(qbool(qstr(request, "all_tenants"), False)) and c.is_admin
    project_filter = qstr(request, "project_id") if c.is_admin else None
    if project_filter:
        items = list(table.of_project(project_filter))
    elif all_tenants:
        items = list(table.items.values())
    else:
        items = list(table.of_project(_scope(request)))
    name = qstr(request, "name")
    if name is not None:
        items = [v for v in items if v["name"] == name]
    name_like = qstr(request, "name~")
    if name_like is not None:
        items = [v for v in items if name_like in (v["name"] or "")]
    status = qstr(request, "status")
    if status is not None:
        items = [v for v in items if v["status"] == status.lower()]
    for key in ("availability_zone", "bootable", "volume_type", "user_id"):
        value = qstr(request, key)
        if value is not None:
            items = [v for v in items if str(v.get(key)).lower() == value.lower()]
    if microversion(request) >= (3, 60):  # created_at / updated_at with a comparison operator (``gte:<time>``)
        for key in ("created_at", "updated_at"):
            value = qstr(request, key)
            if value is not None:
                items = _time_filter(items, key, value)
    for raw_meta in request.query.getall("metadata", []):
        if raw_meta.lstrip().startswith("{"):
            want = _metadata_filter(raw_meta)
            items = [v for v in items if all(v["metadata"].get(k) == val for k, val in want.items())]
        elif raw_meta != "None":  # requests encodes the SDK's dict as its bare keys: filter on their presence
            items = [v for v in items if raw_meta in v["metadata"]]
    items = _sort(request, items)
    offset = qint(request, "offset", nova_error)
    if offset:
        items = items[offset:]
    limit = qint(request, "limit", nova_error)
    page = paginate(items, limit=limit, marker=qstr(request, "marker"), max_limit=MAX_LIMIT, error=nova_error)
    rendered = [render(cloud, v, c.is_admin) if detail else _summary(cloud, v) for v in page.items]
    body: dict[str, Any] = {"volumes": rendered}
    if page.next_marker is not None:
        body["volumes_links"] = [
            {"rel": "next", "href": next_link(request, cloud.public_url, page.next_marker, limit)}
        ]
    if detail and microversion(request) >= (3, 34) and qbool(qstr(request, "with_count"), False):
        body["count"] = len(items)
    return json_response(body)


@routes.get(f"{PREFIX}/volumes/detail")
@_api
async def list_detail(request: web.Request) -> web.Response:
    return await _list(request, detail=True)


@routes.get(f"{PREFIX}/volumes")
@_api
async def list_volumes(request: web.Request) -> web.Response:
    return await _list(request, detail=False)


@routes.get(f"{PREFIX}/volumes/{{volume_id}}")
@_api
async def show(request: web.Request) -> web.Response:
    vol = _get_visible(request, request.match_info["volume_id"])
    return json_response({"volume": render(cloud_of(request), vol, ctx(request).is_admin)})


@routes.put(f"{PREFIX}/volumes/{{volume_id}}")
@_api
async def update(request: web.Request) -> web.Response:
    c = ctx(request)
    _write(c, "update")
    cloud = cloud_of(request)
    vol = _get_visible(request, request.match_info["volume_id"])
    body = await read_json(request, nova_error)
    spec = body.get("volume")
    if not isinstance(spec, dict) or not spec:
        raise nova_error(400, "Missing required element 'volume' in request body.")
    for key, alias in (("name", "display_name"), ("description", "display_description")):
        if key in spec or alias in spec:
            vol[key] = spec.get(key, spec.get(alias))
    if isinstance(spec.get("metadata"), dict):
        vol["metadata"] = {str(k): str(v) for k, v in spec["metadata"].items()}
    vol["updated_at"] = now_iso_micro()
    return json_response({"volume": render(cloud, vol, c.is_admin)})


@routes.delete(f"{PREFIX}/volumes/{{volume_id}}")
@_api
async def delete(request: web.Request) -> web.Response:
    c = ctx(request)
    _write(c, "delete")
    vol = _get_visible(request, request.match_info["volume_id"])
    qbool(qstr(request, "cascade"), False)  # no snapshots here: cascade changes nothing
    force = bool(qbool(qstr(request, "force"), False))
    if force and not c.is_admin:
        raise nova_error(403, "Policy doesn't allow volume:force_delete to be performed.")
    delete_volume(cloud_of(request), vol["id"])
    log.info("volume_deleting", volume_id=vol["id"], project_id=vol["_project_id"])
    return web.Response(status=202)


@routes.post(f"{PREFIX}/volumes/{{volume_id}}/action")
@_api
async def action(request: web.Request) -> web.Response:
    c = ctx(request)
    cloud = cloud_of(request)
    vol = _get_visible(request, request.match_info["volume_id"])
    body = await read_json(request, nova_error)
    if len(body) != 1:
        raise nova_error(400, "Invalid request body: exactly one action expected.")
    name, args = next(iter(body.items()))
    args = args if isinstance(args, dict) else {}
    if name == "os-extend":
        _write(c, "extend")
        new_size = _int_field(args.get("new_size"), "New volume size")
        allowed = ("available", "in-use") if microversion(request) >= (3, 42) else ("available",)
        if vol["status"] not in allowed:
            raise nova_error(
                400, f"Invalid volume: Volume {vol['id']} status must be {' or '.join(allowed)} to extend, "
                f"currently {vol['status']}."
            )
        if new_size <= vol["size"]:
            raise nova_error(
                400, f"Invalid input received: New size for extend must be greater than current size. "
                f"(current: {vol['size']}, extended: {new_size})."
            )
        _check_quota(cloud, vol["_project_id"], new_size - vol["size"], new_volumes=0)
        previous = vol["status"]
        _set_status(cloud, vol, "extending")

        def extended() -> None:
            if _live(cloud, vol) and vol["status"] == "extending":
                vol["size"] = new_size
                vol["status"] = previous
                vol["updated_at"] = now_iso_micro()
                cloud.ledger.changed(vol["id"], previous, volume_gb=new_size)

        cloud.later(cloud.delay(cloud.config.timing.volume_seconds), extended)
        return web.Response(status=202)
    if name == "os-reset_status":
        if not c.is_admin:
            raise nova_error(403, "Policy doesn't allow volume_extension:volume_admin_actions:reset_status to be "
                                  "performed.")
        status = args.get("status")
        valid = {"available", "error", "in-use", "creating", "deleting", "attaching", "detaching",
                 "error_deleting", "error_extending", "maintenance", "reserved"}
        if status not in valid:
            raise nova_error(400, f"Invalid input received: Invalid status {status!r}.")
        _set_status(cloud, vol, status)
        if args.get("attach_status") == "detached" and vol.get("_attachment"):
            _unattach(cloud, vol, vol["_attachment"]["server_id"])
        return web.Response(status=202)
    if name == "os-set_bootable":
        _write(c, "update")
        vol["bootable"] = "true" if qbool(str(args.get("bootable")), False) else "false"
        return web.Response(status=200)
    if name in ("os-update_readonly_flag", "os-set_image_metadata"):
        _write(c, "update")
        return web.Response(status=200)
    raise nova_error(400, f"There is no such action: {name}")


# --------------------------------------------------------------------------------------------------------------------
# Limits, quota sets, types


@routes.get(f"{PREFIX}/limits")
@_api
async def limits(request: web.Request) -> web.Response:
    cloud = cloud_of(request)
    project = _scope(request)
    quota = cloud.quota(project, "volume")
    count, gigabytes = _usage(cloud, project)
    return json_response(
        {
            "limits": {
                "rate": [],
                "absolute": {
                    "maxTotalVolumes": quota.get("volumes", -1),
                    "maxTotalVolumeGigabytes": quota.get("gigabytes", -1),
                    "maxTotalSnapshots": quota.get("snapshots", -1),
                    "maxTotalBackups": quota.get("backups", -1),
                    "maxTotalBackupGigabytes": quota.get("backup_gigabytes", -1),
                    "totalVolumesUsed": count,
                    "totalGigabytesUsed": gigabytes,
                    "totalSnapshotsUsed": 0,
                    "totalBackupsUsed": 0,
                    "totalBackupGigabytesUsed": 0,
                },
            }
        }
    )


def _quota_target(request: web.Request) -> str:
    c = ctx(request)
    target = request.match_info["target"]
    if target != c.project_id and not c.is_admin:
        raise nova_error(403, "Policy doesn't allow volume_extension:quotas:show to be performed.")
    return target


def _quota_set(cloud: Cloud, project: str, usage: bool) -> dict[str, Any]:
    quota = cloud.quota(project, "volume")
    count, gigabytes = _usage(cloud, project)
    used = {"volumes": count, "gigabytes": gigabytes}
    out: dict[str, Any] = {"id": project}
    for key in QUOTA_KEYS:
        limit = quota.get(key, -1)
        out[key] = {"limit": limit, "in_use": used.get(key, 0), "reserved": 0, "allocated": 0} if usage else limit
    type_suffix = DEFAULT_TYPE_NAME
    for key in ("volumes", "gigabytes", "snapshots"):
        limit = -1
        out[f"{key}_{type_suffix}"] = (
            {"limit": limit, "in_use": used.get(key, 0), "reserved": 0, "allocated": 0} if usage else limit
        )
    return out


@routes.get(f"{PREFIX}/os-quota-sets/{{target}}/defaults")
@_api
async def quota_defaults(request: web.Request) -> web.Response:
    cloud = cloud_of(request)
    target = _quota_target(request)
    defaults = cloud.config.quotas.default.get("volume", {})
    return json_response({"quota_set": {"id": target, **{k: defaults.get(k, -1) for k in QUOTA_KEYS}}})


@routes.get(f"{PREFIX}/os-quota-sets/{{target}}")
@_api
async def quota_show(request: web.Request) -> web.Response:
    target = _quota_target(request)
    usage = bool(qbool(qstr(request, "usage"), False))
    return json_response({"quota_set": _quota_set(cloud_of(request), target, usage)})


@routes.put(f"{PREFIX}/os-quota-sets/{{target}}")
@_api
async def quota_update(request: web.Request) -> web.Response:
    c = ctx(request)
    if not c.is_admin:
        raise nova_error(403, "Policy doesn't allow volume_extension:quotas:update to be performed.")
    cloud = cloud_of(request)
    target = request.match_info["target"]
    body = await read_json(request, nova_error)
    spec = body.get("quota_set")
    if not isinstance(spec, dict):
        raise nova_error(400, "Missing required element 'quota_set' in request body.")
    values: dict[str, int] = {}
    for key, value in spec.items():
        if key in ("id", "tenant_id") or value is None:
            continue
        if key not in QUOTA_KEYS:
            raise nova_error(400, f"Bad key(s) in quota set: {key}")
        n = _int_field(value, key)
        if n < -1:
            raise nova_error(400, f"Invalid input received: Quota {key} must be -1 or greater.")
        values[key] = n
    cloud.set_quota(target, "volume", values)
    log.info("volume_quota_set", project_id=target, **values)
    quota = _quota_set(cloud, target, usage=False)
    quota.pop("id")
    return json_response({"quota_set": quota})


@routes.delete(f"{PREFIX}/os-quota-sets/{{target}}")
@_api
async def quota_delete(request: web.Request) -> web.Response:
    c = ctx(request)
    if not c.is_admin:
        raise nova_error(403, "Policy doesn't allow volume_extension:quotas:delete to be performed.")
    cloud = cloud_of(request)
    cloud.quota_overrides.get(request.match_info["target"], {}).pop("volume", None)
    return web.Response(status=200)


@routes.get(f"{PREFIX}/types")
@_api
async def types(request: web.Request) -> web.Response:
    return json_response({"volume_types": [dict(t) for t in _TYPES]})


@routes.get(f"{PREFIX}/types/{{type_id}}")
@_api
async def type_show(request: web.Request) -> web.Response:
    type_id = request.match_info["type_id"]
    if type_id == "default":
        return json_response({"volume_type": dict(_TYPES[0])})
    for t in _TYPES:
        if t["id"] == type_id:
            return json_response({"volume_type": dict(t)})
    raise nova_error(404, f"Volume type {type_id} could not be found.")


@routes.get(f"{PREFIX}/availability-zones")
@_api
async def availability_zones(request: web.Request) -> web.Response:
    zones = cloud_of(request).config.availability_zones
    return json_response(
        {"availabilityZoneInfo": [{"zoneName": z, "zoneState": {"available": True}} for z in zones]}
    )


def apply_volume_fault(cloud: Cloud, fault: VolumeFault) -> bool:
    """The volume named (or with the id) ``fault.name`` goes to ``error``, or vanishes (gone from the table, its
    attachment forgotten, the ledger's deletion now); False when there is none."""
    table = cloud.table(KIND)
    direct = table.get(fault.name)
    targets = [direct] if direct is not None else [v for v in table.items.values() if v["name"] == fault.name]
    for vol in targets:
        log.info("volume_fault", volume_id=vol["id"], action=fault.action)
        if fault.action == "vanish":
            for attachment in vol["attachments"]:
                _by_server(cloud).get(str(attachment.get("server_id")), {}).pop(vol["id"], None)
            table.remove(vol["id"])
            cloud.ledger.deleted(vol["id"])
        else:
            _set_status(cloud, vol, "error")
    return bool(targets)

