"""Identity v3 (Keystone), the token side: discovery, password, token and application-credential auth, project-
and trust-scoped tokens, validation and OS-REVOKE events, application credentials and OS-TRUST trusts. The admin
API (domains, projects, users, groups, roles, grants) is `identity_admin.py`; the state and its rules are
`identity_state.py`. This module's `routes` table serves both."""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from deploy.devcloud import identity_admin
from deploy.devcloud.identity_admin import filtered as _filtered
from deploy.devcloud.identity_admin import links as _links
from deploy.devcloud.identity_admin import require_admin as _require_admin
from deploy.devcloud.identity_state import (
    ERR,
    PREFIX,
    ROLE_NAMES,
    V3,
    Identity,
    Token,
    parse_expiry,
    stable_id,
)
from deploy.devcloud.state import identity_of
from deploy.devcloud.web import Routes, ctx, drop_nulls, json_response, read_json

__all__ = ["ERR", "PREFIX", "ROLE_NAMES", "V3", "Identity", "Token", "identity_of", "parse_expiry", "routes",
           "stable_id"]

routes = Routes("identity")


# -------------------------------------------------------------------------------------------------------- discovery


def _version(request: web.Request) -> dict[str, Any]:
    base = identity_of(request).public_url
    return {
        "id": "v3.14",
        "status": "stable",
        "updated": "2020-04-07T00:00:00Z",
        "links": [{"rel": "self", "href": f"{base}{V3}/"}],
        "media-types": [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}],
    }


@routes.get(PREFIX, public=True)
async def versions(request: web.Request) -> web.Response:
    return json_response({"versions": {"values": [_version(request)]}}, status=300)


@routes.get(V3, public=True)
async def version(request: web.Request) -> web.Response:
    return json_response({"version": _version(request)})


# -------------------------------------------------------------------------------------------------------- tokens


@routes.route("POST", f"{V3}/auth/tokens", public=True)
async def issue_token(request: web.Request) -> web.Response:
    body = await read_json(request, ERR)
    auth = body.get("auth")
    if not isinstance(auth, dict):
        raise ERR(400, "Expecting to find auth in request body.")
    ident = identity_of(request)
    token = ident.authenticate(auth)
    nocatalog = "nocatalog" in request.query
    return json_response({"token": ident.token_body(token, with_catalog=not nocatalog)}, status=201,
                         headers={"X-Subject-Token": token.id})


def _subject(request: web.Request) -> Token:
    caller = ctx(request)
    ident = identity_of(request)
    subject_id = request.headers.get("X-Subject-Token")
    if not subject_id:
        raise ERR(400, "X-Subject-Token is required.")
    subject = ident.validate(subject_id)
    if subject is None:
        raise ERR(404, f"Could not find token: {subject_id[:12]}...")
    if subject_id != caller.token and not ({"admin", "service"} & set(caller.roles)):
        raise ERR(403, "You are not authorized to perform the requested action: identity:validate_token.")
    return subject


@routes.get(f"{V3}/auth/tokens")
async def validate_token(request: web.Request) -> web.Response:
    subject = _subject(request)
    ident = identity_of(request)
    return json_response({"token": ident.token_body(subject, with_catalog="nocatalog" not in request.query)},
                         headers={"X-Subject-Token": subject.id})


@routes.head(f"{V3}/auth/tokens")
async def check_token(request: web.Request) -> web.Response:
    _subject(request)
    return web.Response(status=200)


@routes.delete(f"{V3}/auth/tokens")
async def revoke_token(request: web.Request) -> web.Response:
    subject = _subject(request)
    identity_of(request).revoke(subject.id)
    return web.Response(status=204)


@routes.get(f"{V3}/OS-REVOKE/events")
async def revoke_events(request: web.Request) -> web.Response:
    """Keystone's revocation list (``identity:list_revoke_events``: service or admin), ``?since=<ISO 8601>``
    returns the events revoked after that instant."""
    c = ctx(request)
    if not ({"admin", "service"} & set(c.roles)):
        raise ERR(403, "You are not authorized to perform the requested action: identity:list_revoke_events.")
    since_raw = request.query.get("since")
    since: datetime | None = None
    if since_raw:
        try:
            since = datetime.fromisoformat(since_raw.replace(" ", "+"))
        except ValueError:
            raise ERR(400, f"Invalid since: {since_raw}.") from None
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
    events = [
        {k: v for k, v in e.items() if not k.startswith("_")}
        for e in identity_of(request).revoke_events
        if since is None or e["_at"] > since
    ]
    return json_response({"events": events, "links": _links(request)})


