"""Policy: Magnum's default rules, overridable by an operator's YAML file, and the one check every resource
module calls.

How to use it from a resource module (the only two calls you need)::

    from services.api import policy

    # Collection calls and creates: the target is the caller's own project/user.
    policy.require(request, "cluster:get_all")
    policy.require(request, "cluster:create")

    # Calls on one resource: first look it up *scoped to the caller* (``common.scope_of(ctx)``), so another
    # project's resource is a 404 (never a 403 that leaks it exists); then check the rule against the
    # resource's owner. ``target`` is any mapping with ``project_id`` (and ``user_id`` where a rule needs it,
    # e.g. ``certificate:create``/``certificate:get``/``cluster:update_health_status``).
    policy.require(request, "cluster:delete", {"project_id": row.project_id, "user_id": row.user_id})

    # A boolean instead of a 403 (e.g. admin-only fields, ``*_all_projects`` listing):
    if policy.allowed(request, "cluster:get_all_all_projects"): ...

    # Hide another project's resource as a 404 even from a caller who is allowed to see it otherwise
    # (``kind``/``ident`` make Magnum's "<Kind> <ident> could not be found."):
    policy.require_visible(request, "cluster:get", target, kind="Cluster", ident=ident)

A denial is ``ApiError(403, "Policy doesn't allow <rule> to be performed.")`` (Magnum's message).

Rules are oslo.policy-style expressions: ``role:<name>``, ``project_id:%(project_id)s``,
``user_id:%(user_id)s``, ``is_admin:True``, ``rule:<name>``, ``@`` (always), ``!`` (never), ``""`` (always),
``and``/``or``/``not`` and parentheses. The left side of a check names a credential (``user_id``,
``project_id``, ``domain_id``, ``is_admin``, ``roles``...), the right side is a literal or ``%(key)s`` from the
target. Roles are expanded the way Keystone's default implied roles do (admin ⇒ member ⇒ reader), so a member
passes a reader rule even when the token lists only ``member``.

The operator's file (``COVE_API_POLICY_FILE``, YAML or JSON mapping rule -> expression) is merged over the
defaults; an unknown rule name in ``require`` is a programming error (``KeyError``) so typos fail tests.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
import yaml
from aiohttp import web

from services.api.errors import ApiError, policy_denied
from services.api.keystone import AuthContext

log = structlog.get_logger(__name__)

POLICY_FILE_ENV = "COVE_API_POLICY_FILE"

ADMIN = "rule:context_is_admin"
ADMIN_OR_MEMBER = "rule:context_is_admin or rule:project_member"
ADMIN_OR_READER = "rule:context_is_admin or rule:project_reader"

DEFAULT_RULES: dict[str, str] = {
    # Base rules (magnum/common/policies/base.py).
    "context_is_admin": "role:admin",
    "admin_api": "rule:context_is_admin",
    "project_member": "role:member and project_id:%(project_id)s",
    "project_reader": "role:reader and project_id:%(project_id)s",
    "is_user": "user_id:%(user_id)s",
    "admin_or_owner": "is_admin:True or project_id:%(project_id)s",
    "admin_or_user": "is_admin:True or user_id:%(user_id)s",
    # Clusters.
    "cluster:create": ADMIN_OR_MEMBER,
    "cluster:delete": ADMIN_OR_MEMBER,
    "cluster:delete_all_projects": ADMIN,
    "cluster:detail": ADMIN_OR_READER,
    "cluster:detail_all_projects": ADMIN,
    "cluster:get": ADMIN_OR_READER,
    "cluster:get_one_all_projects": ADMIN,
    "cluster:get_all": ADMIN_OR_READER,
    "cluster:get_all_all_projects": ADMIN,
    "cluster:update": ADMIN_OR_MEMBER,
    "cluster:update_health_status": "rule:context_is_admin or (rule:project_member and rule:is_user)",
    "cluster:update_all_projects": ADMIN,
    "cluster:resize": ADMIN_OR_MEMBER,
    "cluster:upgrade": ADMIN_OR_MEMBER,
    "cluster:upgrade_all_projects": ADMIN,
    # Cluster templates.
    "clustertemplate:create": ADMIN_OR_MEMBER,
    "clustertemplate:delete": ADMIN_OR_MEMBER,
    "clustertemplate:delete_all_projects": ADMIN,
    "clustertemplate:detail": ADMIN_OR_READER,
    "clustertemplate:detail_all_projects": ADMIN,
    "clustertemplate:get": ADMIN_OR_READER,
    "clustertemplate:get_one_all_projects": ADMIN,
    "clustertemplate:get_all": ADMIN_OR_READER,
    "clustertemplate:get_all_all_projects": ADMIN,
    "clustertemplate:update": ADMIN_OR_MEMBER,
    "clustertemplate:update_all_projects": ADMIN,
    "clustertemplate:publish": ADMIN,
    # Nodegroups.
    "nodegroup:get": ADMIN_OR_READER,
    "nodegroup:get_all": ADMIN_OR_READER,
    "nodegroup:get_all_all_projects": ADMIN,
    "nodegroup:get_one_all_projects": ADMIN,
    "nodegroup:create": ADMIN_OR_MEMBER,
    "nodegroup:update": ADMIN_OR_MEMBER,
    "nodegroup:delete": ADMIN_OR_MEMBER,
    # Certificates.
    # Certificates (issue 19, unlike Magnum's creator-only rule): every member and reader of the cluster's project
    # gets a certificate of their own; the subject comes from the caller's identity, and
    # ``certificate:create_admin_group`` decides whose certificate carries the group bound to cluster-admin
    # (the others get the group bound to the ``view`` role).
    "certificate:create": ADMIN_OR_READER,
    "certificate:create_admin_group": ADMIN_OR_MEMBER,
    "certificate:get": ADMIN_OR_READER,
    "certificate:rotate_ca": ADMIN_OR_MEMBER,
    # Credentials: project member only (Magnum gives admin no clause here).
    "credential:rotate": "rule:project_member",
    # Quotas, stats, services.
    "quota:create": ADMIN,
    "quota:delete": ADMIN,
    "quota:update": ADMIN,
    "quota:get": ADMIN_OR_READER,
    "quota:get_all": ADMIN,
    # Usage (a Cove extension, GET /v1/usage): a project's own members and readers, admins for any or every project.
    "usage:get": "rule:context_is_admin or rule:project_member or rule:project_reader",
    "usage:get_all_projects": ADMIN,
    "stats:get_all": ADMIN_OR_READER,
    "magnum-service:get_all": ADMIN,
    # The control plane at a glance (GET /v1/controlplane, a Cove extension): heartbeats, lag, dead letters, queue.
    "controlplane:get": ADMIN,
    # Federations.
    "federation:create": ADMIN_OR_MEMBER,
    "federation:delete": ADMIN_OR_MEMBER,
    "federation:update": ADMIN_OR_MEMBER,
    "federation:get": ADMIN_OR_READER,
    "federation:get_all": ADMIN_OR_READER,
    "federation:detail": ADMIN_OR_READER,
    # Events (GET /v1/events, a Cove extension): a project's readers; every project for an admin.
    "event:get_all": ADMIN_OR_READER,
    "event:get_all_all_projects": ADMIN,
}

IMPLIED_ROLES: dict[str, frozenset[str]] = {
    "admin": frozenset({"member", "reader"}),
    "member": frozenset({"reader"}),
}
"""Keystone's default implied roles (``keystone-manage bootstrap``): admin ⇒ member ⇒ reader."""

