"""Wiring of the API service: its projection (every event, into schema ``api``) and the Magnum v1 HTTP server.

Configuration (environment, via ``ServiceConfig.extra``):
    COVE_API_PORT            Magnum API port (default 9511; 0 = any free port)
    COVE_API_HOST            the address it binds (default 127.0.0.1; 0.0.0.0 or a host's address in production)
    COVE_API_TLS_CERT / COVE_API_TLS_KEY   PEM certificate (chain) and key: serve HTTPS (both or neither)
    COVE_API_REUSE_PORT      1: bind with SO_REUSEPORT, so several API copies on one host share the port and the
                             kernel spreads connections over them (`make run-cluster`)
    COVE_AUTH_URL            identity root, e.g. http://127.0.0.1:8775/identity (COVE_CLOUD_AUTH_URL also read)
    COVE_SERVICE_USER / COVE_SERVICE_PASSWORD / COVE_SERVICE_PROJECT   the service user (cove / cove-pass / service)
    COVE_TOKEN_CACHE_TTL     cap on how long a validated token is trusted (default: the token's life; revocation
                             events polled from Keystone drop it sooner)
    COVE_TOKEN_REVOCATION_INTERVAL   seconds between polls of Keystone's revocation events (default 1)
    COVE_API_POLICY_FILE     operator policy file (YAML rule -> expression) over Magnum's defaults
    COVE_API_ADMISSION_TIMEOUT   seconds a create waits for the quota decision (default 1.5)
    COVE_API_READ_POOL_SIZE  connections of the handlers' read pool (default 8; the projection has its own)
    COVE_TRUST_REUSE_SECONDS  a new cluster gets the trust created for the same user, project and roles this many
                             seconds ago or less (default 30; 0 = a trust per cluster; proto/trusts.py)
"""

from __future__ import annotations

import ssl
from pathlib import Path

import asyncpg
import structlog
from aiohttp import web

from proto import subjects, trusts
from services.api import projection, store
from services.api.app import Settings, build_app
from services.api.decisions import StoredDecisions
from services.api.freshness import Freshness, ReadCache, TemplateCache
from services.api.keystone import Keystone, ServiceCredentials
from services.api.writer import Writer
from services.runtime import db
from services.runtime.service import Service, ServiceConfig

log = structlog.get_logger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"


class ApiServer:
    """The Magnum v1 HTTP server inside the service; ``port`` is the bound port once started."""

    def __init__(self, config: ServiceConfig) -> None:
        extra = config.extra
        self.host = extra.get("COVE_API_HOST") or "127.0.0.1"
        self.requested_port = int(extra.get("COVE_API_PORT", "9511"))
        self.reuse_port = extra.get("COVE_API_REUSE_PORT", "").lower() in ("1", "true", "yes")
        self.ssl_context = tls_context(extra)
        self.port: int | None = None
        auth_url = extra.get("COVE_AUTH_URL") or extra.get("COVE_CLOUD_AUTH_URL") or "http://127.0.0.1:8775/identity"
        self.keystone = Keystone(
            ServiceCredentials(
                auth_url=auth_url,
                username=extra.get("COVE_SERVICE_USER", "cove"),
                password=extra.get("COVE_SERVICE_PASSWORD", "cove-pass"),
                project=extra.get("COVE_SERVICE_PROJECT", "service"),
            ),
            ttl=float(extra["COVE_TOKEN_CACHE_TTL"]) if extra.get("COVE_TOKEN_CACHE_TTL") else None,
            revocation_interval=float(extra.get("COVE_TOKEN_REVOCATION_INTERVAL", "1")),
            trust_reuse_seconds=trusts.reuse_seconds(extra),
        )
        self.settings = Settings(
            admission_timeout=float(extra.get("COVE_API_ADMISSION_TIMEOUT", "1.5")),
            read_your_writes_timeout=float(extra.get("COVE_API_READ_YOUR_WRITES_TIMEOUT", "10.0")),
        )
        self._runner: web.AppRunner | None = None
        self.freshness: Freshness | None = None
        self.decisions: StoredDecisions | None = None
        self.read_pool: asyncpg.Pool | None = None
        self.read_pool_size = int(extra.get("COVE_API_READ_POOL_SIZE", "8"))

    async def start(self, svc: Service) -> None:
        assert svc.bus is not None and svc.pool is not None
        self.freshness = Freshness(svc.pool, store.PROJECTION)
        await self.freshness.start()
        self.decisions = StoredDecisions(svc.bus)
        await self.decisions.start()
        writer = Writer(svc.bus, svc.pool, read_your_writes_timeout=self.settings.read_your_writes_timeout,
                        freshness=self.freshness, decisions=self.decisions)
        self.read_pool = await asyncpg.create_pool(
            svc.config.database_url, min_size=2, max_size=self.read_pool_size, connection_class=db.NoResetConnection,
            server_settings={"search_path": "api, public", "application_name": "cove-api-read"},
        )
        app = build_app(pool=self.read_pool, writer=writer, keystone=self.keystone, settings=self.settings,
                        read_cache=ReadCache(self.freshness), template_cache=TemplateCache(self.freshness))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.requested_port, ssl_context=self.ssl_context,
                           reuse_port=self.reuse_port or None)
        await site.start()
        server = site._server
        assert server is not None
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        svc.health.add_check("api", lambda: self._runner is not None)
        log.info("api_listening", host=self.host, port=self.port, tls=self.ssl_context is not None,
                 reuse_port=self.reuse_port)

    async def stop(self, svc: Service) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.decisions is not None:
            await self.decisions.stop()
            self.decisions = None
        if self.freshness is not None:
            await self.freshness.close()
            self.freshness = None
        if self.read_pool is not None:
            await self.read_pool.close()
            self.read_pool = None
        await self.keystone.close()

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context is not None else 'http'}://{self.host}:{self.port}"


def tls_context(extra: dict[str, str]) -> ssl.SSLContext | None:
    """The server's TLS context from ``COVE_API_TLS_CERT`` and ``COVE_API_TLS_KEY`` (TLS 1.2 or later), or None
    when neither is set; one without the other is a configuration error naming the missing one."""
    cert, key = extra.get("COVE_API_TLS_CERT", ""), extra.get("COVE_API_TLS_KEY", "")
    if not cert and not key:
        return None
    if not cert or not key:
        raise ValueError(f"{'COVE_API_TLS_KEY' if cert else 'COVE_API_TLS_CERT'} is not set: "
                         "COVE_API_TLS_CERT and COVE_API_TLS_KEY go together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def build_service(config: ServiceConfig) -> tuple[Service, ApiServer]:
    svc = Service(config, schema="api", migrations_dir=MIGRATIONS)
    svc.add_projection(store.PROJECTION, projection.handle, [subjects.EVENTS_ALL], batch_handler=projection.handle_batch)
    server = ApiServer(config)
    svc.on_startup(server.start)
    svc.on_cleanup(server.stop)
    return svc, server
