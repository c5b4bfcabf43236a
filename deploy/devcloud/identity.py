"""Identity v3 (Keystone): password, token and application-credential auth, project- and trust-scoped tokens,
the per-token catalog, projects, users, roles, role assignments, application credentials and OS-TRUST trusts."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from aiohttp import web

from deploy.devcloud.clock import iso, now
from deploy.devcloud.web import Ctx, Routes, ctx, drop_nulls, json_response, keystone_error, read_json

if TYPE_CHECKING:
    from deploy.devcloud.state import Cloud

routes = Routes("identity")
PREFIX = "/identity"
V3 = f"{PREFIX}/v3"
ROLE_NAMES = ("admin", "member", "reader", "service")
ERR = keystone_error


def parse_expiry(value: Any) -> datetime | None:
    """A request's ``expires_at`` (application credentials, trusts): ISO 8601, read as UTC when it names no zone
    (as Keystone reads it); None when absent; a 400 otherwise."""
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        at = None
    if at is None:
        raise ERR(400, f"Invalid input for field 'expires_at': {value!r} is not an ISO 8601 timestamp.")
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def stable_id(*parts: str) -> str:
    """Seeded objects get ids that stay the same across restarts, so a clouds.yaml or a test can rely on them."""
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:32]


@dataclass
class Token:
    id: str
    user_id: str
    project_id: str | None
    roles: tuple[str, ...]
    methods: list[str]
    issued_at: datetime
    expires_at: datetime
    audit_id: str
    trust_id: str | None = None
    app_cred_id: str | None = None


@dataclass
class Identity:
    cloud: Cloud
    domains: dict[str, dict[str, Any]] = field(default_factory=dict)
    projects: dict[str, dict[str, Any]] = field(default_factory=dict)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    passwords: dict[str, str] = field(default_factory=dict)
    roles: dict[str, dict[str, Any]] = field(default_factory=dict)
    assignments: set[tuple[str, str, str]] = field(default_factory=set)  # (user_id, project_id, role_id)
    tokens: dict[str, Token] = field(default_factory=dict)
    trusts: dict[str, dict[str, Any]] = field(default_factory=dict)
    app_creds: dict[str, dict[str, Any]] = field(default_factory=dict)
    revoke_events: list[dict[str, Any]] = field(default_factory=list)
    """OS-REVOKE events (one per revoked token, by audit id), oldest first; swept after a token lifetime."""

    def __post_init__(self) -> None:
        config = self.cloud.config
        for d in config.domains:
            self.domains[d.id] = {"id": d.id, "name": d.name, "enabled": True, "description": ""}
        for name in ROLE_NAMES:
            rid = stable_id("role", name)
            self.roles[rid] = {"id": rid, "name": name, "domain_id": None}
        for p in config.projects:
            pid = p.id or stable_id("project", p.domain, p.name)
            self.projects[pid] = {
                "id": pid, "name": p.name, "domain_id": p.domain, "enabled": True, "description": "",
                "is_domain": False, "parent_id": p.domain, "tags": [],
            }
        for u in config.users:
            uid = u.id or stable_id("user", u.domain, u.name)
            self.users[uid] = {
                "id": uid, "name": u.name, "domain_id": u.domain, "enabled": True,
                "password_expires_at": None, "default_project_id": None,
            }
            self.passwords[uid] = u.password
            for project_name, role_names in u.roles.items():
                member_of = self.project_id(project_name)
                if member_of is None:
                    raise ValueError(f"user {u.name}: unknown project {project_name}")
                for role in role_names:
                    self.assignments.add((uid, member_of, self.role_id(role)))

    # ---------------------------------------------------------------------------------------------------- lookups
    def role_id(self, name: str) -> str:
        for rid, role in self.roles.items():
            if role["name"] == name:
                return rid
        raise KeyError(name)

    def project_id(self, name_or_id: str, domain: str | None = None) -> str | None:
        if name_or_id in self.projects:
            return name_or_id
        for pid, p in self.projects.items():
            if p["name"] == name_or_id and (domain is None or p["domain_id"] == domain):
                return pid
        return None

    def project_name(self, project_id: str) -> str | None:
        p = self.projects.get(project_id)
        return p["name"] if p else None

    def user_id(self, name_or_id: str, domain: str | None = None) -> str | None:
        if name_or_id in self.users:
            return name_or_id
        for uid, u in self.users.items():
            if u["name"] == name_or_id and (domain is None or u["domain_id"] == domain):
                return uid
        return None

    def domain_id(self, ref: dict[str, Any] | None) -> str | None:
        if not ref:
            return None
        if "id" in ref:
            return ref["id"] if ref["id"] in self.domains else "__unknown__"
        for did, d in self.domains.items():
            if d["name"] == ref.get("name"):
                return did
        return "__unknown__"

    def role_names(self, user_id: str, project_id: str) -> tuple[str, ...]:
        return tuple(
            sorted(self.roles[rid]["name"] for uid, pid, rid in self.assignments if uid == user_id and pid == project_id)
        )

    # ---------------------------------------------------------------------------------------------------- tokens
    def issue(
        self,
        user_id: str,
        project_id: str | None,
        roles: tuple[str, ...],
        methods: list[str],
        *,
        trust_id: str | None = None,
        app_cred_id: str | None = None,
        audit_id: str | None = None,
        expires_at: datetime | None = None,
    ) -> Token:
        issued = now()
        lifetime = timedelta(seconds=self.cloud.config.timing.token_lifetime_seconds)
        expires = min(expires_at, issued + lifetime) if expires_at else issued + lifetime
        cred_expiry = self.app_creds[app_cred_id].get("_expires_at") if app_cred_id else None
        if cred_expiry is not None and cred_expiry < expires:
            expires = cred_expiry  # Keystone: a token never outlives the application credential it came from
        token = Token(
            id="gAAAAA" + secrets.token_urlsafe(48),
            user_id=user_id,
            project_id=project_id,
            roles=roles,
            methods=methods,
            issued_at=issued,
            expires_at=expires,
            audit_id=audit_id or secrets.token_urlsafe(16)[:22],
            trust_id=trust_id,
            app_cred_id=app_cred_id,
        )
        self.tokens[token.id] = token
        return token

    def validate(self, token_id: str | None) -> Token | None:
        if not token_id:
            return None
        token = self.tokens.get(token_id)
        if token is None:
            return None
        if token.expires_at <= now():
            self.tokens.pop(token_id, None)
            return None
        if token.trust_id and token.trust_id not in self.trusts:
            return None
        if token.app_cred_id and token.app_cred_id not in self.app_creds:
            return None
        return token

    def revoke(self, token_id: str) -> bool:
        token = self.tokens.pop(token_id, None)
        if token is None:
            return False
        at = now()
        self.revoke_events.append({"audit_id": token.audit_id, "issued_before": iso(at), "revoked_at": iso(at),
                                   "_at": at})
        return True

    def context(self, token: Token) -> Ctx:
        user = self.users[token.user_id]
        return Ctx(
            token=token.id,
            user_id=token.user_id,
            user_name=user["name"],
            project_id=token.project_id,
            project_name=self.project_name(token.project_id) if token.project_id else None,
            roles=token.roles,
            trust_id=token.trust_id,
        )

    def sweep(self) -> None:
        """Forget expired tokens: memory stays bounded however many tokens clients ask for."""
        t = now()
        for tid in [tid for tid, tok in self.tokens.items() if tok.expires_at <= t]:
            del self.tokens[tid]
        keep = t - timedelta(seconds=self.cloud.config.timing.token_lifetime_seconds)
        while self.revoke_events and self.revoke_events[0]["_at"] <= keep:
            self.revoke_events.pop(0)

    # ---------------------------------------------------------------------------------------------------- shapes
    def catalog(self, project_id: str | None) -> list[dict[str, Any]]:
        base = self.cloud.public_url
        region = self.cloud.config.region
        pid = project_id or ""
        services = [
            ("identity", "keystone", f"{base}{PREFIX}"),
            ("compute", "nova", f"{base}/compute/v2.1"),
            ("image", "glance", f"{base}/image"),
            ("network", "neutron", f"{base}/networking"),
            ("load-balancer", "octavia", f"{base}/load-balancer"),
            ("block-storage", "cinder", f"{base}/volume/v3/{pid}"),
            ("volumev3", "cinderv3", f"{base}/volume/v3/{pid}"),
        ]
        if self.cloud.magnum_url:
            services.append(("container-infra", "magnum", self.cloud.magnum_url))
        out = []
        for type_, name, url in services:
            sid = stable_id("service", type_)
            out.append(
                {
                    "type": type_,
                    "name": name,
                    "id": sid,
                    "endpoints": [
                        {"id": stable_id("endpoint", type_, iface), "interface": iface, "region": region,
                         "region_id": region, "url": url}
                        for iface in ("public", "internal", "admin")
                    ],
                }
            )
        return out

    def token_body(self, token: Token, *, with_catalog: bool = True) -> dict[str, Any]:
        user = self.users[token.user_id]
        domain = self.domains[user["domain_id"]]
        body: dict[str, Any] = {
            "methods": token.methods,
            "expires_at": iso(token.expires_at),
            "issued_at": iso(token.issued_at),
            "audit_ids": [token.audit_id],
            "user": {"id": user["id"], "name": user["name"], "password_expires_at": None,
                     "domain": {"id": domain["id"], "name": domain["name"]}},
            "is_domain": False,
        }
        if token.project_id:
            project = self.projects[token.project_id]
            pdomain = self.domains[project["domain_id"]]
            body["project"] = {"id": project["id"], "name": project["name"],
                               "domain": {"id": pdomain["id"], "name": pdomain["name"]}}
            body["roles"] = [{"id": self.role_id(r), "name": r} for r in token.roles]
            if with_catalog:
                body["catalog"] = self.catalog(token.project_id)
        if token.trust_id:
            trust = self.trusts[token.trust_id]
            body["OS-TRUST:trust"] = {
                "id": trust["id"], "impersonation": trust["impersonation"],
                "trustor_user": {"id": trust["trustor_user_id"]}, "trustee_user": {"id": trust["trustee_user_id"]},
            }
        if token.app_cred_id:
            cred = self.app_creds[token.app_cred_id]
            body["application_credential"] = {"id": cred["id"], "name": cred["name"], "restricted": True}
        return body

    # ---------------------------------------------------------------------------------------------------- auth
    def authenticate(self, auth: dict[str, Any]) -> Token:
        identity = auth.get("identity") or {}
        methods = identity.get("methods") or []
        scope = auth.get("scope")
        user_id: str | None = None
        roles_cap: tuple[str, ...] | None = None
        project_id: str | None = None
        app_cred_id: str | None = None
        audit_id: str | None = None
        expires_at: datetime | None = None

        if "password" in methods:
            user = (identity.get("password") or {}).get("user") or {}
            did = self.domain_id(user.get("domain")) if "name" in user else None
            user_id = self.user_id(user["id"]) if "id" in user else self.user_id(user.get("name", ""), did)
            if user_id is None or self.passwords.get(user_id) != user.get("password"):
                raise ERR(401, "The request you have made requires authentication.")
        elif "token" in methods:
            old = self.validate((identity.get("token") or {}).get("id"))
            if old is None:
                raise ERR(401, "The request you have made requires authentication.")
            if old.trust_id or old.app_cred_id:
                raise ERR(403, "You are not authorized to perform the requested action: rescoping a delegated token.")
            user_id, audit_id, expires_at = old.user_id, old.audit_id, old.expires_at
        elif "application_credential" in methods:
            spec = identity.get("application_credential") or {}
            cred = self._find_app_cred(spec)
            if cred is None or cred["_secret"] != spec.get("secret"):
                raise ERR(401, "The request you have made requires authentication.")
            if cred.get("_expires_at") is not None and cred["_expires_at"] <= now():
                raise ERR(401, "The request you have made requires authentication.")  # expired credential
            user_id, app_cred_id = cred["user_id"], cred["id"]
            project_id, roles_cap = cred["project_id"], tuple(r["name"] for r in cred["roles"])
            if scope:
                raise ERR(401, "Application credentials cannot request a scope.")
        else:
            raise ERR(401, "The request you have made requires authentication.")

        if scope and "OS-TRUST:trust" in scope:
            trust = self.trusts.get((scope["OS-TRUST:trust"] or {}).get("id", ""))
            if trust is None or trust["trustee_user_id"] != user_id:
                raise ERR(401, "The request you have made requires authentication.")
            expiry = parse_expiry(trust["expires_at"])
            if expiry is not None and expiry <= now():
                raise ERR(401, "The request you have made requires authentication.")
            trustor_roles = set(self.role_names(trust["trustor_user_id"], trust["project_id"]))
            roles = tuple(sorted(r["name"] for r in trust["roles"] if r["name"] in trustor_roles))
            if not roles:
                raise ERR(401, "The trustor no longer has the delegated roles.")
            token_user = trust["trustor_user_id"] if trust["impersonation"] else user_id
            return self.issue(token_user, trust["project_id"], roles, methods, trust_id=trust["id"],
                              audit_id=audit_id, expires_at=expires_at)
        if scope and "project" in scope:
            ref = scope["project"]
            did = self.domain_id(ref.get("domain")) if "name" in ref else None
            project_id = self.project_id(ref["id"]) if "id" in ref else self.project_id(ref.get("name", ""), did)
            if project_id is None:
                raise ERR(401, "The request you have made requires authentication.")
        elif scope and ("domain" in scope or "system" in scope):
            project_id = None
        assert user_id is not None
        if project_id is None:
            return self.issue(user_id, None, (), methods, audit_id=audit_id, expires_at=expires_at)
        roles = self.role_names(user_id, project_id)
        if roles_cap is not None:
            roles = tuple(r for r in roles if r in roles_cap)
        if not roles:
            raise ERR(401, "The request you have made requires authentication.")
        return self.issue(user_id, project_id, roles, methods, app_cred_id=app_cred_id, audit_id=audit_id,
                          expires_at=expires_at)

    def _find_app_cred(self, spec: dict[str, Any]) -> dict[str, Any] | None:
        if "id" in spec:
            return self.app_creds.get(spec["id"])
        user = spec.get("user") or {}
        did = self.domain_id(user.get("domain")) if "name" in user else None
        uid = self.user_id(user["id"]) if "id" in user else self.user_id(user.get("name", ""), did)
        for cred in self.app_creds.values():
            if cred["name"] == spec.get("name") and cred["user_id"] == uid:
                return cred
        return None


def identity_of(request: web.Request) -> Identity:
    from deploy.devcloud.state import CLOUD

    return request.app[CLOUD].identity


# -------------------------------------------------------------------------------------------------------- discovery


def _version(request: web.Request) -> dict[str, Any]:
    base = identity_of(request).cloud.public_url
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
    pids = {pid for uid, pid, _ in ident.assignments if uid == c.user_id}
    return json_response({"projects": [ident.projects[p] for p in sorted(pids)],
                          "links": {"self": str(request.url), "next": None, "previous": None}})


# -------------------------------------------------------------------------------------------------------- resources


def _links(request: web.Request) -> dict[str, Any]:
    return {"self": str(request.url), "next": None, "previous": None}


def _require_admin(c: Ctx, action: str) -> None:
    if not c.is_admin:
        raise ERR(403, f"You are not authorized to perform the requested action: identity:{action}.")


def _filtered(items: list[dict[str, Any]], request: web.Request, keys: tuple[str, ...]) -> list[dict[str, Any]]:
    for key in keys:
        value = request.query.get(key)
        if value is not None:
            items = [i for i in items if str(i.get(key)) == value]
    return items


@routes.get(f"{V3}/domains")
async def list_domains(request: web.Request) -> web.Response:
    items = _filtered(list(identity_of(request).domains.values()), request, ("name", "enabled"))
    return json_response({"domains": items, "links": _links(request)})


@routes.get(f"{V3}/domains/{{domain_id}}")
async def get_domain(request: web.Request) -> web.Response:
    d = identity_of(request).domains.get(request.match_info["domain_id"])
    if d is None:
        raise ERR(404, f"Could not find domain: {request.match_info['domain_id']}.")
    return json_response({"domain": d})


@routes.get(f"{V3}/projects")
async def list_projects(request: web.Request) -> web.Response:
    c = ctx(request)
    ident = identity_of(request)
    items = list(ident.projects.values())
    if not c.is_admin:
        mine = {pid for uid, pid, _ in ident.assignments if uid == c.user_id}
        items = [p for p in items if p["id"] in mine]
    items = _filtered(items, request, ("name", "domain_id"))
    return json_response({"projects": items, "links": _links(request)})


@routes.get(f"{V3}/projects/{{project_id}}")
async def get_project(request: web.Request) -> web.Response:
    c = ctx(request)
    ident = identity_of(request)
    pid = request.match_info["project_id"]
    project = ident.projects.get(pid)
    if project is None or (not c.is_admin and pid != c.project_id):
        raise ERR(404, f"Could not find project: {pid}.")
    return json_response({"project": project})


@routes.post(f"{V3}/projects")
async def create_project(request: web.Request) -> web.Response:
    c = ctx(request)
    _require_admin(c, "create_project")
    ident = identity_of(request)
    spec = drop_nulls((await read_json(request, ERR)).get("project") or {})
    if not spec.get("name"):
        raise ERR(400, "Invalid input for field 'name'.")
    domain = spec.get("domain_id", "default")
    if ident.project_id(spec["name"], domain):
        raise ERR(409, f"Conflict occurred attempting to store project - Duplicate entry found with name {spec['name']}.")
    pid = uuid.uuid4().hex
    ident.projects[pid] = {
        "id": pid, "name": spec["name"], "domain_id": domain, "enabled": spec.get("enabled", True),
        "description": spec.get("description", ""), "is_domain": False, "parent_id": domain, "tags": [],
    }
    return json_response({"project": ident.projects[pid]}, status=201)


@routes.get(f"{V3}/users")
async def list_users(request: web.Request) -> web.Response:
    c = ctx(request)
    _require_admin(c, "list_users")
    items = _filtered(list(identity_of(request).users.values()), request, ("name", "domain_id"))
    return json_response({"users": items, "links": _links(request)})


@routes.get(f"{V3}/users/{{user_id}}")
async def get_user(request: web.Request) -> web.Response:
    c = ctx(request)
    uid = request.match_info["user_id"]
    if uid != c.user_id:
        _require_admin(c, "get_user")
    user = identity_of(request).users.get(uid)
    if user is None:
        raise ERR(404, f"Could not find user: {uid}.")
    return json_response({"user": user})


@routes.get(f"{V3}/users/{{user_id}}/projects")
async def user_projects(request: web.Request) -> web.Response:
    c = ctx(request)
    uid = request.match_info["user_id"]
    if uid != c.user_id:
        _require_admin(c, "list_user_projects")
    ident = identity_of(request)
    pids = sorted({pid for u, pid, _ in ident.assignments if u == uid})
    return json_response({"projects": [ident.projects[p] for p in pids], "links": _links(request)})


@routes.get(f"{V3}/roles")
async def list_roles(request: web.Request) -> web.Response:
    items = _filtered(list(identity_of(request).roles.values()), request, ("name",))
    return json_response({"roles": items, "links": _links(request)})


@routes.get(f"{V3}/role_assignments")
async def list_role_assignments(request: web.Request) -> web.Response:
    c = ctx(request)
    ident = identity_of(request)
    want_user = request.query.get("user.id")
    want_project = request.query.get("scope.project.id")
    if not c.is_admin and want_user != c.user_id:
        _require_admin(c, "list_role_assignments")
    out = []
    for uid, pid, rid in sorted(ident.assignments):
        if (want_user and uid != want_user) or (want_project and pid != want_project):
            continue
        out.append({"user": {"id": uid}, "scope": {"project": {"id": pid}}, "role": {"id": rid},
                    "links": {"assignment": ident.cloud.url(f"{V3}/projects/{pid}/users/{uid}/roles/{rid}")}})
    return json_response({"role_assignments": out, "links": _links(request)})


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
        "links": {"self": ident.cloud.url(f"{V3}/users/{uid}/application_credentials/{cid}")},
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
    return {**trust, "links": {"self": ident.cloud.url(f"{TRUSTS}/{trust['id']}")}}


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