Creds = Mapping[str, Any]
Target = Mapping[str, Any]
Check = Callable[[Creds, Target, "Policy"], bool]


class PolicySyntaxError(ValueError):
    """A rule expression that does not parse (raised when the policy is loaded, never per request)."""


# ---------------------------------------------------------------------------------------------------- parsing

_TOKEN = re.compile(r"\s*(\(|\)|(?:%\(\w+\)s|[^\s()])+)")
_SUBST = re.compile(r"^%\((\w+)\)s$")


def _tokens(expr: str) -> list[str]:
    out: list[str] = []
    pos = 0
    expr = expr.strip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            break
        out.append(m.group(1))
        pos = m.end()
    return out


def _atom(text: str) -> Check:
    if text == "@":
        return lambda c, t, p: True
    if text == "!":
        return lambda c, t, p: False
    kind, sep, value = text.partition(":")
    if not sep:
        raise PolicySyntaxError(f"not a check: {text!r}")
    if kind == "rule":
        return lambda c, t, p: p.check(value, c, t)
    if kind == "role":
        wanted = value.lower()
        return lambda c, t, p: wanted in c.get("roles", ())
    subst = _SUBST.match(value)
    if subst is not None:
        key = subst.group(1)

        def match_target(c: Creds, t: Target, p: Policy) -> bool:
            have = c.get(kind)
            want = t.get(key)
            return have is not None and want is not None and str(have) == str(want)

        return match_target
    literal = value.strip("'\"")

    def match_literal(c: Creds, t: Target, p: Policy) -> bool:
        have = c.get(kind)
        if isinstance(have, bool):
            return have == (literal.lower() == "true")
        return have is not None and str(have) == literal

    return match_literal


