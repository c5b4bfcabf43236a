"""Keystone for the API: validating users' tokens (cached briefly), creating trusts, and looking things up
in the user's cloud (images, flavors, keypairs) with the user's own token and catalog.

The ``cove`` service user's token validates users' tokens (``GET /v3/auth/tokens`` + ``X-Subject-Token``).
A validated token is cached until min(its expiry, ``ttl``) so a revoked token stops working within ``ttl``.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import structlog

from services.api.errors import ApiError, bad_request, unauthorized

log = structlog.get_logger(__name__)

_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")


@dataclass(frozen=True)
class AuthContext:
    """Who is calling, from Keystone's answer about the token."""

    token: str
    user_id: str
    user_name: str | None
    project_id: str | None
    project_name: str | None
    roles: frozenset[str]
    expires_at: datetime
    catalog: tuple[dict[str, Any], ...] = ()

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    @property
    def can_read(self) -> bool:
        return bool(self.roles & {"admin", "member", "reader"})

    @property
    def can_write(self) -> bool:
        return bool(self.roles & {"admin", "member"})

    def endpoint(self, *types: str, interface: str = "public") -> str | None:
        for entry in self.catalog:
            if entry.get("type") in types:
                for ep in entry.get("endpoints", []):
                    if ep.get("interface") == interface:
                        return str(ep["url"]).rstrip("/")
        return None


def parse_time(value: str) -> datetime:
    dt = datetime.fromisoformat(value)
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def context_from_token_body(token_id: str, body: dict[str, Any]) -> AuthContext:
    tok = body["token"]
    project = tok.get("project") or {}
    return AuthContext(
        token=token_id,
        user_id=tok["user"]["id"],
        user_name=tok["user"].get("name"),
        project_id=project.get("id"),
        project_name=project.get("name"),
        roles=frozenset(r["name"] for r in tok.get("roles") or []),
        expires_at=parse_time(tok["expires_at"]),
        catalog=tuple(tok.get("catalog") or ()),
    )


@dataclass
class ServiceCredentials:
    auth_url: str
    """Identity root, e.g. ``http://127.0.0.1:8775/identity`` (``/v3`` is appended)."""
    username: str = "cove"
    password: str = "cove-pass"
    project: str = "service"
    domain: str = "Default"


@dataclass
class _Cached:
    ctx: AuthContext
    valid_until: float


