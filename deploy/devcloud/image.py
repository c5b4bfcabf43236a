"""Image (Glance v2) under /image: version discovery, images seeded from the configuration (stable ids, owned by the
admin project, public), list with Glance's filters and `next` paging, get (unwrapped, custom properties top-level),
and a small create / upload / patch / delete for private images."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import structlog
from aiohttp import web

from deploy.devcloud.clock import now_iso
from deploy.devcloud.state import Cloud, cloud_of
from deploy.devcloud.web import (
    Ctx,
    Routes,
    ctx,
    glance_error,
    json_response,
    paginate,
    qbool,
    qint,
    qstr,
    read_json,
    sort_items,
)

log = structlog.get_logger("devcloud.image")

routes = Routes("image")

KIND = "image"
DEFAULT_LIMIT = 25
MAX_LIMIT = 1000
_VERSIONS = ["2.16", "2.15", "2.14", "2.13", "2.12", "2.11", "2.10", "2.9", "2.8", "2.7", "2.6", "2.5", "2.4",
             "2.3", "2.2", "2.1", "2.0"]
# The keys of Glance's own image schema; everything else a client sets is a custom property, rendered top-level.
CORE_KEYS = frozenset({
    "id", "name", "status", "visibility", "disk_format", "container_format", "min_disk", "min_ram", "size",
    "virtual_size", "checksum", "os_hash_algo", "os_hash_value", "owner", "protected", "tags", "created_at",
    "updated_at", "self", "file", "schema", "os_hidden", "locations", "direct_url",
})
READ_ONLY = frozenset({"id", "status", "size", "virtual_size", "checksum", "os_hash_algo", "os_hash_value", "owner",
                       "created_at", "updated_at", "self", "file", "schema", "locations", "direct_url"})


def image_id(name: str) -> str:
    """The stable id of a seeded image: the same on every start, so configs and tests may rely on it."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"devcloud/image/{name}"))


def _new_image(image_id_: str, owner: str, **fields: Any) -> dict[str, Any]:
    at = now_iso()
    image: dict[str, Any] = {
        "id": image_id_,
        "name": None,
        "status": "queued",
        "visibility": "shared",
        "disk_format": None,
        "container_format": None,
        "min_disk": 0,
        "min_ram": 0,
        "size": None,
        "virtual_size": None,
        "checksum": None,
        "os_hash_algo": None,
        "os_hash_value": None,
        "owner": owner,
        "protected": False,
        "tags": [],
        "created_at": at,
        "updated_at": at,
        "os_hidden": False,
        "self": f"/v2/images/{image_id_}",
        "file": f"/v2/images/{image_id_}/file",
        "schema": "/v2/schemas/image",
    }
    image.update(fields)
    return image


def seed(cloud: Cloud) -> None:
    owner = cloud.identity.project_id("admin") or "admin"
    for spec in cloud.config.images:
        iid = spec.id or image_id(spec.name)
        digest = hashlib.sha512(f"devcloud/{spec.name}".encode()).hexdigest()
        image = _new_image(
            iid,
            owner,
            name=spec.name,
            status="active",
            visibility="public",
            disk_format=spec.disk_format,
            container_format="bare",
            min_disk=spec.min_disk_gb,
            size=spec.size_bytes,
            virtual_size=None,
            checksum=hashlib.md5(spec.name.encode(), usedforsecurity=False).hexdigest(),
            os_hash_algo="sha512",
            os_hash_value=digest,
            os_distro=spec.os_distro,
            **spec.properties,
        )
        cloud.table(KIND).add(image, owner)


# --------------------------------------------------------------------------------------------------------------------
# Discovery


@routes.get("/image", public=True)
async def versions(request: web.Request) -> web.Response:
    cloud = cloud_of(request)
    href = cloud.url("/image/v2/")
    return json_response(
        {
            "versions": [
                {"id": f"v{v}", "status": "CURRENT" if i == 0 else "SUPPORTED",
                 "links": [{"rel": "self", "href": href}]}
                for i, v in enumerate(_VERSIONS)
            ]
        },
        status=300,
    )


# --------------------------------------------------------------------------------------------------------------------
# Images


def _visible(c: Ctx, image: dict[str, Any]) -> bool:
    return c.is_admin or image["visibility"] in ("public", "community") or image["owner"] == c.project_id


