"""Block storage (Cinder v3) under /volume/v3/{project_id}: volumes, their state machine and quotas, limits, quota
sets and volume types. Nova's volume attachments drive the volumes through the functions `attach_volume`,
`detach_volume`, `volumes_of_server` and `release_server_volumes`, which compute.py calls."""

from __future__ import annotations

import weakref
from typing import Any

import structlog

from deploy.devcloud.clock import now_iso_micro
from deploy.devcloud.state import Cloud
from deploy.devcloud.web import (
    Routes,
    new_id,
    nova_error,
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
# Functions other emulated services call (compute.py)


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
