"""Identity v3 (Keystone), the admin API: domains, projects, users (with passwords), groups and their members, roles,
role grants of users and groups on projects, and `/v3/role_assignments`.

Keystone's default policy, simplified to the devcloud's roles: every write needs the admin role (403
"You are not authorized to perform the requested action: identity:<action>." otherwise); a user may read itself,
its own groups, projects and role assignments; listing users, groups and grants is for admins. The side effects of
a change (what it deletes with it, which tokens it ends and the OS-REVOKE event that says so) are the model's, in
`identity_state.py`; these handlers check the policy, parse, call one method and serialise."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from deploy.devcloud.identity_state import ERR, V3, Identity
from deploy.devcloud.state import identity_of
from deploy.devcloud.web import Ctx, Routes, ctx, drop_nulls, json_response, qbool, read_json

routes = Routes("identity")


# -------------------------------------------------------------------------------------------------------- helpers


def links(request: web.Request) -> dict[str, Any]:
    return {"self": str(request.url), "next": None, "previous": None}


def require_admin(c: Ctx, action: str) -> None:
    if not c.is_admin:
        raise ERR(403, f"You are not authorized to perform the requested action: identity:{action}.")


def filtered(items: list[dict[str, Any]], request: web.Request, keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """Keystone's exact-match list filters; `enabled` is read as a boolean."""
    for key in keys:
        value = request.query.get(key)
        if value is None or value == "None":
            continue
        if key == "enabled":
            want = qbool(value)
            items = [i for i in items if bool(i.get(key)) == want]
        else:
            items = [i for i in items if str(i.get(key)) == value]
    return items


async def _body(request: web.Request, key: str) -> dict[str, Any]:
    spec = (await read_json(request, ERR)).get(key)
    if not isinstance(spec, dict):
        raise ERR(400, f"Expecting to find {key} in request body.")
    return drop_nulls(spec)