def render(image: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in image.items() if not k.startswith("_")}


def _get(request: web.Request, image_id_: str) -> dict[str, Any]:
    image = cloud_of(request).table(KIND).get(image_id_)
    if image is None or not _visible(ctx(request), image):
        raise glance_error(404, f"No image found with ID {image_id_}")
    return image


def _filtered(request: web.Request) -> list[dict[str, Any]]:
    c = ctx(request)
    items = [i for i in cloud_of(request).table(KIND).items.values() if _visible(c, i)]
    visibility = qstr(request, "visibility")
    if visibility is None:
        # Glance's default list: public, community only when owned, private/shared of the caller
        items = [i for i in items if i["visibility"] != "community" or i["owner"] == c.project_id]
    elif visibility != "all":
        items = [i for i in items if i["visibility"] == visibility]
    os_hidden = qbool(qstr(request, "os_hidden"), False)
    items = [i for i in items if bool(i.get("os_hidden")) == os_hidden]
    raw_id = qstr(request, "id")
    if raw_id is not None:
        wanted = set(raw_id[3:].split(",")) if raw_id.startswith("in:") else {raw_id}
        items = [i for i in items if i["id"] in wanted]
    raw_name = qstr(request, "name")
    if raw_name is not None:
        names = set(raw_name[3:].split(",")) if raw_name.startswith("in:") else {raw_name}
        items = [i for i in items if i["name"] in names]
    for key in ("status", "owner", "disk_format", "container_format"):
        value = qstr(request, key)
        if value is not None:
            wanted = set(value[3:].split(",")) if value.startswith("in:") else {value}
            items = [i for i in items if str(i.get(key)) in wanted]
    for tag in request.query.getall("tag", []):
        items = [i for i in items if tag in i["tags"]]
    reserved = {"visibility", "os_hidden", "id", "name", "status", "owner", "disk_format", "container_format", "tag",
                "limit", "marker", "sort", "sort_key", "sort_dir", "member_status", "size_min", "size_max",
                "protected", "created_at", "updated_at"}
    for key, value in request.query.items():
        if key not in reserved and value != "None" and key not in CORE_KEYS:
            items = [i for i in items if str(i.get(key)) == value]  # custom properties, e.g. os_distro
    return items


