"""``/v1/clustertemplates``: create (201 + Location), list, detail, show, delete (204)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
from aiohttp import web

from proto import subjects
from proto.events import ClusterTemplate, ClusterTemplateCreated, ClusterTemplateDeleted
from services.api import paging, store
from services.api.app import POOL, WRITER
from services.api.errors import bad_request, forbidden, policy_denied
from services.api.middleware import KEYSTONE, base_url, context
from services.api.resources.common import iso, json_body, links, one, require_read, require_write, scope_of
from services.api.validation import template_fields

routes = web.RouteTableDef()
RESOURCE = "clustertemplates"


def view(t: ClusterTemplate, base: str) -> dict[str, Any]:
    body = msgspec.to_builtins(t)
    body["created_at"] = iso(t.created_at)
    body["updated_at"] = iso(t.updated_at)
    body["links"] = links(base, RESOURCE, t.uuid)
    return dict(body)


async def lookup(request: web.Request, ident: str) -> ClusterTemplate:
    ctx = context(request)
    found = await store.find_templates(request.app[POOL], scope_of(ctx), ident)
    t: ClusterTemplate = one(found, "ClusterTemplate", ident, plural="cluster templates")
    return t


async def _list(request: web.Request, rule: str) -> web.Response:
    ctx = context(request)
    require_read(ctx, rule)
    page = paging.parse_page(request.query, store.TEMPLATE_SORT_KEYS)
    try:
        items = await store.list_templates(request.app[POOL], scope_of(ctx), page)
    except store.MarkerNotFound:
        raise bad_request(f"Marker {page.marker} could not be found.") from None
    base = base_url(request)
    body: dict[str, Any] = {"clustertemplates": [view(t, base) for t in items]}
    nxt = paging.next_link(base, RESOURCE, page, len(items), items[-1].uuid if items else None)
    if nxt:
        body["next"] = nxt
    return web.json_response(body)


@routes.get("/v1/clustertemplates")
async def list_templates(request: web.Request) -> web.Response:
    return await _list(request, "clustertemplate:get_all")


@routes.get("/v1/clustertemplates/detail")
async def detail_templates(request: web.Request) -> web.Response:
    return await _list(request, "clustertemplate:detail")


@routes.get("/v1/clustertemplates/{ident}")
async def show_template(request: web.Request) -> web.Response:
    ctx = context(request)
    require_read(ctx, "clustertemplate:get")
    t = await lookup(request, request.match_info["ident"])
    return web.json_response(view(t, base_url(request)))


@routes.post("/v1/clustertemplates")
async def create_template(request: web.Request) -> web.Response:
    ctx = context(request)
    require_write(ctx, "clustertemplate:create")
    fields = template_fields(await json_body(request))
    if (fields.get("public") or fields.get("hidden")) and not ctx.is_admin:
        raise forbidden("Not authorized to set public or hidden flag for cluster template.")
    keystone = request.app[KEYSTONE]
    image = await keystone.find_image(ctx, fields["image_id"])
    os_distro = image.get("os_distro")
    if not os_distro:
        raise bad_request(f"Image {fields['image_id']} doesn't contain os_distro field.")
    fields.setdefault("cluster_distro", os_distro)
    for f in ("flavor_id", "master_flavor_id"):
        if fields.get(f):
            await keystone.find_flavor(ctx, fields[f])
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
    ctx = context(request)
    require_write(ctx, "clustertemplate:delete")
    t = await lookup(request, request.match_info["ident"])
    if t.project_id != ctx.project_id and not ctx.is_admin:
        raise policy_denied("clustertemplate:delete")
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