@dataclass
class Keystone:
    """The API's client of Keystone. ``await close()`` when done."""

    creds: ServiceCredentials
    ttl: float = 10.0
    timeout: float = 10.0
    session: aiohttp.ClientSession | None = None
    _service: AuthContext | None = None
    _cache: dict[str, _Cached] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def v3(self) -> str:
        base = self.creds.auth_url.rstrip("/")
        return base if base.endswith("/v3") else f"{base}/v3"

    def _session(self) -> aiohttp.ClientSession:
        if self.session is None or self.session.closed:
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self.session

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    # ------------------------------------------------------------------ the service user's own token

    async def service_context(self) -> AuthContext:
        """The ``cove`` user's token, renewed a minute before it expires."""
        async with self._lock:
            svc = self._service
            if svc is not None and (svc.expires_at - datetime.now(UTC)).total_seconds() > 60:
                return svc
            body = {"auth": {
                "identity": {"methods": ["password"], "password": {"user": {
                    "name": self.creds.username, "domain": {"name": self.creds.domain},
                    "password": self.creds.password}}},
                "scope": {"project": {"name": self.creds.project, "domain": {"name": self.creds.domain}}},
            }}
            async with self._session().post(f"{self.v3}/auth/tokens?nocatalog", json=body) as resp:
                if resp.status != 201:
                    text = await resp.text()
                    log.error("service_auth_failed", status=resp.status, body=text[:300])
                    raise ApiError(503, "The API cannot authenticate to Keystone as its service user.")
                token = resp.headers["X-Subject-Token"]
                self._service = context_from_token_body(token, await resp.json())
                log.info("service_token_issued", user_id=self._service.user_id)
                return self._service

    # ------------------------------------------------------------------ users' tokens

    async def validate(self, token: str | None) -> AuthContext:
        """The caller's context, or ``ApiError(401)``."""
        if not token:
            raise unauthorized()
        now = time.monotonic()
        cached = self._cache.get(token)
        if cached is not None and cached.valid_until > now:
            return cached.ctx
        svc = await self.service_context()
        headers = {"X-Auth-Token": svc.token, "X-Subject-Token": token}
        async with self._session().get(f"{self.v3}/auth/tokens", headers=headers) as resp:
            if resp.status == 401:
                # Our own token went bad (e.g. Keystone restarted): renew once.
                self._service = None
                svc = await self.service_context()
                headers["X-Auth-Token"] = svc.token
                async with self._session().get(f"{self.v3}/auth/tokens", headers=headers) as retry:
                    return await self._accept(token, retry, now)
            return await self._accept(token, resp, now)

    async def _accept(self, token: str, resp: aiohttp.ClientResponse, now: float) -> AuthContext:
        if resp.status in (401, 403, 404):
            self._cache.pop(token, None)
            raise unauthorized()
        if resp.status != 200:
            log.error("token_validation_failed", status=resp.status)
            raise ApiError(503, "Keystone could not validate the token.")
        ctx = context_from_token_body(token, await resp.json())
        left = (ctx.expires_at - datetime.now(UTC)).total_seconds()
        if left <= 0:
            raise unauthorized()
        self._cache[token] = _Cached(ctx, now + min(left, self.ttl))
        if len(self._cache) > 10000:
            self._cache = {k: v for k, v in self._cache.items() if v.valid_until > now}
        return ctx

    # ------------------------------------------------------------------ trusts

    async def create_trust(self, user: AuthContext) -> tuple[str, str]:
        """A trust from ``user`` to the cove service user on the user's project, impersonating, with the
        user's roles minus admin. Returns (trust id, trustee user id)."""
        svc = await self.service_context()
        roles = sorted(user.roles - {"admin"})
        body = {"trust": {
            "trustor_user_id": user.user_id, "trustee_user_id": svc.user_id, "project_id": user.project_id,
            "impersonation": True, "allow_redelegation": False, "roles": [{"name": r} for r in roles],
        }}
        async with self._session().post(
            f"{self.v3}/OS-TRUST/trusts", json=body, headers={"X-Auth-Token": user.token}
        ) as resp:
            if resp.status != 201:
                text = await resp.text()
                log.warning("trust_create_failed", status=resp.status, body=text[:300])
                raise ApiError(
                    403 if resp.status == 403 else 503,
                    f"Could not create a trust for the cluster: {_message(text) or resp.status}.",
                )
            trust = (await resp.json())["trust"]
        log.info("trust_created", trust_id=trust["id"], trustor=user.user_id, project_id=user.project_id)
        return str(trust["id"]), svc.user_id

    async def delete_trust(self, user: AuthContext, trust_id: str) -> None:
        async with self._session().delete(
            f"{self.v3}/OS-TRUST/trusts/{trust_id}", headers={"X-Auth-Token": user.token}
        ) as resp:
            if resp.status not in (204, 404):
                log.warning("trust_delete_failed", trust_id=trust_id, status=resp.status)

    # ------------------------------------------------------------------ the user's cloud

    async def _get(self, user: AuthContext, url: str) -> tuple[int, Any]:
        async with self._session().get(url, headers={"X-Auth-Token": user.token}) as resp:
            try:
                data = await resp.json(content_type=None)
            except (ValueError, aiohttp.ContentTypeError):
                data = None
            return resp.status, data

    async def find_image(self, user: AuthContext, ident: str) -> dict[str, Any]:
        """The Glance image named or identified by ``ident`` (Magnum's checks: exists, unique, has os_distro)."""
        base = user.endpoint("image")
        if base is None:
            raise ApiError(503, "No image service in the catalog.")
        base = base if base.endswith("/v2") else f"{base}/v2"
        if _UUID.match(ident):
            status, data = await self._get(user, f"{base}/images/{ident}")
            if status == 200 and isinstance(data, dict):
                return data
        status, data = await self._get(user, f"{base}/images?name={_q(ident)}")
        images = (data or {}).get("images", []) if status == 200 else []
        if not images:
            raise bad_request(f"Image {ident} could not be found.")
        if len(images) > 1:
            raise ApiError(409, f"Multiple images exist with same name {ident}. Please use the image id instead.")
        return dict(images[0])

    async def find_flavor(self, user: AuthContext, ident: str) -> dict[str, Any]:
        base = user.endpoint("compute")
        if base is None:
            raise ApiError(503, "No compute service in the catalog.")
        status, data = await self._get(user, f"{base}/flavors/detail")
        flavors = (data or {}).get("flavors", []) if status == 200 else []
        for flavor in flavors:
            if flavor.get("id") == ident or flavor.get("name") == ident:
                return dict(flavor)
        raise bad_request(f"Flavor {ident} could not be found.")

    async def find_keypair(self, user: AuthContext, name: str) -> None:
        base = user.endpoint("compute")
        if base is None:
            raise ApiError(503, "No compute service in the catalog.")
        status, _ = await self._get(user, f"{base}/os-keypairs/{_q(name)}")
        if status == 404:
            raise ApiError(404, f"Unable to find keypair {name}.")
        if status != 200:
            raise ApiError(503, f"Could not look up keypair {name} (compute answered {status}).")


def _q(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


def _message(text: str) -> str | None:
    import json

    try:
        body = json.loads(text)
    except ValueError:
        return text[:200] or None
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            return str(err.get("message") or err)
    return text[:200] or None
