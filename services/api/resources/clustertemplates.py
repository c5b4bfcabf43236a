"""``/v1/clustertemplates``: create (201 + Location), list, detail, show, PATCH (200), delete (204).

Visibility (Magnum's): a non-admin sees their project's templates and other projects' public ones that are not
hidden; an admin sees all. Only an admin may set ``public`` or ``hidden`` (403 ClusterTemplatePublishDenied).
A template some cluster uses may only be renamed, published or hidden (400 ClusterTemplateReferenced).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog
from aiohttp import web

from proto import subjects
from proto.events import (
    ClusterTemplate,
    ClusterTemplateCreated,
    ClusterTemplateDeleted,
    ClusterTemplateUpdated,
)
from proto.labels import addon_names
from services.api import paging, policy, store
from services.api.addons import ADDONS
from services.api.errors import ApiError, bad_request, forbidden
from services.api.keys import POOL, USER_CLOUD, WRITER
from services.api.middleware import base_url, context
from services.api.patch import TEMPLATE_INTERNAL, TEMPLATE_NON_REMOVABLE, apply_patch, changed, parse_patch
from services.api.resources.common import cached_json, iso, json_body, links, scope_of
from services.api.validation import (
    TEMPLATE_FIELDS,
    check_cluster_type,
    check_template_type,
    image_distro,
    template_fields,
)

log = structlog.get_logger(__name__)

routes = web.RouteTableDef()
RESOURCE = "clustertemplates"

PUBLISH_DENIED = "Not authorized to set public or hidden flag for cluster template."
REFERENCED_MAY_CHANGE = frozenset({"name", "public", "hidden", "tags"})
"""What may change on a template some cluster uses (Magnum: rename, publish, hide, tag)."""
CLUSTER_TYPE_FIELDS = frozenset({"image_id", "coe", "server_type", "cluster_distro"})
"""A PATCH of any of these re-checks (server_type, os_distro, coe) against what the drivers provide."""


def magnum_tags(t: ClusterTemplate) -> str | None:
    """Magnum's template `tags` is one comma-separated string (or null); Cove keeps a list."""
    return ",".join(t.tags) if t.tags else None


def view(t: ClusterTemplate, base: str) -> dict[str, Any]:
    body = msgspec.to_builtins(t)
    body["tags"] = magnum_tags(t)
    body["created_at"] = iso(t.created_at)
    body["updated_at"] = iso(t.updated_at)
    body["links"] = links(base, RESOURCE, t.uuid)
    return dict(body)


def one_template(found: list[ClusterTemplate], ident: str) -> ClusterTemplate:
    """Magnum's ``get_resource``: 404 when none, 409 when the name is ambiguous."""
    if not found:
        raise ApiError(404, f"ClusterTemplate {ident} could not be found.")
    if len(found) > 1:
        raise ApiError(409, "Multiple ClusterTemplates exist with same name. Please use the ClusterTemplate uuid "
                            "instead.")
    return found[0]


async def lookup(request: web.Request, ident: str) -> ClusterTemplate:
    """A template the caller may see (hidden ones only for admins), by uuid or name."""
    found = await store.find_templates(request.app[POOL], scope_of(context(request)), ident)
    return one_template(found, ident)


def owner(t: ClusterTemplate) -> dict[str, str]:
    return {"project_id": t.project_id, "user_id": t.user_id}


async def _list(request: web.Request, rule: str) -> web.Response:
    ctx = context(request)
    policy.require(request, rule)
    page = paging.parse_page(request.query, store.TEMPLATE_SORT_KEYS)
    scope, base = scope_of(ctx), base_url(request)

    async def build() -> dict[str, Any]:
        try:
            items = await store.list_templates(request.app[POOL], scope, page)
        except store.MarkerNotFound:
            raise bad_request(f"Marker {page.marker} could not be found.") from None
        body: dict[str, Any] = {"clustertemplates": [view(t, base) for t in items]}
        nxt = paging.next_link(base, RESOURCE, page, len(items), items[-1].uuid if items else None)
        if nxt:
            body["next"] = nxt
        return body

    return await cached_json(request, (scope.project_id, scope.is_admin, base), build)


@routes.get("/v1/clustertemplates")
async def list_templates(request: web.Request) -> web.Response:
    return await _list(request, "clustertemplate:get_all")


@routes.get("/v1/clustertemplates/detail")
async def detail_templates(request: web.Request) -> web.Response:
    return await _list(request, "clustertemplate:detail")


@routes.get("/v1/clustertemplates/{ident}")
async def show_template(request: web.Request) -> web.Response:
    t = await lookup(request, request.match_info["ident"])
    if not t.public:
        policy.require(request, "clustertemplate:get", owner(t))
    return web.json_response(view(t, base_url(request)))


