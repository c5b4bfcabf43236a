"""Keystone's state and its rules: domains, projects, users, groups, roles and role assignments, tokens,
application credentials, trusts and OS-REVOKE events; who gets a token, and which tokens a change ends.

No HTTP routes here: `identity.py` serves auth, tokens, application credentials and trusts, `identity_admin.py`
the admin API. This module imports neither them nor `state.py`, so `state.py` builds an `Identity` from plain
values (the configuration and the public URLs) without an import circle."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from deploy.devcloud.clock import iso, now
from deploy.devcloud.config import CloudConfig
from deploy.devcloud.web import Ctx, keystone_error

PREFIX = "/identity"
V3 = f"{PREFIX}/v3"
ROLE_NAMES = ("admin", "member", "reader", "service")
ERR = keystone_error
AUTH_FAILED = "The request you have made requires authentication."
REVOKE_KEYS = ("audit_id", "user_id", "project_id", "role_id", "domain_id", "trust_id")
"""The ids a revocation event may name, in Keystone's field names; a token matches when it matches all named."""


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


def _name(spec: dict[str, Any], kind: str) -> str:
    name = spec.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ERR(400, f"Invalid input for field 'name': 'name' is a required property of a {kind}.")
    return name


def _enabled(spec: dict[str, Any]) -> bool:
    value = spec.get("enabled", True)
    if not isinstance(value, bool):
        raise ERR(400, f"Invalid input for field 'enabled': {value!r} is not of type 'boolean'.")
    return value