@routes.get(f"{V3}/auth/catalog")
async def auth_catalog(request: web.Request) -> web.Response:
    c = ctx(request)
    return json_response({"catalog": identity_of(request).catalog(c.project_id),
                          "links": {"self": str(request.url), "next": None, "previous": None}})


@routes.get(f"{V3}/auth/projects")
async def auth_projects(request: web.Request) -> web.Response:
    c = ctx(request)
    ident = identity_of(request)
    pids = sorted(p for p in ident.projects_of(c.user_id) if ident.projects[p]["enabled"])
    return json_response({"projects": [identity_admin.project_view(ident, ident.projects[p]) for p in pids],
                          "links": _links(request)})


# -------------------------------------------------------------------------------------------------------- app creds


def _cred_view(cred: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cred.items() if not k.startswith("_")}


@routes.post(f"{V3}/users/{{user_id}}/application_credentials")
async def create_app_cred(request: web.Request) -> web.Response:
    c = ctx(request)
    ident = identity_of(request)
    uid = request.match_info["user_id"]
    if uid != c.user_id:
        raise ERR(403, "You are not authorized to perform the requested action: identity:create_application_credential.")
    if c.trust_id:
        raise ERR(403, "Using trust-scoped token to create application credentials is not allowed.")
    spec = drop_nulls((await read_json(request, ERR)).get("application_credential") or {})
    if not spec.get("name"):
        raise ERR(400, "Invalid input for field 'name'.")
    if any(a["name"] == spec["name"] and a["user_id"] == uid for a in ident.app_creds.values()):
        raise ERR(409, "Conflict occurred attempting to store application_credential - Duplicate entry.")
    wanted = [r.get("name") or ident.roles.get(r.get("id", ""), {}).get("name") for r in spec.get("roles") or []]
    roles = [r for r in (wanted or list(c.roles)) if r in c.roles]
    secret = spec.get("secret") or secrets.token_urlsafe(64)
    expires_at = parse_expiry(spec.get("expires_at"))
    cid = uuid.uuid4().hex
    ident.app_creds[cid] = {
        "id": cid, "name": spec["name"], "description": spec.get("description"), "user_id": uid,
        "project_id": c.project_id, "roles": [{"id": ident.role_id(r), "name": r} for r in roles],
        "expires_at": spec.get("expires_at"), "unrestricted": bool(spec.get("unrestricted", False)),
        "access_rules": [], "_secret": secret, "_expires_at": expires_at,
        "links": {"self": ident.url(f"{V3}/users/{uid}/application_credentials/{cid}")},
    }
    return json_response({"application_credential": {**_cred_view(ident.app_creds[cid]), "secret": secret}},
                         status=201)


@routes.get(f"{V3}/users/{{user_id}}/application_credentials")
async def list_app_creds(request: web.Request) -> web.Response:
    c = ctx(request)
    uid = request.match_info["user_id"]
    if uid != c.user_id:
        _require_admin(c, "list_application_credentials")
    items = [_cred_view(a) for a in identity_of(request).app_creds.values() if a["user_id"] == uid]
    items = _filtered(items, request, ("name",))
    return json_response({"application_credentials": items, "links": _links(request)})


def _own_cred(request: web.Request) -> dict[str, Any]:
    c = ctx(request)
    uid = request.match_info["user_id"]
    cred = identity_of(request).app_creds.get(request.match_info["cred_id"])
    if cred is None or cred["user_id"] != uid or (uid != c.user_id and not c.is_admin):
        raise ERR(404, f"Could not find application credential: {request.match_info['cred_id']}.")
    return cred


@routes.get(f"{V3}/users/{{user_id}}/application_credentials/{{cred_id}}")
async def get_app_cred(request: web.Request) -> web.Response:
    return json_response({"application_credential": _cred_view(_own_cred(request))})


@routes.delete(f"{V3}/users/{{user_id}}/application_credentials/{{cred_id}}")
async def delete_app_cred(request: web.Request) -> web.Response:
    cred = _own_cred(request)
    ident = identity_of(request)
    del ident.app_creds[cred["id"]]
    for tid in [t.id for t in ident.tokens.values() if t.app_cred_id == cred["id"]]:
        ident.revoke(tid)
    return web.Response(status=204)


