"""Keystone for the API: validating users' tokens (cached for the token's life, dropped on revocation) and
creating trusts. (Look-ups of the user's images, flavors and keypairs are in ``usercloud.py``.)

Token validation follows keystonemiddleware's approach. The ``cove`` service user's token validates a user's
token once (``GET /v3/auth/tokens`` + ``X-Subject-Token``); the answer is cached until the token expires (or
``ttl``, if set, whichever is first). A background task polls Keystone's revocation events
(``GET /v3/OS-REVOKE/events?since=...``, every ``revocation_interval`` seconds) and drops every cached token an
event matches (by audit id, user, project, trust or role; issued before the event). Newly validated tokens are
also checked against the recent events, so a validation racing a revocation cannot cache a dead token.
If the revocation feed has not answered for ``feed_stale_after`` seconds, cached tokens are trusted for at
most ``fallback_ttl`` seconds after their validation: revocation is then late by at most that, never ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import structlog

from services.api.errors import ApiError, unauthorized

log = structlog.get_logger(__name__)



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

    @property
    def delegated_roles(self) -> frozenset[str]:
        """The roles a cluster's trust delegates: the user's, minus admin."""
        return self.roles - {"admin"}

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
    """``time.monotonic()`` after which Keystone is asked again (the token's expiry, or ``ttl``)."""
    validated_at: float
    facts: dict[str, frozenset[str]]
    """What revocation events match on: audit_id, user_id, project_id, trust_id, role_id (sets of ids)."""
    issued_at: datetime


_EVENT_KEYS = ("audit_id", "audit_chain_id", "user_id", "project_id", "trust_id", "role_id", "domain_id",
               "consumer_id", "access_token_id")


def token_facts(body: dict[str, Any]) -> dict[str, frozenset[str]]:
    """The ids of a token (``GET /v3/auth/tokens`` body) that Keystone's revocation events can name."""
    tok = body["token"]
    audit = [str(a) for a in tok.get("audit_ids") or []]
    project = tok.get("project") or {}
    trust = tok.get("OS-TRUST:trust") or {}
    user = tok.get("user") or {}
    facts = {
        "audit_id": frozenset(audit[:1]),
        "audit_chain_id": frozenset(audit[-1:]),
        "user_id": frozenset({str(user["id"])} if user.get("id") else ()),
        "project_id": frozenset({str(project["id"])} if project.get("id") else ()),
        "trust_id": frozenset({str(trust["id"])} if trust.get("id") else ()),
        "role_id": frozenset(str(r["id"]) for r in tok.get("roles") or [] if r.get("id")),
        "domain_id": frozenset(
            str(d) for d in ((user.get("domain") or {}).get("id"), (project.get("domain") or {}).get("id")) if d
        ),
    }
    trustor = (trust.get("trustor_user") or {}).get("id")
    trustee = (trust.get("trustee_user") or {}).get("id")
    if trustor or trustee:
        facts["user_id"] = facts["user_id"] | frozenset(str(x) for x in (trustor, trustee) if x)
    return facts


def event_matches(event: dict[str, Any], facts: dict[str, frozenset[str]], issued_at: datetime) -> bool:
    """Keystone's rule: every id the event names matches the token, and the token was issued before
    ``issued_before``. An event that names none of the ids matches nothing."""
    named = [k for k in _EVENT_KEYS if event.get(k)]
    if not named:
        return False
    for key in named:
        if str(event[key]) not in facts.get(key, frozenset()):
            return False
    before = event.get("issued_before")
    if before:
        try:
            if issued_at > parse_time(str(before)):
                return False
        except ValueError:
            pass
    return True


@dataclass
class Keystone:
    """The API's client of Keystone. ``await close()`` when done."""

    creds: ServiceCredentials
    ttl: float | None = None
    """Upper bound on how long a validation is trusted; None: the token's own life (revocations drop it)."""
    timeout: float = 10.0
    revocation_interval: float = 1.0
    """Seconds between polls of Keystone's revocation events."""
    feed_stale_after: float = 10.0
    fallback_ttl: float = 10.0
    max_cached: int = 100_000
    trust_reuse_seconds: float = 0.0
    """How long after creating a trust it is handed to further clusters of the same user, project and roles
    (``cluster_trust``); 0: every cluster gets a trust of its own, as in Magnum."""
    session: aiohttp.ClientSession | None = None
    _service: AuthContext | None = None
    _cache: dict[str, _Cached] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _poller: asyncio.Task[None] | None = None
    _feed_ok_at: float = -1e18
    _since: str | None = None
    _recent_events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    _recent_trusts: dict[tuple[str, str | None, frozenset[str]], tuple[float, tuple[str, str]]] = field(
        default_factory=dict)
    stats: dict[str, int] = field(default_factory=lambda: {
        "hits": 0, "misses": 0, "refused": 0, "revoked_dropped": 0, "feed_errors": 0})

    @property
    def v3(self) -> str:
        base = self.creds.auth_url.rstrip("/")
        return base if base.endswith("/v3") else f"{base}/v3"

    def _session(self) -> aiohttp.ClientSession:
        if self.session is None or self.session.closed:
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self.session

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
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
        """The caller's context, or ``ApiError(401)`` (no, forged, expired or revoked token)."""
        if not token:
            raise unauthorized()
        now = time.monotonic()
        cached = self._cache.get(token)
        if cached is not None:
            if cached.valid_until > now and (
                now - self._feed_ok_at < self.feed_stale_after or now - cached.validated_at < self.fallback_ttl
            ):
                self.stats["hits"] += 1
                return cached.ctx
            del self._cache[token]
        self._ensure_poller()
        self.stats["misses"] += 1
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
            self.stats["refused"] += 1
            raise unauthorized()
        if resp.status != 200:
            log.error("token_validation_failed", status=resp.status)
            raise ApiError(503, "Keystone could not validate the token.")
        body = await resp.json()
        ctx = context_from_token_body(token, body)
        left = (ctx.expires_at - datetime.now(UTC)).total_seconds()
        if left <= 0:
            self.stats["refused"] += 1
            raise unauthorized()
        facts = token_facts(body)
        issued_raw = body["token"].get("issued_at")
        issued_at = parse_time(issued_raw) if issued_raw else datetime.now(UTC)
        if any(event_matches(e, facts, issued_at) for _, e in self._recent_events):
            # Revoked while we were asking: Keystone's answer predates the revocation.
            self.stats["refused"] += 1
            raise unauthorized()
        life = left if self.ttl is None else min(left, self.ttl)
        if len(self._cache) >= self.max_cached:
            self._cache = {k: v for k, v in self._cache.items() if v.valid_until > now}
            while len(self._cache) >= self.max_cached:
                self._cache.pop(next(iter(self._cache)))
        self._cache[token] = _Cached(ctx, now + life, now, facts, issued_at)
        return ctx

    def forget(self, token: str) -> None:
        """Drop one token from the cache (e.g. the API learned it is bad some other way)."""
        self._cache.pop(token, None)

    # ------------------------------------------------------------------ revocation events

    def _ensure_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll_revocations())

    async def _poll_revocations(self) -> None:
        while True:
            try:
                await self.poll_revocations_once()
            except (aiohttp.ClientError, TimeoutError, ApiError, ValueError, KeyError, TypeError) as exc:
                # The feed must never die: log, count, retry; cached tokens fall back to ``fallback_ttl``.
                self.stats["feed_errors"] += 1
                log.warning("revocation_poll_failed", error=repr(exc))
            await asyncio.sleep(self.revocation_interval)

    async def poll_revocations_once(self) -> int:
        """Fetch revocation events since the last poll and drop matching cached tokens. Returns how many."""
        started = time.monotonic()
        svc = await self.service_context()
        url = f"{self.v3}/OS-REVOKE/events"
        params = {"since": self._since} if self._since else None
        async with self._session().get(url, params=params, headers={"X-Auth-Token": svc.token}) as resp:
            if resp.status == 401:
                self._service = None
            if resp.status != 200:
                self.stats["feed_errors"] += 1
                log.warning("revocation_feed_unavailable", status=resp.status)
                return 0
            events = [e for e in (await resp.json()).get("events") or [] if isinstance(e, dict)]
        self._feed_ok_at = started
        dropped = self.apply_revocations(events, started)
        for e in events:
            at = e.get("revoked_at")
            if at and (self._since is None or parse_time(str(at)) > parse_time(self._since)):
                self._since = str(at)
        return dropped

    def apply_revocations(self, events: list[dict[str, Any]], now: float | None = None) -> int:
        """Drop cached tokens matched by ``events``; remember the events a while for tokens validated
        concurrently. Returns the number of tokens dropped."""
        now = time.monotonic() if now is None else now
        if events:
            self._recent_events.extend((now, e) for e in events)
        horizon = now - max(60.0, 10 * self.revocation_interval)
        if self._recent_events and self._recent_events[0][0] < horizon:
            self._recent_events = [(t, e) for t, e in self._recent_events if t >= horizon]
        if not events:
            return 0
        # The common case (a token revoked by its audit id) is a set lookup; other events are matched in full.
        by_audit: set[str] = set()
        others: list[dict[str, Any]] = []
        for e in events:
            if [k for k in _EVENT_KEYS if e.get(k)] == ["audit_id"]:
                by_audit.add(str(e["audit_id"]))
            else:
                others.append(e)
        doomed = [
            tok for tok, c in self._cache.items()
            if (c.facts["audit_id"] & by_audit) or any(event_matches(e, c.facts, c.issued_at) for e in others)
        ]
        for tok in doomed:
            del self._cache[tok]
        if doomed:
            self.stats["revoked_dropped"] += len(doomed)
            log.info("revoked_tokens_dropped", count=len(doomed), events=len(events))
        return len(doomed)

    # ------------------------------------------------------------------ trusts

    async def cluster_trust(self, user: AuthContext) -> tuple[str, str]:
        """The trust a new cluster of ``user`` is built with: the one created for the same user, project and roles
        less than ``trust_reuse_seconds`` ago, else a new one (``create_trust``). A burst of creates then costs
        Keystone one trust, not one each; the provisioner's trust reaper deletes a trust only when no cluster uses
        it any more and the window in which it could still be handed out has passed (docs/adr/0005)."""
        if self.trust_reuse_seconds <= 0:
            return await self.create_trust(user)
        key = (user.user_id, user.project_id, user.delegated_roles)  # what the trust would say
        now = time.monotonic()
        recent = self._recent_trusts.get(key)
        if recent is not None and now - recent[0] < self.trust_reuse_seconds:
            return recent[1]
        trust = await self.create_trust(user)
        # Timed from before the creation: the window never outlasts what the provisioner's hold assumes.
        self._recent_trusts[key] = (now, trust)
        if len(self._recent_trusts) > 1024:
            self._recent_trusts = {
                k: v for k, v in self._recent_trusts.items() if now - v[0] < self.trust_reuse_seconds}
        return trust

    async def create_trust(self, user: AuthContext) -> tuple[str, str]:
        """A trust from ``user`` to the cove service user on the user's project, impersonating, with the
        user's roles minus admin. Returns (trust id, trustee user id)."""
        svc = await self.service_context()
        roles = sorted(user.delegated_roles)
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
        # debug: the caller's own line names the trust (cluster_create_accepted, cluster_trust_rotated).
        log.debug("trust_created", trust_id=trust["id"], trustor=user.user_id, project_id=user.project_id)
        return str(trust["id"]), svc.user_id


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
