"""Network's HTTP layer: the aiohttp handlers and route table under `/networking/v2.0`, which turn `NetError`
into Neutron's envelope: generic list/show/create/update/delete per kind, tags, router interfaces,
discovery, extensions and quotas."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from deploy.devcloud.network.core import (
    add_router_interface,
    add_rule,
    create_floating_ip,
    create_network,
    create_port,
    create_router,
    create_security_group,
    create_subnet,
    delete_floating_ip,
    delete_network,
    delete_port_checked,
    delete_router,
    delete_rule,
    delete_security_group,
    delete_subnet,
    ensure_default_sg,
    remove_router_interface,
    update_floating_ip,
    update_network,
    update_port,
    update_router,
    update_subnet,
)
from deploy.devcloud.network.model import (
    EXTENSIONS,
    FLOATINGIP,
    IGNORED_ON_UPDATE,
    KINDS,
    NETWORK,
    PORT,
    QUOTA_KEYS,
    ROUTER,
    SECGROUP,
    SGRULE,
    SUBNET,
    UPDATABLE,
    Kind,
    NetError,
    _bad,
    _bool,
    _check_owner,
    _check_quota,
    _invalid,
    _lookup,
    _not_found,
    _touch,
    net_state,
    render,
)
from deploy.devcloud.state import Cloud, cloud_of
from deploy.devcloud.web import (
    Ctx,
    Routes,
    ctx,
    json_response,
    neutron_error,
    qbool,
    qint,
    read_json,
    tag_filter,
)

log = structlog.get_logger("devcloud.network")

routes = Routes("network")
PREFIX = "/networking"
V2 = f"{PREFIX}/v2.0"


# ====================================================================================================================
# HTTP


def _wrap(fn: Callable[[web.Request], Awaitable[web.StreamResponse]]
          ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            return await fn(request)
        except NetError as exc:
            raise neutron_error(exc.status, exc.message, exc.type) from None

    handler.__name__ = fn.__name__
    return handler


def _caller(request: web.Request) -> tuple[Cloud, Ctx, str | None, bool]:
    c = ctx(request)
    cloud = cloud_of(request)
    ensure_default_sg(cloud, c.project_id)
    return cloud, c, c.project_id, c.is_admin


def _require_write(c: Ctx, action: str, kind: Kind) -> None:
    if not c.can_write:
        raise NetError(403, "PolicyNotAuthorized", f"rule:{action}_{kind.res} is disallowed by policy")


def _visible_items(cloud: Cloud, kind: Kind, project_id: str | None, is_admin: bool) -> list[dict[str, Any]]:
    table = cloud.table(kind.table)
    if is_admin:
        return list(table.items.values())
    own = list(table.of_project(project_id or ""))
    if kind is NETWORK:
        for net_id in net_state(cloud).public_networks:
            net = table.get(net_id)
            if net is not None and net["_project_id"] != project_id:
                own.append(net)
    elif kind is SUBNET:
        nets = cloud.table("network")
        for net_id in net_state(cloud).public_networks:
            net = nets.get(net_id)
            if net is not None and net["shared"] and net["_project_id"] != project_id:
                own.extend(s for s in (table.get(sid) for sid in net["subnets"]) if s is not None)
    return own


RESERVED_QUERY = {"fields", "limit", "marker", "page_reverse", "sort_key", "sort_dir", "tags", "tags-any",
                  "not-tags", "not-tags-any", "all_tenants", "all_projects"}


def _matches(value: Any, wanted: list[str], key: str) -> bool:
    if key == "fixed_ips" and isinstance(value, list):
        for w in wanted:
            k, _, v = w.partition("=")
            if any(str(ip.get(k)) == v for ip in value):
                return True
        return False
    if isinstance(value, bool):
        return any(w.lower() == str(value).lower() for w in wanted)
    if isinstance(value, list):
        return any(w in [str(x) for x in value] for w in wanted)
    if value is None:
        return any(w in ("", "None", "null") for w in wanted)
    return str(value) in wanted


def _filter(items: list[dict[str, Any]], request: web.Request) -> list[dict[str, Any]]:
    filters: dict[str, list[str]] = {}
    for key, value in request.query.items():
        if key not in RESERVED_QUERY:
            filters.setdefault(key, []).append(value)
    if not filters:
        return items
    return [i for i in items if all(k not in i or k.startswith("_") or _matches(i[k], v, k)
                                    for k, v in filters.items())]


def _sort_key(key: str) -> Callable[[dict[str, Any]], tuple[bool, str]]:
    return lambda item: (item.get(key) is None, str(item.get(key, "")))


def _sort(items: list[dict[str, Any]], request: web.Request) -> list[dict[str, Any]]:
    keys = request.query.getall("sort_key", [])
    if not keys:
        return items
    dirs = request.query.getall("sort_dir", [])
    out = items
    for i in reversed(range(len(keys))):
        key = keys[i]
        reverse = (dirs[i] if i < len(dirs) else "asc").lower() == "desc"
        out = sorted(out, key=_sort_key(key), reverse=reverse)
    return out


def _fields(body: dict[str, Any], request: web.Request) -> dict[str, Any]:
    wanted = [f for f in request.query.getall("fields", []) if f]
    if not wanted:
        return body
    return {k: v for k, v in body.items() if k in wanted}


def _page_link(request: web.Request, cloud: Cloud, rel: str, marker: str, limit: int, reverse: bool
               ) -> dict[str, str]:
    from urllib.parse import urlencode

    query = [(k, v) for k, v in request.query.items() if k not in ("marker", "limit", "page_reverse")]
    query += [("limit", str(limit)), ("marker", marker)]
    if reverse:
        query.append(("page_reverse", "True"))
    return {"rel": rel, "href": f"{cloud.public_url}{request.path}?{urlencode(query)}"}


def _list_handler(kind: Kind) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def list_items(request: web.Request) -> web.StreamResponse:
        cloud, _c, project_id, is_admin = _caller(request)
        items = _visible_items(cloud, kind, project_id, is_admin)
        items = _sort(tag_filter(_filter(items, request), request), request)
        limit = qint(request, "limit", lambda s, m: NetError(s, "BadRequest", m))
        marker = request.query.get("marker")
        reverse = bool(qbool(request.query.get("page_reverse"), False))
        links: list[dict[str, str]] = []
        if reverse:
            items = list(reversed(items))
        start = 0
        if marker:
            for i, item in enumerate(items):
                if item["id"] == marker:
                    start = i + 1
                    break
            else:
                raise _not_found(kind, marker)
        if limit:
            page = items[start:start + limit]
            if len(page) == limit:
                links.append(_page_link(request, cloud, "previous" if reverse else "next", page[-1]["id"], limit,
                                        reverse))
            if marker and page:
                links.append(_page_link(request, cloud, "next" if reverse else "previous", page[0]["id"], limit,
                                        not reverse))
        else:
            page = items[start:]
        if reverse:
            page = list(reversed(page))
        body: dict[str, Any] = {kind.coll.replace("-", "_"): [_fields(render(i), request) for i in page]}
        if links:
            body[f"{kind.coll.replace('-', '_')}_links"] = links
        return json_response(body)

    list_items.__name__ = f"list_{kind.table}"
    return list_items


CREATORS: dict[str, Callable[[Cloud, str, bool, dict[str, Any]], dict[str, Any]]] = {}


def _create_one(cloud: Cloud, kind: Kind, project_id: str, is_admin: bool, body: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _bad(f"Invalid {kind.res} body.")
    explicit_null_gateway = kind is SUBNET and "gateway_ip" in body and body["gateway_ip"] is None
    fields = {k: v for k, v in body.items() if v is not None}
    if explicit_null_gateway:
        fields["gateway_ip"] = None
    owner = fields.pop("project_id", None) or fields.pop("tenant_id", None)
    fields.pop("tenant_id", None)
    if owner and owner != project_id:
        if not is_admin:
            raise NetError(403, "PolicyNotAuthorized", "Specifying 'project_id' or 'tenant_id' other than the "
                           "authenticated project in request requires admin privileges")
        project_id = owner
    return CREATORS[kind.table](cloud, project_id, is_admin, fields)


def _delete_item(cloud: Cloud, kind: Kind, item: dict[str, Any], is_admin: bool) -> None:
    if kind is NETWORK:
        delete_network(cloud, item)
    elif kind is SUBNET:
        delete_subnet(cloud, item)
    elif kind is ROUTER:
        delete_router(cloud, item)
    elif kind is PORT:
        delete_port_checked(cloud, item)
    elif kind is SECGROUP:
        delete_security_group(cloud, item, is_admin)
    elif kind is SGRULE:
        delete_rule(cloud, item)
    else:
        delete_floating_ip(cloud, item)


def _create_handler(kind: Kind) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def create_items(request: web.Request) -> web.StreamResponse:
        cloud, c, project_id, is_admin = _caller(request)
        _require_write(c, "create", kind)
        body = await read_json(request, lambda s, m: neutron_error(s, m, "BadRequest"))
        plural = kind.coll.replace("-", "_")
        if plural in body and isinstance(body[plural], list):
            specs = body[plural]
            if kind.quota in QUOTA_KEYS and kind is not SGRULE:
                _check_quota(cloud, kind, project_id or "", len(specs))
            created: list[dict[str, Any]] = []
            try:
                for spec in specs:
                    created.append(_create_one(cloud, kind, project_id or "", is_admin, spec))
            except NetError:
                for item in reversed(created):
                    try:
                        _delete_item(cloud, kind, item, True)
                    except NetError:
                        log.warning("bulk_rollback_failed", kind=kind.table, id=item["id"])
                raise
            return json_response({plural: [render(i) for i in created]}, status=201)
        if kind.res not in body:
            raise _bad(f"Resource body required: '{kind.res}'")
        item = _create_one(cloud, kind, project_id or "", is_admin, body[kind.res])
        return json_response({kind.res: render(item)}, status=201)

    create_items.__name__ = f"create_{kind.table}"
    return create_items


def _get_handler(kind: Kind) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def get_item(request: web.Request) -> web.StreamResponse:
        cloud, _c, project_id, is_admin = _caller(request)
        item = _lookup(cloud, kind, request.match_info["id"], project_id, is_admin)
        return json_response({kind.res: _fields(render(item), request)})

    get_item.__name__ = f"get_{kind.table}"
    return get_item


def _update_handler(kind: Kind) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def update_item(request: web.Request) -> web.StreamResponse:
        cloud, c, project_id, is_admin = _caller(request)
        _require_write(c, "update", kind)
        item = _lookup(cloud, kind, request.match_info["id"], project_id, is_admin)
        _check_owner(kind, item, project_id, is_admin, "update")
        body = await read_json(request, lambda s, m: neutron_error(s, m, "BadRequest"))
        changes = body.get(kind.res)
        if not isinstance(changes, dict):
            raise _bad(f"Resource body required: '{kind.res}'")
        allowed = UPDATABLE[kind.table]
        for key in changes:
            if key not in allowed and key not in IGNORED_ON_UPDATE:
                raise _bad(f"Cannot update read-only attribute {key}")
        changes = {k: v for k, v in changes.items() if k in allowed}
        if kind is NETWORK:
            update_network(cloud, item, changes, is_admin)
        elif kind is SUBNET:
            update_subnet(cloud, item, changes)
        elif kind is ROUTER:
            update_router(cloud, item, changes, is_admin)
        elif kind is PORT:
            update_port(cloud, item, changes, is_admin)
        elif kind is FLOATINGIP:
            update_floating_ip(cloud, item, changes, is_admin)
        else:
            for attr in ("name", "description"):
                if attr in changes:
                    if kind is SECGROUP and attr == "name" and item["_default"] and changes[attr] != "default":
                        raise _bad("Default security group cannot be renamed.")
                    item[attr] = changes[attr] or ""
            if kind is SECGROUP and changes.get("stateful") is not None:
                item["stateful"] = _bool(changes["stateful"], "stateful")
        _touch(item)
        return json_response({kind.res: render(item)})

    update_item.__name__ = f"update_{kind.table}"
    return update_item


def _delete_handler(kind: Kind) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def delete_item(request: web.Request) -> web.StreamResponse:
        cloud, c, project_id, is_admin = _caller(request)
        _require_write(c, "delete", kind)
        item = _lookup(cloud, kind, request.match_info["id"], project_id, is_admin)
        _check_owner(kind, item, project_id, is_admin, "delete")
        _delete_item(cloud, kind, item, is_admin)
        return web.Response(status=204)

    delete_item.__name__ = f"delete_{kind.table}"
    return delete_item


def _tags_handlers(kind: Kind) -> None:
    base = f"{V2}/{kind.coll}/{{id}}/tags"

    def target(request: web.Request, write: bool) -> dict[str, Any]:
        cloud, c, project_id, is_admin = _caller(request)
        if write:
            _require_write(c, "update", kind)
        item = _lookup(cloud, kind, request.match_info["id"], project_id, is_admin)
        if write:
            _check_owner(kind, item, project_id, is_admin, "update")
        return item

    async def get_tags(request: web.Request) -> web.StreamResponse:
        return json_response({"tags": target(request, False)["tags"]})

    async def replace_tags(request: web.Request) -> web.StreamResponse:
        item = target(request, True)
        body = await read_json(request, lambda s, m: neutron_error(s, m, "BadRequest"))
        tags = body.get("tags")
        if not isinstance(tags, list) or not all(isinstance(t, str) and 0 < len(t) <= 255 for t in tags):
            raise _invalid("tags must be a list of strings of 1 to 255 characters.")
        item["tags"] = list(dict.fromkeys(tags))
        _touch(item)
        return json_response({"tags": item["tags"]})

    async def clear_tags(request: web.Request) -> web.StreamResponse:
        item = target(request, True)
        item["tags"] = []
        _touch(item)
        return web.Response(status=204)

    async def check_tag(request: web.Request) -> web.StreamResponse:
        item = target(request, False)
        tag = request.match_info["tag"]
        if tag not in item["tags"]:
            raise NetError(404, "TagNotFound", f"Tag {tag} could not be found.")
        return web.Response(status=204)

    async def add_tag(request: web.Request) -> web.StreamResponse:
        item = target(request, True)
        tag = request.match_info["tag"]
        if tag not in item["tags"]:
            item["tags"].append(tag)
            _touch(item)
        return web.Response(status=201)

    async def remove_tag(request: web.Request) -> web.StreamResponse:
        item = target(request, True)
        tag = request.match_info["tag"]
        if tag not in item["tags"]:
            raise NetError(404, "TagNotFound", f"Tag {tag} could not be found.")
        item["tags"].remove(tag)
        _touch(item)
        return web.Response(status=204)

    routes.get(base)(_wrap(get_tags))
    routes.put(base)(_wrap(replace_tags))
    routes.delete(base)(_wrap(clear_tags))
    routes.get(f"{base}/{{tag}}")(_wrap(check_tag))
    routes.put(f"{base}/{{tag}}")(_wrap(add_tag))
    routes.delete(f"{base}/{{tag}}")(_wrap(remove_tag))


CREATORS.update({
    "network": create_network,
    "subnet": create_subnet,
    "router": create_router,
    "port": create_port,
    "security_group": lambda cloud, project_id, is_admin, body: create_security_group(cloud, project_id, body),
    "floating_ip": create_floating_ip,
})


def _create_rule(cloud: Cloud, project_id: str, is_admin: bool, body: dict[str, Any]) -> dict[str, Any]:
    sg_id = body.get("security_group_id")
    if not sg_id:
        raise _bad("Failed to parse request. Required attribute 'security_group_id' not specified")
    sg = cloud.table("security_group").get(sg_id)
    if sg is None or not (is_admin or sg["_project_id"] == project_id):
        raise NetError(404, "SecurityGroupNotFound", f"Security group {sg_id} does not exist")
    return add_rule(cloud, sg, body)


CREATORS["security_group_rule"] = _create_rule

for _kind in KINDS:
    routes.get(f"{V2}/{_kind.coll}")(_wrap(_list_handler(_kind)))
    routes.post(f"{V2}/{_kind.coll}")(_wrap(_create_handler(_kind)))
    routes.get(f"{V2}/{_kind.coll}/{{id}}")(_wrap(_get_handler(_kind)))
    routes.put(f"{V2}/{_kind.coll}/{{id}}")(_wrap(_update_handler(_kind)))
    routes.delete(f"{V2}/{_kind.coll}/{{id}}")(_wrap(_delete_handler(_kind)))
    _tags_handlers(_kind)


async def _router_interface(request: web.Request, add: bool) -> web.StreamResponse:
    cloud, c, project_id, is_admin = _caller(request)
    _require_write(c, "update", ROUTER)
    router = _lookup(cloud, ROUTER, request.match_info["id"], project_id, is_admin)
    body = await read_json(request, lambda s, m: neutron_error(s, m, "BadRequest"))
    if add:
        info = add_router_interface(cloud, router, body, project_id, is_admin)
    else:
        info = remove_router_interface(cloud, router, body)
    log.info("router_interface_" + ("added" if add else "removed"), router_id=router["id"],
             subnet_id=info["subnet_id"], port_id=info["port_id"])
    return json_response(info)


@routes.put(f"{V2}/routers/{{id}}/add_router_interface")
@_wrap
async def add_interface(request: web.Request) -> web.StreamResponse:
    return await _router_interface(request, True)


@routes.put(f"{V2}/routers/{{id}}/remove_router_interface")
@_wrap
async def remove_interface(request: web.Request) -> web.StreamResponse:
    return await _router_interface(request, False)


# -------------------------------------------------------------------------------------------------------- discovery


@routes.get(PREFIX, public=True)
async def versions(request: web.Request) -> web.Response:
    cloud = cloud_of(request)
    return json_response({"versions": [{"id": "v2.0", "status": "CURRENT",
                                        "links": [{"rel": "self", "href": cloud.url(f"{V2}/")}]}]})


@routes.get(V2, public=True)
async def resources(request: web.Request) -> web.Response:
    cloud = cloud_of(request)
    names = [(k.res, k.coll) for k in KINDS] + [("quota", "quotas"), ("extension", "extensions")]
    return json_response({"resources": [
        {"name": res, "collection": coll, "links": [{"rel": "self", "href": cloud.url(f"{V2}/{coll}")}]}
        for res, coll in names
    ]})


def _extension(alias: str, name: str, description: str) -> dict[str, Any]:
    return {"alias": alias, "name": name, "description": description, "updated": "2024-01-01T00:00:00-00:00",
            "links": []}


@routes.get(f"{V2}/extensions")
async def list_extensions(request: web.Request) -> web.Response:
    return json_response({"extensions": [_extension(*e) for e in EXTENSIONS]})


@routes.get(f"{V2}/extensions/{{alias}}")
@_wrap
async def get_extension(request: web.Request) -> web.Response:
    alias = request.match_info["alias"]
    for e in EXTENSIONS:
        if e[0] == alias:
            return json_response({"extension": _extension(*e)})
    raise NetError(404, "ExtensionNotFound", f"Extension with alias {alias} does not exist")


# -------------------------------------------------------------------------------------------------------- quotas


def _quota_of(cloud: Cloud, project_id: str) -> dict[str, int]:
    quota = cloud.quota(project_id, "network")
    return {key: quota.get(key, -1) for key in (*QUOTA_KEYS, *(k for k in quota if k not in QUOTA_KEYS))}


def _usage(cloud: Cloud, project_id: str, key: str) -> int:
    for kind in KINDS:
        if kind.quota == key:
            return cloud.table(kind.table).count(project_id)
    return 0


def _quota_target(request: web.Request) -> tuple[Cloud, str]:
    cloud, _c, project_id, is_admin = _caller(request)
    target = request.match_info["project_id"]
    known = cloud.identity.project_id(target)
    if not is_admin and target != project_id:
        raise NetError(403, "PolicyNotAuthorized", "rule:get_quota is disallowed by policy")
    return cloud, known or target


@routes.get(f"{V2}/quotas")
@_wrap
async def list_quotas(request: web.Request) -> web.Response:
    cloud, _c, _project_id, is_admin = _caller(request)
    if not is_admin:
        raise NetError(403, "PolicyNotAuthorized", "rule:get_quota is disallowed by policy")
    out = []
    for pid in cloud.quota_overrides:
        if "network" in cloud.quota_overrides[pid]:
            real = cloud.identity.project_id(pid) or pid
            out.append({**_quota_of(cloud, real), "project_id": real, "tenant_id": real})
    return json_response({"quotas": out})


@routes.get(f"{V2}/quotas/{{project_id}}")
@_wrap
async def show_quota(request: web.Request) -> web.Response:
    cloud, target = _quota_target(request)
    return json_response({"quota": _quota_of(cloud, target)})


@routes.get(f"{V2}/quotas/{{project_id}}/default")
@_wrap
async def show_default_quota(request: web.Request) -> web.Response:
    cloud, _target = _quota_target(request)
    defaults = dict(cloud.config.quotas.default.get("network", {}))
    return json_response({"quota": {key: defaults.get(key, -1) for key in (*QUOTA_KEYS, *defaults)}})


@routes.get(f"{V2}/quotas/{{project_id}}/details")
@_wrap
async def show_quota_details(request: web.Request) -> web.Response:
    cloud, target = _quota_target(request)
    return json_response({"quota": {key: {"limit": limit, "used": _usage(cloud, target, key), "reserved": 0}
                                    for key, limit in _quota_of(cloud, target).items()}})


@routes.put(f"{V2}/quotas/{{project_id}}")
@_wrap
async def update_quota(request: web.Request) -> web.Response:
    cloud, _c, _project_id, is_admin = _caller(request)
    if not is_admin:
        raise NetError(403, "PolicyNotAuthorized", "rule:update_quota is disallowed by policy")
    target = request.match_info["project_id"]
    target = cloud.identity.project_id(target) or target
    body = await read_json(request, lambda s, m: neutron_error(s, m, "BadRequest"))
    values = body.get("quota")
    if not isinstance(values, dict):
        raise _bad("Resource body required: 'quota'")
    clean: dict[str, int] = {}
    for key, value in values.items():
        if key in ("project_id", "tenant_id", "force", "check_limit"):
            continue
        try:
            clean[key] = int(value)
        except (TypeError, ValueError):
            raise _invalid(f"'{value}' is not an integer for quota {key}.") from None
        if clean[key] < -1:
            raise _invalid(f"'{value}' should be greater than or equal to -1 for quota {key}.")
    cloud.set_quota(target, "network", clean)
    log.info("network_quota_updated", project_id=target, **clean)
    return json_response({"quota": _quota_of(cloud, target)})


@routes.delete(f"{V2}/quotas/{{project_id}}")
@_wrap
async def reset_quota(request: web.Request) -> web.Response:
    cloud, _c, _project_id, is_admin = _caller(request)
    if not is_admin:
        raise NetError(403, "PolicyNotAuthorized", "rule:delete_quota is disallowed by policy")
    target = request.match_info["project_id"]
    target = cloud.identity.project_id(target) or target
    cloud.quota_overrides.get(target, {}).pop("network", None)
    return web.Response(status=204)