@routes.post("/v1/clustertemplates")
async def create_template(request: web.Request) -> web.Response:
    ctx = context(request)
    policy.require(request, "clustertemplate:create")
    fields = template_fields(await json_body(request))
    if (fields.get("public") or fields.get("hidden")) and not policy.allowed(request, "clustertemplate:publish"):
        raise forbidden(PUBLISH_DENIED)
    await request.app[ADDONS].check(fields["labels"])
    user_cloud = request.app[USER_CLOUD]
    image = await user_cloud.find_image(ctx, fields["image_id"])
    os_distro = image_distro(image, fields["image_id"])
    check_template_type(fields["server_type"], fields["coe"], os_distro, fields.get("cluster_distro"))
    fields.setdefault("cluster_distro", os_distro)
    for f in ("flavor_id", "master_flavor_id"):
        if fields.get(f):
            await user_cloud.find_flavor(ctx, fields[f])
    template = ClusterTemplate(
        uuid=str(uuid.uuid4()),
        project_id=ctx.project_id or "",
        user_id=ctx.user_id,
        created_at=datetime.now(UTC),
        **fields,
    )
    writer = request.app[WRITER]
    seq = await writer.publish(
        subjects.cluster_template_events("api", template.uuid),
        ClusterTemplateCreated(template=template),
        project_id=template.project_id,
        cluster_id=None,
        expected_last_subject_seq=0,
    )
    await writer.wait_applied(seq)
    base = base_url(request)
    return web.json_response(
        view(template, base), status=201, headers={"Location": f"{base}/v1/{RESOURCE}/{template.uuid}"}
    )


@routes.delete("/v1/clustertemplates/{ident}")
async def delete_template(request: web.Request) -> web.Response:
    t = await lookup(request, request.match_info["ident"])
    policy.require(request, "clustertemplate:delete", owner(t))
    if await store.template_in_use(request.app[POOL], t.uuid):
        raise bad_request(f"ClusterTemplate {t.uuid} is referenced by one or multiple clusters.")
    writer = request.app[WRITER]
    seq = await writer.publish(
        subjects.cluster_template_events("api", t.uuid),
        ClusterTemplateDeleted(uuid=t.uuid, project_id=t.project_id),
        project_id=t.project_id,
        cluster_id=None,
    )
    await writer.wait_applied(seq)
    return web.Response(status=204)


def patch_doc(t: ClusterTemplate) -> dict[str, Any]:
    """The document a PATCH applies to: every field Magnum shows (``driver`` too, which Cove resolves itself)."""
    doc = dict(msgspec.to_builtins(t))
    doc["tags"] = magnum_tags(t)
    doc.setdefault("driver", None)
    return doc


def patched_template(t: ClusterTemplate, body: Any, *, now: datetime) -> tuple[ClusterTemplate, set[str]]:
    """The template after Magnum's JSON-patch ``body``, validated like a create; and the changed fields."""
    ops = parse_patch(body, internal=TEMPLATE_INTERNAL, non_removable=TEMPLATE_NON_REMOVABLE)
    before = patch_doc(t)
    after = apply_patch(before, ops)
    fields = template_fields({k: v for k, v in after.items() if k in TEMPLATE_FIELDS and v is not None})
    new = ClusterTemplate(
        uuid=t.uuid, project_id=t.project_id, user_id=t.user_id, created_at=t.created_at, updated_at=now, **fields
    )
    diff = changed(
        {k: v for k, v in patch_doc(t).items() if k != "updated_at"},
        {k: v for k, v in patch_doc(new).items() if k != "updated_at"},
    )
    if not diff:
        return t, diff
    return new, diff


@routes.patch("/v1/clustertemplates/{ident}")
async def patch_template(request: web.Request) -> web.Response:
    ctx = context(request)
    ident = request.match_info["ident"]
    body = await json_body(request)
    parse_patch(body, internal=TEMPLATE_INTERNAL, non_removable=TEMPLATE_NON_REMOVABLE)  # 400 before any look-up
    t = await lookup(request, ident)
    policy.require(request, "clustertemplate:update", owner(t))
    new, diff = patched_template(t, body, now=datetime.now(UTC))
    base = base_url(request)
    if not diff:
        return web.json_response(view(t, base))
    if diff & {"public", "hidden"} and not policy.allowed(request, "clustertemplate:publish"):
        raise forbidden(PUBLISH_DENIED)
    if addon_names(new.labels) and addon_names(new.labels) != addon_names(t.labels):
        await request.app[ADDONS].check(new.labels)
    user_cloud = request.app[USER_CLOUD]
    if "image_id" in diff or (diff & CLUSTER_TYPE_FIELDS and new.cluster_distro is None):
        os_distro = image_distro(await user_cloud.find_image(ctx, new.image_id), new.image_id)
        if "cluster_distro" not in diff:
            new = msgspec.structs.replace(new, cluster_distro=os_distro)
        check_template_type(new.server_type, new.coe, os_distro, new.cluster_distro)
    elif diff & CLUSTER_TYPE_FIELDS:
        check_cluster_type(new.server_type, new.cluster_distro, new.coe)
    for f in ("flavor_id", "master_flavor_id"):
        value = getattr(new, f)
        if f in diff and value:
            await user_cloud.find_flavor(ctx, value)
    if not diff <= REFERENCED_MAY_CHANGE and await store.template_in_use(request.app[POOL], t.uuid):
        raise bad_request(f"ClusterTemplate {ident} is referenced by one or multiple clusters.")
    writer = request.app[WRITER]
    seq = await writer.publish(
        subjects.cluster_template_events("api", t.uuid),
        ClusterTemplateUpdated(template=new),
        project_id=t.project_id,
        cluster_id=None,
    )
    await writer.wait_applied(seq)
    log.info("cluster_template_updated", template_id=t.uuid, fields=sorted(diff))
    return web.json_response(view(new, base))