# -------------------------------------------------------------------------------------------------------- trusts

TRUSTS = f"{V3}/OS-TRUST/trusts"


def _trust_view(ident: Identity, trust: dict[str, Any]) -> dict[str, Any]:
    return {**trust, "links": {"self": ident.url(f"{TRUSTS}/{trust['id']}")}}


@routes.post(TRUSTS)
async def create_trust(request: web.Request) -> web.Response:
    c = ctx(request)
    ident = identity_of(request)
    spec = drop_nulls((await read_json(request, ERR)).get("trust") or {})
    trustor = spec.get("trustor_user_id")
    trustee = spec.get("trustee_user_id")
    if not trustor or not trustee:
        raise ERR(400, "Invalid input: trustor_user_id and trustee_user_id are required.")
    if trustor != c.user_id:
        raise ERR(403, "The authenticated user should match the trustor.")
    if c.trust_id and not spec.get("allow_redelegation"):
        raise ERR(403, "Redelegation is not allowed.")
    if trustee not in ident.users:
        raise ERR(404, f"Could not find user: {trustee}.")
    parse_expiry(spec.get("expires_at"))
    project_id = spec.get("project_id")
    if project_id and project_id not in ident.projects:
        raise ERR(404, f"Could not find project: {project_id}.")
    wanted = [r.get("name") or ident.roles.get(r.get("id", ""), {}).get("name") for r in spec.get("roles") or []]
    have = set(ident.role_names(trustor, project_id)) if project_id else set()
    missing = [r for r in wanted if r not in have]
    if missing:
        raise ERR(403, f"At least one role should be specified: the trustor lacks {missing}.")
    if project_id and not wanted:
        raise ERR(400, "At least one role should be specified.")
    tid = uuid.uuid4().hex
    trust = {
        "id": tid, "trustor_user_id": trustor, "trustee_user_id": trustee, "project_id": project_id,
        "impersonation": bool(spec.get("impersonation", False)), "expires_at": spec.get("expires_at"),
        "remaining_uses": spec.get("remaining_uses"), "allow_redelegation": bool(spec.get("allow_redelegation")),
        "redelegation_count": 0, "roles": [{"id": ident.role_id(str(r)), "name": r} for r in wanted],
        "roles_links": {"self": None, "next": None, "previous": None}, "deleted_at": None,
    }
    ident.trusts[tid] = trust
    return json_response({"trust": _trust_view(ident, trust)}, status=201)


@routes.get(TRUSTS)
async def list_trusts(request: web.Request) -> web.Response:
    c = ctx(request)
    ident = identity_of(request)
    items = [
        t for t in ident.trusts.values()
        if c.is_admin or c.user_id in (t["trustor_user_id"], t["trustee_user_id"])
    ]
    items = _filtered(items, request, ("trustor_user_id", "trustee_user_id"))
    return json_response({"trusts": [_trust_view(ident, t) for t in items], "links": _links(request)})


def _visible_trust(request: web.Request) -> dict[str, Any]:
    c = ctx(request)
    trust = identity_of(request).trusts.get(request.match_info["trust_id"])
    if trust is None or not (c.is_admin or c.user_id in (trust["trustor_user_id"], trust["trustee_user_id"])):
        raise ERR(404, f"Could not find trust: {request.match_info['trust_id']}.")
    return trust


@routes.get(f"{TRUSTS}/{{trust_id}}")
async def get_trust(request: web.Request) -> web.Response:
    return json_response({"trust": _trust_view(identity_of(request), _visible_trust(request))})


@routes.get(f"{TRUSTS}/{{trust_id}}/roles")
async def trust_roles(request: web.Request) -> web.Response:
    return json_response({"roles": _visible_trust(request)["roles"], "links": _links(request)})


@routes.delete(f"{TRUSTS}/{{trust_id}}")
async def delete_trust(request: web.Request) -> web.Response:
    c = ctx(request)
    trust = _visible_trust(request)
    if c.user_id != trust["trustor_user_id"] and not c.is_admin:
        raise ERR(403, "Only the trustor may delete a trust.")
    ident = identity_of(request)
    del ident.trusts[trust["id"]]
    for tid in [t.id for t in ident.tokens.values() if t.trust_id == trust["id"]]:
        ident.revoke(tid)
    return web.Response(status=204)


# The admin API's routes are served under the same table (one "identity" service for the middleware).
routes.routes.extend(identity_admin.routes.routes)