def _conflict(kind: str, name: str) -> Exception:
    return ERR(409, f"Conflict occurred attempting to store {kind} - Duplicate entry found with name {name}.")


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
    config: CloudConfig
    public_url: str
    magnum_url: str | None = None
    domains: dict[str, dict[str, Any]] = field(default_factory=dict)
    projects: dict[str, dict[str, Any]] = field(default_factory=dict)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    passwords: dict[str, str] = field(default_factory=dict)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)
    members: set[tuple[str, str]] = field(default_factory=set)  # (group_id, user_id)
    roles: dict[str, dict[str, Any]] = field(default_factory=dict)
    assignments: set[tuple[str, str, str]] = field(default_factory=set)  # (user_id, project_id, role_id)
    group_assignments: set[tuple[str, str, str]] = field(default_factory=set)  # (group_id, project_id, role_id)
    tokens: dict[str, Token] = field(default_factory=dict)
    trusts: dict[str, dict[str, Any]] = field(default_factory=dict)
    app_creds: dict[str, dict[str, Any]] = field(default_factory=dict)
    revoke_events: list[dict[str, Any]] = field(default_factory=list)
    """OS-REVOKE events, oldest first; swept after a token lifetime. One per revoked token (by audit id), and one
    per change that ends a set of tokens (a user disabled or deleted or its password changed, a grant revoked, a
    project disabled or deleted, a domain disabled, a role deleted)."""

    def __post_init__(self) -> None:
        self.public_url = self.public_url.rstrip("/")
        config = self.config
        for d in config.domains:
            self.domains[d.id] = {"id": d.id, "name": d.name, "enabled": True, "description": "", "tags": []}
        for name in ROLE_NAMES:
            rid = stable_id("role", name)
            self.roles[rid] = {"id": rid, "name": name, "domain_id": None, "description": None, "options": {}}
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
                "password_expires_at": None, "default_project_id": None, "options": {},
            }
            self.passwords[uid] = u.password
            for project_name, role_names in u.roles.items():
                member_of = self.project_id(project_name)
                if member_of is None:
                    raise ValueError(f"user {u.name}: unknown project {project_name}")
                for role in role_names:
                    self.assignments.add((uid, member_of, self.role_id(role)))

    def url(self, path: str) -> str:
        return f"{self.public_url}{path}"

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

    def groups_of(self, user_id: str) -> set[str]:
        return {gid for gid, uid in self.members if uid == user_id}

    def members_of(self, group_id: str) -> set[str]:
        return {uid for gid, uid in self.members if gid == group_id}

    def role_ids(self, user_id: str, project_id: str) -> set[str]:
        """The user's effective roles on the project: its own grants and its groups'."""
        groups = self.groups_of(user_id)
        return {rid for uid, pid, rid in self.assignments if uid == user_id and pid == project_id} | {
            rid for gid, pid, rid in self.group_assignments if gid in groups and pid == project_id}

    def role_names(self, user_id: str, project_id: str) -> tuple[str, ...]:
        return tuple(sorted(self.roles[rid]["name"] for rid in self.role_ids(user_id, project_id)))

    def projects_of(self, user_id: str) -> set[str]:
        """The projects the user has any role on, directly or through a group."""
        groups = self.groups_of(user_id)
        return {pid for uid, pid, _ in self.assignments if uid == user_id} | {
            pid for gid, pid, _ in self.group_assignments if gid in groups}

    def _user_may_act(self, user_id: str) -> bool:
        user = self.users.get(user_id)
        return bool(user and user["enabled"] and self.domains.get(user["domain_id"], {}).get("enabled"))

    def _project_usable(self, project_id: str) -> bool:
        project = self.projects.get(project_id)
        return bool(project and project["enabled"] and self.domains.get(project["domain_id"], {}).get("enabled"))

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
        lifetime = timedelta(seconds=self.config.timing.token_lifetime_seconds)
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
        # Revocation events drop the tokens they match; this is the backstop for a token whose user or project
        # went away or was disabled by a path that emitted no event.
        if not self._user_may_act(token.user_id) or (token.project_id and not self._project_usable(token.project_id)):
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

    def revoke_matching(self, **ids: str) -> int:
        """Record an OS-REVOKE event naming `ids` (Keystone's field names: user_id, project_id, role_id,
        domain_id, trust_id) and drop every token issued before it that matches all of them. Returns how many."""
        at = now()
        self.revoke_events.append({**ids, "issued_before": iso(at), "revoked_at": iso(at), "_at": at})
        doomed = [t.id for t in self.tokens.values() if t.issued_at <= at and self._matches(ids, t)]
        for tid in doomed:
            del self.tokens[tid]
        return len(doomed)

    def _matches(self, ids: dict[str, str], token: Token) -> bool:
        """Keystone's revocation model: a token matches an event when it matches every id the event names; the
        event's user matches the token's user, and a trust token's trustor and trustee too."""
        trust = self.trusts.get(token.trust_id or "") or {}
        for key, value in ids.items():
            if key == "user_id":
                ok = value in (token.user_id, trust.get("trustor_user_id"), trust.get("trustee_user_id"))
            elif key == "project_id":
                ok = token.project_id == value
            elif key == "role_id":
                ok = self.roles.get(value, {}).get("name") in token.roles
            elif key == "domain_id":
                user_domain = self.users.get(token.user_id, {}).get("domain_id")
                project_domain = self.projects.get(token.project_id or "", {}).get("domain_id")
                ok = value in (user_domain, project_domain)
            elif key == "trust_id":
                ok = token.trust_id == value
            elif key == "audit_id":
                ok = token.audit_id == value
            else:
                ok = False
            if not ok:
                return False
        return bool(ids)

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
        keep = t - timedelta(seconds=self.config.timing.token_lifetime_seconds)
        while self.revoke_events and self.revoke_events[0]["_at"] <= keep:
            self.revoke_events.pop(0)

    # ---------------------------------------------------------------------------------------------------- shapes
    def catalog(self, project_id: str | None) -> list[dict[str, Any]]:
        base = self.public_url
        region = self.config.region
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
        if self.magnum_url:
            services.append(("container-infra", "magnum", self.magnum_url))
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
                raise ERR(401, AUTH_FAILED)
        elif "token" in methods:
            old = self.validate((identity.get("token") or {}).get("id"))
            if old is None:
                raise ERR(401, AUTH_FAILED)
            if old.trust_id or old.app_cred_id:
                raise ERR(403, "You are not authorized to perform the requested action: rescoping a delegated token.")
            user_id, audit_id, expires_at = old.user_id, old.audit_id, old.expires_at
        elif "application_credential" in methods:
            spec = identity.get("application_credential") or {}
            cred = self._find_app_cred(spec)
            if cred is None or cred["_secret"] != spec.get("secret"):
                raise ERR(401, AUTH_FAILED)
            if cred.get("_expires_at") is not None and cred["_expires_at"] <= now():
                raise ERR(401, AUTH_FAILED)  # expired credential
            user_id, app_cred_id = cred["user_id"], cred["id"]
            project_id, roles_cap = cred["project_id"], tuple(r["name"] for r in cred["roles"])
            if scope:
                raise ERR(401, "Application credentials cannot request a scope.")
        else:
            raise ERR(401, AUTH_FAILED)
        if not self._user_may_act(user_id):
            raise ERR(401, AUTH_FAILED)  # Keystone: a disabled user (or one of a disabled domain) gets no token

        if scope and "OS-TRUST:trust" in scope:
            trust = self.trusts.get((scope["OS-TRUST:trust"] or {}).get("id", ""))
            if trust is None or trust["trustee_user_id"] != user_id:
                raise ERR(401, AUTH_FAILED)
            expiry = parse_expiry(trust["expires_at"])
            if expiry is not None and expiry <= now():
                raise ERR(401, AUTH_FAILED)
            if not self._user_may_act(trust["trustor_user_id"]) or not self._project_usable(trust["project_id"]):
                raise ERR(401, AUTH_FAILED)
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
                raise ERR(401, AUTH_FAILED)
        elif scope and ("domain" in scope or "system" in scope):
            project_id = None
        if project_id is None:
            return self.issue(user_id, None, (), methods, audit_id=audit_id, expires_at=expires_at)
        if not self._project_usable(project_id):
            raise ERR(401, AUTH_FAILED)  # a disabled project (or one of a disabled domain) cannot be scoped to
        roles = self.role_names(user_id, project_id)
        if roles_cap is not None:
            roles = tuple(r for r in roles if r in roles_cap)
        if not roles:
            raise ERR(401, AUTH_FAILED)
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

    # ---------------------------------------------------------------------------------------------------- admin
    # The admin API's changes, each with Keystone's side effects: what it deletes with it, and the revocation
    # event that ends the tokens it makes invalid. Callers have checked the policy.

    def _get(self, table: dict[str, dict[str, Any]], kind: str, object_id: str) -> dict[str, Any]:
        obj = table.get(object_id)
        if obj is None:
            raise ERR(404, f"Could not find {kind}: {object_id}.")
        return obj

    def domain(self, domain_id: str) -> dict[str, Any]:
        return self._get(self.domains, "domain", domain_id)

    def project(self, project_id: str) -> dict[str, Any]:
        return self._get(self.projects, "project", project_id)

    def user(self, user_id: str) -> dict[str, Any]:
        return self._get(self.users, "user", user_id)

    def group(self, group_id: str) -> dict[str, Any]:
        return self._get(self.groups, "group", group_id)

    def role(self, role_id: str) -> dict[str, Any]:
        return self._get(self.roles, "role", role_id)

    def _named_in_domain(self, table: dict[str, dict[str, Any]], name: str, domain_id: str,
                         but: str | None = None) -> bool:
        return any(o["name"] == name and o.get("domain_id") == domain_id and o["id"] != but for o in table.values())

    # domains
    def create_domain(self, spec: dict[str, Any]) -> dict[str, Any]:
        name = _name(spec, "domain")
        if any(d["name"] == name for d in self.domains.values()):
            raise _conflict("domain", name)
        did = spec.get("explicit_domain_id") or uuid.uuid4().hex
        self.domains[did] = {"id": did, "name": name, "enabled": _enabled(spec),
                             "description": spec.get("description", ""), "tags": list(spec.get("tags") or [])}
        return self.domains[did]

    def update_domain(self, domain_id: str, spec: dict[str, Any]) -> dict[str, Any]:
        domain = self.domain(domain_id)
        if "name" in spec and spec["name"] != domain["name"]:
            name = _name(spec, "domain")
            if any(d["name"] == name for d in self.domains.values()):
                raise _conflict("domain", name)
            domain["name"] = name
        if "enabled" in spec:
            enabled = _enabled(spec)
            if not enabled and domain_id == "default":
                raise ERR(403, "You are not authorized to perform the requested action: "
                               "the devcloud's Default domain holds its seeded users and cannot be disabled.")
            if domain["enabled"] and not enabled:
                self.revoke_matching(domain_id=domain_id)
            domain["enabled"] = enabled
        for key in ("description", "tags"):
            if key in spec:
                domain[key] = spec[key]
        return domain

    def delete_domain(self, domain_id: str) -> None:
        domain = self.domain(domain_id)
        if domain["enabled"]:
            raise ERR(403, "Cannot delete a domain that is enabled, please disable it first.")
        for pid in [p["id"] for p in self.projects.values() if p["domain_id"] == domain_id]:
            self.delete_project(pid)
        for uid in [u["id"] for u in self.users.values() if u["domain_id"] == domain_id]:
            self.delete_user(uid)
        for gid in [g["id"] for g in self.groups.values() if g["domain_id"] == domain_id]:
            self.delete_group(gid)
        del self.domains[domain_id]

    # projects
    def create_project(self, spec: dict[str, Any]) -> dict[str, Any]:
        name = _name(spec, "project")
        domain_id = spec.get("domain_id") or "default"
        self.domain(domain_id)
        if self._named_in_domain(self.projects, name, domain_id):
            raise _conflict("project", name)
        parent = spec.get("parent_id") or domain_id
        if parent != domain_id and self.project(parent)["domain_id"] != domain_id:
            raise ERR(400, "Cannot create project, the parent is in another domain.")
        pid = uuid.uuid4().hex
        self.projects[pid] = {
            "id": pid, "name": name, "domain_id": domain_id, "enabled": _enabled(spec),
            "description": spec.get("description", ""), "is_domain": False, "parent_id": parent,
            "tags": list(spec.get("tags") or []),
        }
        return self.projects[pid]

    def update_project(self, project_id: str, spec: dict[str, Any]) -> dict[str, Any]:
        project = self.project(project_id)
        if "name" in spec and spec["name"] != project["name"]:
            name = _name(spec, "project")
            if self._named_in_domain(self.projects, name, project["domain_id"]):
                raise _conflict("project", name)
            project["name"] = name
        if "enabled" in spec:
            enabled = _enabled(spec)
            if project["enabled"] and not enabled:
                self.revoke_matching(project_id=project_id)
            project["enabled"] = enabled
        for key in ("description", "tags"):
            if key in spec:
                project[key] = spec[key]
        return project

    def delete_project(self, project_id: str) -> None:
        """Keystone's cascade: the project's tokens end (one event naming the project), its role assignments,
        trusts and application credentials go. The other services' resources stay, owned by a project id that no
        token can be scoped to any more (orphans, as in a real cloud)."""
        self.project(project_id)
        if any(p["parent_id"] == project_id for p in self.projects.values()):
            raise ERR(403, "Cannot delete the project, since it is not a leaf in the hierarchy.")
        self.revoke_matching(project_id=project_id)
        self.assignments = {a for a in self.assignments if a[1] != project_id}
        self.group_assignments = {a for a in self.group_assignments if a[1] != project_id}
        for tid in [t["id"] for t in self.trusts.values() if t["project_id"] == project_id]:
            del self.trusts[tid]
        for cid in [c["id"] for c in self.app_creds.values() if c["project_id"] == project_id]:
            del self.app_creds[cid]
        del self.projects[project_id]

    # users
    def create_user(self, spec: dict[str, Any]) -> dict[str, Any]:
        name = _name(spec, "user")
        domain_id = spec.get("domain_id") or "default"
        self.domain(domain_id)
        if self._named_in_domain(self.users, name, domain_id):
            raise ERR(409, f"Conflict occurred attempting to store user - Duplicate entry found with name {name} "
                           f"at domain ID {domain_id}.")
        default_project = spec.get("default_project_id")
        if default_project is not None:
            self.project(default_project)
        uid = uuid.uuid4().hex
        self.users[uid] = {
            "id": uid, "name": name, "domain_id": domain_id, "enabled": _enabled(spec),
            "password_expires_at": None, "default_project_id": default_project, "options": {},
        }
        for key in ("description", "email"):
            if key in spec:
                self.users[uid][key] = spec[key]
        if isinstance(spec.get("password"), str):
            self.passwords[uid] = spec["password"]
        return self.users[uid]

    def update_user(self, user_id: str, spec: dict[str, Any]) -> dict[str, Any]:
        user = self.user(user_id)
        if "name" in spec and spec["name"] != user["name"]:
            name = _name(spec, "user")
            if self._named_in_domain(self.users, name, user["domain_id"]):
                raise _conflict("user", name)
            user["name"] = name
        ends_tokens = False
        if "enabled" in spec:
            enabled = _enabled(spec)
            ends_tokens = user["enabled"] and not enabled
            user["enabled"] = enabled
        if "password" in spec:
            self.passwords[user_id] = str(spec["password"])
            ends_tokens = True  # Keystone: a new password ends the user's tokens
        if "default_project_id" in spec:
            self.project(spec["default_project_id"])
            user["default_project_id"] = spec["default_project_id"]
        for key in ("description", "email"):
            if key in spec:
                user[key] = spec[key]
        if ends_tokens:
            self.revoke_matching(user_id=user_id)
        return user

    def change_password(self, user_id: str, original: Any, password: Any) -> None:
        self.user(user_id)
        if not isinstance(password, str) or not password:
            raise ERR(400, "Invalid input for field 'password'.")
        if self.passwords.get(user_id) != original:
            raise ERR(401, AUTH_FAILED)
        self.passwords[user_id] = password
        self.revoke_matching(user_id=user_id)

    def delete_user(self, user_id: str) -> None:
        """Keystone's cascade: the user's tokens end (one event naming the user, which also ends trust tokens it
        is the trustor or trustee of), its assignments, memberships, application credentials and trusts go."""
        self.user(user_id)
        self.revoke_matching(user_id=user_id)
        self.assignments = {a for a in self.assignments if a[0] != user_id}
        self.members = {m for m in self.members if m[1] != user_id}
        for cid in [c["id"] for c in self.app_creds.values() if c["user_id"] == user_id]:
            del self.app_creds[cid]
        for tid in [t["id"] for t in self.trusts.values() if user_id in (t["trustor_user_id"], t["trustee_user_id"])]:
            del self.trusts[tid]
        self.passwords.pop(user_id, None)
        del self.users[user_id]

    # groups
    def create_group(self, spec: dict[str, Any]) -> dict[str, Any]:
        name = _name(spec, "group")
        domain_id = spec.get("domain_id") or "default"
        self.domain(domain_id)
        if self._named_in_domain(self.groups, name, domain_id):
            raise _conflict("group", name)
        gid = uuid.uuid4().hex
        self.groups[gid] = {"id": gid, "name": name, "domain_id": domain_id,
                            "description": spec.get("description", "")}
        return self.groups[gid]

    def update_group(self, group_id: str, spec: dict[str, Any]) -> dict[str, Any]:
        group = self.group(group_id)
        if "name" in spec and spec["name"] != group["name"]:
            name = _name(spec, "group")
            if self._named_in_domain(self.groups, name, group["domain_id"]):
                raise _conflict("group", name)
            group["name"] = name
        if "description" in spec:
            group["description"] = spec["description"]
        return group

    def delete_group(self, group_id: str) -> None:
        self.group(group_id)
        for uid in sorted(self.members_of(group_id)):
            self.remove_member(group_id, uid)
        self.group_assignments = {a for a in self.group_assignments if a[0] != group_id}
        del self.groups[group_id]

    def add_member(self, group_id: str, user_id: str) -> None:
        self.group(group_id)
        self.user(user_id)
        self.members.add((group_id, user_id))

    def is_member(self, group_id: str, user_id: str) -> bool:
        self.group(group_id)
        self.user(user_id)
        return (group_id, user_id) in self.members

    def remove_member(self, group_id: str, user_id: str) -> None:
        if not self.is_member(group_id, user_id):
            raise ERR(404, f"Could not find user: {user_id} in group {group_id}.")
        self.members.discard((group_id, user_id))
        self.revoke_matching(user_id=user_id)  # Keystone ends the user's tokens when it leaves a group

    # roles
    def create_role(self, spec: dict[str, Any]) -> dict[str, Any]:
        name = _name(spec, "role")
        if any(r["name"] == name for r in self.roles.values()):
            raise _conflict("role", name)
        rid = uuid.uuid4().hex
        self.roles[rid] = {"id": rid, "name": name, "domain_id": None, "description": spec.get("description"),
                           "options": {}}
        return self.roles[rid]

    def update_role(self, role_id: str, spec: dict[str, Any]) -> dict[str, Any]:
        role = self.role(role_id)
        if "name" in spec and spec["name"] != role["name"]:
            name = _name(spec, "role")
            if any(r["name"] == name for r in self.roles.values()):
                raise _conflict("role", name)
            if role["name"] in ROLE_NAMES:
                raise ERR(403, f"The devcloud's seeded role {role['name']} cannot be renamed: tokens name it.")
            role["name"] = name
        if "description" in spec:
            role["description"] = spec["description"]
        return role

    def delete_role(self, role_id: str) -> None:
        self.role(role_id)
        self.revoke_matching(role_id=role_id)
        self.assignments = {a for a in self.assignments if a[2] != role_id}
        self.group_assignments = {a for a in self.group_assignments if a[2] != role_id}
        del self.roles[role_id]

    # role assignments on projects
    def _grant_key(self, actor: str, actor_id: str, project_id: str, role_id: str) -> tuple[str, str, str]:
        self.project(project_id)
        (self.user if actor == "user" else self.group)(actor_id)
        self.role(role_id)
        return (actor_id, project_id, role_id)

    def _grants(self, actor: str) -> set[tuple[str, str, str]]:
        return self.assignments if actor == "user" else self.group_assignments

    def grant(self, actor: str, actor_id: str, project_id: str, role_id: str) -> None:
        """`actor` is "user" or "group"."""
        self._grants(actor).add(self._grant_key(actor, actor_id, project_id, role_id))

    def has_grant(self, actor: str, actor_id: str, project_id: str, role_id: str) -> bool:
        return self._grant_key(actor, actor_id, project_id, role_id) in self._grants(actor)

    def revoke_grant(self, actor: str, actor_id: str, project_id: str, role_id: str) -> None:
        """Keystone ends the tokens the grant made (an event naming the user, project and role; for a group, one
        per member) and deletes the user's application credentials on the project."""
        key = self._grant_key(actor, actor_id, project_id, role_id)
        grants = self._grants(actor)
        if key not in grants:
            raise ERR(404, f"Could not find role assignment with role: {role_id}, user or group: {actor_id}, "
                           f"project, domain, or system: {project_id}.")
        grants.discard(key)
        for uid in sorted({actor_id} if actor == "user" else self.members_of(actor_id)):
            self.revoke_matching(user_id=uid, project_id=project_id, role_id=role_id)
            for cid in [c["id"] for c in self.app_creds.values()
                        if c["user_id"] == uid and c["project_id"] == project_id]:
                del self.app_creds[cid]

    def granted_roles(self, actor: str, actor_id: str, project_id: str) -> list[dict[str, Any]]:
        self.project(project_id)
        (self.user if actor == "user" else self.group)(actor_id)
        rids = {rid for aid, pid, rid in self._grants(actor) if aid == actor_id and pid == project_id}
        return [self.roles[rid] for rid in sorted(rids)]