def _sorted(request: web.Request, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys: list[tuple[str, str]] = []
    sort = qstr(request, "sort")
    if sort:
        for part in sort.split(","):
            key, _, direction = part.partition(":")
            keys.append((key.strip(), (direction or "desc").strip()))
    else:
        for key in request.query.getall("sort_key", []):
            keys.append((key, qstr(request, "sort_dir") or "desc"))
    if not keys:
        keys = [("created_at", "desc")]
    for key, direction in reversed(keys):
        if direction.lower() not in ("asc", "desc"):
            raise glance_error(400, f"Invalid sort direction: {direction}")
        if key not in CORE_KEYS:
            raise glance_error(400, f"Invalid sort key: {key}")
        items = sort_items(items, key, direction)
    return items


@routes.get("/image/v2/images")
async def list_images(request: web.Request) -> web.Response:
    items = _sorted(request, _filtered(request))
    limit = qint(request, "limit", glance_error)
    size = DEFAULT_LIMIT if limit is None else limit
    page = paginate(items, limit=size, marker=qstr(request, "marker"), max_limit=MAX_LIMIT, error=glance_error)
    body: dict[str, Any] = {
        "images": [render(i) for i in page.items],
        "first": "/v2/images",
        "schema": "/v2/schemas/images",
    }
    if page.next_marker is not None and len(items) > 0 and page.items[-1] is not items[-1]:
        from urllib.parse import urlencode

        query = {k: v for k, v in request.query.items() if k not in ("marker", "limit")}
        query["marker"] = page.next_marker
        query["limit"] = str(min(size, MAX_LIMIT))
        body["next"] = f"/v2/images?{urlencode(query)}"
    return json_response(body)


@routes.get("/image/v2/images/{image_id}")
async def show_image(request: web.Request) -> web.Response:
    return json_response(render(_get(request, request.match_info["image_id"])))


def _check_write(c: Ctx) -> None:
    if not c.can_write:
        raise glance_error(403, "You are not authorized to complete add_image action.")


def _owned(request: web.Request, image_id_: str) -> dict[str, Any]:
    c = ctx(request)
    _check_write(c)
    image = _get(request, image_id_)
    if not c.is_admin and image["owner"] != c.project_id:
        raise glance_error(403, "You are not permitted to modify this image.")
    return image


@routes.post("/image/v2/images")
async def create_image(request: web.Request) -> web.Response:
    c = ctx(request)
    _check_write(c)
    cloud = cloud_of(request)
    body = await read_json(request, glance_error)
    bad = sorted(k for k in body if k in READ_ONLY and k != "id")
    if bad:
        raise glance_error(403, f"Attribute '{bad[0]}' is read-only.")
    visibility = body.get("visibility") or "shared"
    if visibility not in ("public", "private", "shared", "community"):
        raise glance_error(400, f"Invalid visibility value: {visibility}")
    if visibility == "public" and not c.is_admin:
        raise glance_error(403, "You are not authorized to complete publicize_image action.")
    iid = str(body.get("id") or uuid.uuid4())
    if cloud.table(KIND).get(iid) is not None:
        raise glance_error(409, f"Image with identifier {iid} already exists!")
    owner = c.project_id or ""
    fields = {k: v for k, v in body.items() if v is not None and k != "id"}
    fields["visibility"] = visibility
    fields["tags"] = list(fields.get("tags") or [])
    image = _new_image(iid, owner, **fields)
    cloud.table(KIND).add(image, owner)
    log.info("image_created", image_id=iid, project_id=owner)
    return json_response(render(image), status=201, headers={"Location": cloud.url(f"/image/v2/images/{iid}")})


@routes.put("/image/v2/images/{image_id}/file")
async def upload(request: web.Request) -> web.Response:
    image = _owned(request, request.match_info["image_id"])
    if image["status"] not in ("queued",):
        raise glance_error(409, f"Image status transition from {image['status']} to saving is not allowed")
    data = await request.read()
    image.update(
        status="active",
        size=len(data),
        checksum=hashlib.md5(data, usedforsecurity=False).hexdigest(),
        os_hash_algo="sha512",
        os_hash_value=hashlib.sha512(data).hexdigest(),
        updated_at=now_iso(),
    )
    return web.Response(status=204)


@routes.patch("/image/v2/images/{image_id}")
async def patch_image(request: web.Request) -> web.Response:
    image = _owned(request, request.match_info["image_id"])
    import msgspec

    try:
        ops = msgspec.json.decode(await request.read())
    except msgspec.DecodeError:
        raise glance_error(400, "Malformed JSON in request body.") from None
    if not isinstance(ops, list):
        raise glance_error(400, "Malformed JSON patch: expected a list of operations.")
    for op in ops:
        path = str(op.get("path", "")).lstrip("/")
        if path in READ_ONLY:
            raise glance_error(403, f"Attribute '{path}' is read-only.")
        if op.get("op") in ("add", "replace"):
            image[path] = op.get("value")
        elif op.get("op") == "remove":
            if path in CORE_KEYS or path not in image:
                raise glance_error(409, f"Property {path} does not exist.")
            del image[path]
        else:
            raise glance_error(400, f"Invalid JSON patch operation: {op.get('op')}")
    image["updated_at"] = now_iso()
    return json_response(render(image))


@routes.delete("/image/v2/images/{image_id}")
async def delete_image(request: web.Request) -> web.Response:
    image = _owned(request, request.match_info["image_id"])
    if image.get("protected"):
        raise glance_error(403, f"Image {image['id']} is protected and cannot be deleted.")
    cloud_of(request).table(KIND).remove(image["id"])
    log.info("image_deleted", image_id=image["id"])
    return web.Response(status=204)


@routes.get("/image/v2/schemas/image")
async def image_schema(request: web.Request) -> web.Response:
    return json_response({"name": "image", "additionalProperties": {"type": "string"},
                          "properties": {k: {} for k in sorted(CORE_KEYS)}, "links": []})


@routes.get("/image/v2/schemas/images")
async def images_schema(request: web.Request) -> web.Response:
    return json_response({"name": "images", "properties": {"images": {"type": "array"}}, "links": []})