def _view(ident: Identity, path: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {**obj, "links": {"self": ident.url(f"{V3}/{path}/{obj['id']}")}}


def project_view(ident: Identity, project: dict[str, Any]) -> dict[str, Any]:
    return _view(ident, "projects", project)


def _no_content() -> web.Response:
    return web.Response(status=204)


def _m(request: web.Request, name: str) -> str:
    return request.match_info[name]


# -------------------------------------------------------------------------------------------------------- domains


@routes.get(f"{V3}/domains")
async def list_domains(request: web.Request) -> web.Response:
    ident = identity_of(request)
    items = filtered(list(ident.domains.values()), request, ("name", "enabled"))
    return json_response({"domains": [_view(ident, "domains", d) for d in items], "links": links(request)})


@routes.post(f"{V3}/domains")
async def create_domain(request: web.Request) -> web.Response:
    require_admin(ctx(request), "create_domain")
    ident = identity_of(request)
    domain = ident.create_domain(await _body(request, "domain"))
    return json_response({"domain": _view(ident, "domains", domain)}, status=201)


@routes.get(f"{V3}/domains/{{domain_id}}")
async def get_domain(request: web.Request) -> web.Response:
    ident = identity_of(request)
    return json_response({"domain": _view(ident, "domains", ident.domain(_m(request, "domain_id")))})


@routes.patch(f"{V3}/domains/{{domain_id}}")
async def update_domain(request: web.Request) -> web.Response:
    require_admin(ctx(request), "update_domain")
    ident = identity_of(request)
    domain = ident.update_domain(_m(request, "domain_id"), await _body(request, "domain"))
    return json_response({"domain": _view(ident, "domains", domain)})


@routes.delete(f"{V3}/domains/{{domain_id}}")
async def delete_domain(request: web.Request) -> web.Response:
    require_admin(ctx(request), "delete_domain")
    identity_of(request).delete_domain(_m(request, "domain_id"))
    return _no_content()


# -------------------------------------------------------------------------------------------------------- projects


@routes.get(f"{V3}/projects")
async def list_projects(request: web.Request) -> web.Response:
    c = ctx(request)
    ident = identity_of(request)
    items = list(ident.projects.values())
    if not c.is_admin:
        mine = ident.projects_of(c.user_id)
        items = [p for p in items if p["id"] in mine]
    items = filtered(items, request, ("name", "domain_id", "enabled", "parent_id"))
    return json_response({"projects": [project_view(ident, p) for p in items], "links": links(request)})


@routes.get(f"{V3}/projects/{{project_id}}")
async def get_project(request: web.Request) -> web.Response:
    c = ctx(request)
    ident = identity_of(request)
    pid = _m(request, "project_id")
    project = ident.projects.get(pid)
    if project is None or (not c.is_admin and pid != c.project_id):
        raise ERR(404, f"Could not find project: {pid}.")
    return json_response({"project": project_view(ident, project)})


@routes.post(f"{V3}/projects")
async def create_project(request: web.Request) -> web.Response:
    require_admin(ctx(request), "create_project")
    ident = identity_of(request)
    project = ident.create_project(await _body(request, "project"))
    return json_response({"project": project_view(ident, project)}, status=201)


@routes.patch(f"{V3}/projects/{{project_id}}")
async def update_project(request: web.Request) -> web.Response:
    require_admin(ctx(request), "update_project")
    ident = identity_of(request)
    project = ident.update_project(_m(request, "project_id"), await _body(request, "project"))
    return json_response({"project": project_view(ident, project)})


@routes.delete(f"{V3}/projects/{{project_id}}")
async def delete_project(request: web.Request) -> web.Response:
    require_admin(ctx(request), "delete_project")
    identity_of(request).delete_project(_m(request, "project_id"))
    return _no_content()


# -------------------------------------------------------------------------------------------------------- users


@routes.get(f"{V3}/users")
async def list_users(request: web.Request) -> web.Response:
    require_admin(ctx(request), "list_users")
    ident = identity_of(request)
    items = filtered(list(ident.users.values()), request, ("name", "domain_id", "enabled"))
    return json_response({"users": [_view(ident, "users", u) for u in items], "links": links(request)})


@routes.post(f"{V3}/users")
async def create_user(request: web.Request) -> web.Response:
    require_admin(ctx(request), "create_user")
    ident = identity_of(request)
    user = ident.create_user(await _body(request, "user"))
    return json_response({"user": _view(ident, "users", user)}, status=201)


def _self_or_admin(request: web.Request, action: str) -> str:
    c = ctx(request)
    uid = _m(request, "user_id")
    if uid != c.user_id:
        require_admin(c, action)
    return uid


@routes.get(f"{V3}/users/{{user_id}}")
async def get_user(request: web.Request) -> web.Response:
    uid = _self_or_admin(request, "get_user")
    ident = identity_of(request)
    return json_response({"user": _view(ident, "users", ident.user(uid))})


@routes.patch(f"{V3}/users/{{user_id}}")
async def update_user(request: web.Request) -> web.Response:
    require_admin(ctx(request), "update_user")
    ident = identity_of(request)
    user = ident.update_user(_m(request, "user_id"), await _body(request, "user"))
    return json_response({"user": _view(ident, "users", user)})


@routes.delete(f"{V3}/users/{{user_id}}")
async def delete_user(request: web.Request) -> web.Response:
    require_admin(ctx(request), "delete_user")
    identity_of(request).delete_user(_m(request, "user_id"))
    return _no_content()


@routes.post(f"{V3}/users/{{user_id}}/password")
async def change_password(request: web.Request) -> web.Response:
    """Self-service (`openstack user password set`): the original password proves it; the user's tokens end."""
    c = ctx(request)
    uid = _m(request, "user_id")
    if uid != c.user_id:
        raise ERR(403, "You are not authorized to perform the requested action: identity:change_password.")
    spec = await _body(request, "user")
    identity_of(request).change_password(uid, spec.get("original_password"), spec.get("password"))
    return _no_content()


@routes.get(f"{V3}/users/{{user_id}}/projects")
async def user_projects(request: web.Request) -> web.Response:
    uid = _self_or_admin(request, "list_user_projects")
    ident = identity_of(request)
    pids = sorted(ident.projects_of(uid))
    return json_response({"projects": [project_view(ident, ident.projects[p]) for p in pids],
                          "links": links(request)})


@routes.get(f"{V3}/users/{{user_id}}/groups")
async def user_groups(request: web.Request) -> web.Response:
    uid = _self_or_admin(request, "list_groups_for_user")
    ident = identity_of(request)
    ident.user(uid)
    items = [ident.groups[g] for g in sorted(ident.groups_of(uid))]
    return json_response({"groups": [_view(ident, "groups", g) for g in filtered(items, request, ("name",))],
                          "links": links(request)})


# -------------------------------------------------------------------------------------------------------- groups


@routes.get(f"{V3}/groups")
async def list_groups(request: web.Request) -> web.Response:
    require_admin(ctx(request), "list_groups")
    ident = identity_of(request)
    items = filtered(list(ident.groups.values()), request, ("name", "domain_id"))
    return json_response({"groups": [_view(ident, "groups", g) for g in items], "links": links(request)})


@routes.post(f"{V3}/groups")
async def create_group(request: web.Request) -> web.Response:
    require_admin(ctx(request), "create_group")
    ident = identity_of(request)
    group = ident.create_group(await _body(request, "group"))
    return json_response({"group": _view(ident, "groups", group)}, status=201)


@routes.get(f"{V3}/groups/{{group_id}}")
async def get_group(request: web.Request) -> web.Response:
    c = ctx(request)
    ident = identity_of(request)
    gid = _m(request, "group_id")
    if not c.is_admin and gid not in ident.groups_of(c.user_id):
        require_admin(c, "get_group")
    return json_response({"group": _view(ident, "groups", ident.group(gid))})


@routes.patch(f"{V3}/groups/{{group_id}}")
async def update_group(request: web.Request) -> web.Response:
    require_admin(ctx(request), "update_group")
    ident = identity_of(request)
    group = ident.update_group(_m(request, "group_id"), await _body(request, "group"))
    return json_response({"group": _view(ident, "groups", group)})


@routes.delete(f"{V3}/groups/{{group_id}}")
async def delete_group(request: web.Request) -> web.Response:
    require_admin(ctx(request), "delete_group")
    identity_of(request).delete_group(_m(request, "group_id"))
    return _no_content()


@routes.get(f"{V3}/groups/{{group_id}}/users")
async def group_users(request: web.Request) -> web.Response:
    require_admin(ctx(request), "list_users_in_group")
    ident = identity_of(request)
    gid = _m(request, "group_id")
    ident.group(gid)
    items = [ident.users[u] for u in sorted(ident.members_of(gid))]
    return json_response({"users": [_view(ident, "users", u) for u in filtered(items, request, ("name",))],
                          "links": links(request)})


@routes.put(f"{V3}/groups/{{group_id}}/users/{{user_id}}")
async def add_user_to_group(request: web.Request) -> web.Response:
    require_admin(ctx(request), "add_user_to_group")
    identity_of(request).add_member(_m(request, "group_id"), _m(request, "user_id"))
    return _no_content()


@routes.head(f"{V3}/groups/{{group_id}}/users/{{user_id}}")
async def check_user_in_group(request: web.Request) -> web.Response:
    require_admin(ctx(request), "check_user_in_group")
    gid, uid = _m(request, "group_id"), _m(request, "user_id")
    if not identity_of(request).is_member(gid, uid):
        raise ERR(404, f"Could not find user: {uid} in group {gid}.")
    return _no_content()


@routes.delete(f"{V3}/groups/{{group_id}}/users/{{user_id}}")
async def remove_user_from_group(request: web.Request) -> web.Response:
    require_admin(ctx(request), "remove_user_from_group")
    identity_of(request).remove_member(_m(request, "group_id"), _m(request, "user_id"))
    return _no_content()


# -------------------------------------------------------------------------------------------------------- roles


@routes.get(f"{V3}/roles")
async def list_roles(request: web.Request) -> web.Response:
    ident = identity_of(request)
    items = filtered(list(ident.roles.values()), request, ("name",))
    return json_response({"roles": [_view(ident, "roles", r) for r in items], "links": links(request)})


@routes.post(f"{V3}/roles")
async def create_role(request: web.Request) -> web.Response:
    require_admin(ctx(request), "create_role")
    ident = identity_of(request)
    role = ident.create_role(await _body(request, "role"))
    return json_response({"role": _view(ident, "roles", role)}, status=201)


@routes.get(f"{V3}/roles/{{role_id}}")
async def get_role(request: web.Request) -> web.Response:
    ident = identity_of(request)
    return json_response({"role": _view(ident, "roles", ident.role(_m(request, "role_id")))})


@routes.patch(f"{V3}/roles/{{role_id}}")
async def update_role(request: web.Request) -> web.Response:
    require_admin(ctx(request), "update_role")
    ident = identity_of(request)
    role = ident.update_role(_m(request, "role_id"), await _body(request, "role"))
    return json_response({"role": _view(ident, "roles", role)})


@routes.delete(f"{V3}/roles/{{role_id}}")
async def delete_role(request: web.Request) -> web.Response:
    require_admin(ctx(request), "delete_role")
    identity_of(request).delete_role(_m(request, "role_id"))
    return _no_content()


# -------------------------------------------------------------------------------------------------------- grants


def _grant_args(request: web.Request, actor: str) -> tuple[str, str, str, str]:
    return actor, _m(request, f"{actor}_id"), _m(request, "project_id"), _m(request, "role_id")


def _grant_routes(actor: str) -> None:
    """PUT/HEAD/DELETE /v3/projects/{p}/{users|groups}/{id}/roles/{r} and GET .../roles, for users and groups."""
    base = f"{V3}/projects/{{project_id}}/{actor}s/{{{actor}_id}}/roles"

    async def grant(request: web.Request) -> web.Response:
        require_admin(ctx(request), "create_grant")
        identity_of(request).grant(*_grant_args(request, actor))
        return _no_content()

    async def check(request: web.Request) -> web.Response:
        require_admin(ctx(request), "check_grant")
        args = _grant_args(request, actor)
        if not identity_of(request).has_grant(*args):
            raise ERR(404, f"Could not find role assignment with role: {args[3]}, user or group: {args[1]}, "
                           f"project, domain, or system: {args[2]}.")
        return _no_content()

    async def revoke(request: web.Request) -> web.Response:
        require_admin(ctx(request), "revoke_grant")
        identity_of(request).revoke_grant(*_grant_args(request, actor))
        return _no_content()

    async def list_grants(request: web.Request) -> web.Response:
        require_admin(ctx(request), "list_grants")
        ident = identity_of(request)
        roles = ident.granted_roles(actor, _m(request, f"{actor}_id"), _m(request, "project_id"))
        return json_response({"roles": [_view(ident, "roles", r) for r in roles], "links": links(request)})

    routes.put(f"{base}/{{role_id}}")(grant)
    routes.head(f"{base}/{{role_id}}")(check)
    routes.delete(f"{base}/{{role_id}}")(revoke)
    routes.get(base)(list_grants)


_grant_routes("user")
_grant_routes("group")


def _named(ident: Identity, kind: str, obj_id: str) -> dict[str, Any]:
    """An assignment's reference with names (`include_names`), domains included as Keystone prints them."""
    table = {"user": ident.users, "group": ident.groups, "project": ident.projects, "role": ident.roles}[kind]
    obj = table.get(obj_id) or {}
    ref: dict[str, Any] = {"id": obj_id, "name": obj.get("name")}
    domain_id = obj.get("domain_id")
    if kind != "role" and domain_id in ident.domains:
        ref["domain"] = {"id": domain_id, "name": ident.domains[domain_id]["name"]}
    return ref


@routes.get(f"{V3}/role_assignments")
async def list_role_assignments(request: web.Request) -> web.Response:
    """Filters `user.id`, `group.id`, `role.id`, `scope.project.id`; `effective` expands group grants into
    their members' (with a `membership` link, as Keystone); `include_names` adds names. Every grant is on a
    project: a `scope.domain.id` or `scope.system` filter matches nothing."""
    c = ctx(request)
    ident = identity_of(request)
    q = {k: v for k, v in request.query.items() if v not in ("", "None")}
    want_user, want_group = q.get("user.id"), q.get("group.id")
    want_role, want_project = q.get("role.id"), q.get("scope.project.id")
    if not c.is_admin and want_user != c.user_id:
        require_admin(c, "list_role_assignments")
    effective = "effective" in q and qbool(q["effective"], True) is not False
    names = "include_names" in q and qbool(q["include_names"], True) is not False
    if "scope.domain.id" in q or "scope.system" in q:
        return json_response({"role_assignments": [], "links": links(request)})

    def ref(kind: str, obj_id: str) -> dict[str, Any]:
        return _named(ident, kind, obj_id) if names else {"id": obj_id}

    out: list[dict[str, Any]] = []
    for uid, pid, rid in sorted(ident.assignments):
        if (want_user and uid != want_user) or want_group:
            continue
        if (want_project and pid != want_project) or (want_role and rid != want_role):
            continue
        out.append({"user": ref("user", uid), "scope": {"project": ref("project", pid)}, "role": ref("role", rid),
                    "links": {"assignment": ident.url(f"{V3}/projects/{pid}/users/{uid}/roles/{rid}")}})
    for gid, pid, rid in sorted(ident.group_assignments):
        if (want_group and gid != want_group) or (want_project and pid != want_project):
            continue
        if want_role and rid != want_role:
            continue
        assignment = ident.url(f"{V3}/projects/{pid}/groups/{gid}/roles/{rid}")
        if not effective:
            if not want_user:
                out.append({"group": ref("group", gid), "scope": {"project": ref("project", pid)},
                            "role": ref("role", rid), "links": {"assignment": assignment}})
            continue
        for uid in sorted(ident.members_of(gid)):
            if want_user and uid != want_user:
                continue
            out.append({"user": ref("user", uid), "scope": {"project": ref("project", pid)}, "role": ref("role", rid),
                        "links": {"assignment": assignment,
                                  "membership": ident.url(f"{V3}/groups/{gid}/users/{uid}")}})
    return json_response({"role_assignments": out, "links": links(request)})