class _Parser:
    """Recursive descent: or_expr := and_expr ('or' and_expr)*; and_expr := not_expr ('and' not_expr)*;
    not_expr := 'not' not_expr | '(' or_expr ')' | atom."""

    def __init__(self, expr: str) -> None:
        self.toks = _tokens(expr)
        self.i = 0

    def parse(self) -> Check:
        if not self.toks:
            return lambda c, t, p: True
        check = self._or()
        if self.i != len(self.toks):
            raise PolicySyntaxError(f"unexpected {self.toks[self.i]!r}")
        return check

    def _peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def _or(self) -> Check:
        parts = [self._and()]
        while self._peek() == "or":
            self.i += 1
            parts.append(self._and())
        if len(parts) == 1:
            return parts[0]
        return lambda c, t, p: any(part(c, t, p) for part in parts)

    def _and(self) -> Check:
        parts = [self._not()]
        while self._peek() == "and":
            self.i += 1
            parts.append(self._not())
        if len(parts) == 1:
            return parts[0]
        return lambda c, t, p: all(part(c, t, p) for part in parts)

    def _not(self) -> Check:
        tok = self._peek()
        if tok is None:
            raise PolicySyntaxError("expression ends early")
        if tok == "not":
            self.i += 1
            inner = self._not()
            return lambda c, t, p: not inner(c, t, p)
        if tok == "(":
            self.i += 1
            inner = self._or()
            if self._peek() != ")":
                raise PolicySyntaxError("missing ')'")
            self.i += 1
            return inner
        if tok in (")", "and", "or"):
            raise PolicySyntaxError(f"unexpected {tok!r}")
        self.i += 1
        return _atom(tok)


def compile_rule(expr: str) -> Check:
    """Parse one expression (raises ``PolicySyntaxError``)."""
    return _Parser(expr).parse()


# ---------------------------------------------------------------------------------------------------- engine


@dataclass
class Policy:
    """Compiled rules. ``check`` is pure and cheap (closures, no parsing per request)."""

    rules: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_RULES))
    source: str = "defaults"
    _compiled: dict[str, Check] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._compiled = {name: compile_rule(expr) for name, expr in self.rules.items()}
        for name, expr in self.rules.items():
            for ref in re.findall(r"rule:([\w:\-]+)", expr):
                if ref not in self.rules:
                    raise PolicySyntaxError(f"rule {name!r} refers to unknown rule {ref!r}")

    def check(self, rule: str, creds: Creds, target: Target) -> bool:
        return self._compiled[rule](creds, target, self)

    def __contains__(self, rule: str) -> bool:
        return rule in self._compiled


def load(path: str | os.PathLike[str] | None = None) -> Policy:
    """Magnum's defaults merged with the operator's file (``path`` or ``$COVE_API_POLICY_FILE``, if set)."""
    path = path if path is not None else os.environ.get(POLICY_FILE_ENV) or None
    rules = dict(DEFAULT_RULES)
    if path is None:
        return Policy(rules)
    raw = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(raw, dict):
        raise PolicySyntaxError(f"{path}: expected a mapping of rule name to expression")
    for name, expr in raw.items():
        rules[str(name)] = "" if expr is None else str(expr)
    policy = Policy(rules, source=str(path))
    log.info("policy_loaded", path=str(path), overrides=len(raw))
    return policy


def credentials(ctx: AuthContext) -> dict[str, Any]:
    roles = {r.lower() for r in ctx.roles}
    for role in list(roles):
        roles |= IMPLIED_ROLES.get(role, frozenset())
    return {
        "user_id": ctx.user_id,
        "user_name": ctx.user_name,
        "project_id": ctx.project_id,
        "project_name": ctx.project_name,
        "roles": frozenset(roles),
        "is_admin": "admin" in roles,
    }


# ---------------------------------------------------------------------------------------------------- request API

POLICY = web.AppKey("policy", Policy)
_CREDS = web.RequestKey("policy_credentials", dict)

_default: Policy | None = None


_current: ContextVar[Policy | None] = ContextVar("cove_api_policy", default=None)
"""The serving app's policy, set per request by the auth middleware (for checks that only have a context)."""


def _loaded_default() -> Policy:
    global _default
    if _default is None:
        _default = load()
    return _default


def policy_of(app: web.Application) -> Policy:
    """The app's policy (``app[POLICY]``), else one loaded once from the environment."""
    found = app.get(POLICY)
    return found if found is not None else _loaded_default()


def use(app: web.Application) -> None:
    """Make ``app``'s policy the one ``require_ctx`` sees in this request's task (called by the auth middleware)."""
    _current.set(policy_of(app))


def current() -> Policy:
    return _current.get() or _loaded_default()


def require_ctx(ctx: AuthContext, rule: str, target: Target | None = None, *, fallback: bool | None = None) -> None:
    """``require`` for code that has an ``AuthContext`` but no request (``common.require_read``/``_write``).
    A rule the policy does not know uses ``fallback`` (if given) instead of failing."""
    pol = current()
    creds = credentials(ctx)
    if rule not in pol:
        if fallback is None:
            raise KeyError(rule)
        log.warning("policy_rule_unknown", rule=rule)
        ok = fallback
    else:
        ok = pol.check(rule, creds, _target(creds, target))
    if not ok:
        log.info("policy_denied", rule=rule)
        raise policy_denied(rule)


def _creds(request: web.Request) -> dict[str, Any]:
    creds = request.get(_CREDS)
    if creds is None:
        from services.api.middleware import CONTEXT

        creds = credentials(request[CONTEXT])
        request[_CREDS] = creds
    return creds


def _target(creds: Creds, target: Target | None) -> Target:
    if target is None:
        return {"project_id": creds["project_id"], "user_id": creds["user_id"]}
    return target


def allowed(request: web.Request, rule: str, target: Target | None = None) -> bool:
    """Whether the caller passes ``rule`` on ``target`` (default: the caller's own project and user)."""
    creds = _creds(request)
    return policy_of(request.app).check(rule, creds, _target(creds, target))


def require(request: web.Request, rule: str, target: Target | None = None) -> None:
    """Raise Magnum's 403 "Policy doesn't allow <rule> to be performed." unless ``allowed``."""
    if not allowed(request, rule, target):
        log.info("policy_denied", rule=rule)
        raise policy_denied(rule)


def is_admin(request: web.Request) -> bool:
    """``context_is_admin`` (Magnum's ``context.is_admin``: admin on any project sees all projects)."""
    return allowed(request, "context_is_admin")


def require_visible(request: web.Request, rule: str, target: Target, *, kind: str, ident: str) -> None:
    """404 ("<kind> <ident> could not be found.") when ``target`` belongs to another project and the caller is
    no admin, so its existence does not leak; then ``require(rule, target)``."""
    creds = _creds(request)
    if target.get("project_id") != creds["project_id"] and not is_admin(request):
        raise ApiError(404, f"{kind} {ident} could not be found.")
    require(request, rule, target)
