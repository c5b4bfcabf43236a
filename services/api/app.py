"""The aiohttp application: its state (``keys.py``), middlewares and the resources' routes."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from services.api import audit, console, monitoring, openapi, policy
from services.api.addons import ADDONS, AddonCatalogClient
from services.api.freshness import ReadCache, TemplateCache
from services.api.keys import KEYSTONE, POOL, READ_CACHE, SETTINGS, TEMPLATES, USER_CLOUD, WRITER, Settings
from services.api.keystone import Keystone
from services.api.middleware import MIDDLEWARES
from services.api.resources import (
    certificates,
    cluster_actions,
    clusters,
    clustertemplates,
    controlplane,
    credentials,
    events,
    federations,
    mservices,
    nodegroups,
    quotas,
    root,
    stats,
    usage,
)
from services.api.routing import slash_optional
from services.api.usercloud import UserCloud
from services.api.writer import Writer
from services.runtime import tracing

__all__ = ["Settings", "build_app"]


def build_app(*, pool: asyncpg.Pool, writer: Writer, keystone: Keystone, settings: Settings | None = None,
              read_cache: ReadCache | None = None, template_cache: TemplateCache | None = None
              ) -> web.Application:
    # A server span around each request; the audit middleware sits right inside the request id's: it sees every
    # write's final response.
    middlewares = [tracing.http_server_middleware(), MIDDLEWARES[0], audit.audit_middleware, *MIDDLEWARES[1:]]
    middlewares[-1] = console.public(middlewares[-1])  # the web console's files and login need no token
    app = web.Application(middlewares=middlewares, client_max_size=1024**2)
    app[POOL] = pool
    app[WRITER] = writer
    app[KEYSTONE] = keystone
    app[USER_CLOUD] = UserCloud(keystone)
    app[ADDONS] = AddonCatalogClient(writer)
    app[SETTINGS] = settings or Settings()
    app[READ_CACHE] = read_cache or ReadCache(None)
    app[TEMPLATES] = template_cache or TemplateCache(None)
    app[policy.POLICY] = policy.load()
    app.add_routes(root.routes)
    app.add_routes(openapi.routes)
    app.add_routes(clustertemplates.routes)
    app.add_routes(clusters.routes)
    app.add_routes(nodegroups.routes)
    app.add_routes(cluster_actions.routes)
    for extra in (certificates, quotas, stats, mservices, federations, credentials, events, usage):
        app.add_routes(extra.routes)
    app.add_routes(controlplane.routes)
    app.add_routes(console.routes)
    app.cleanup_ctx.append(audit.auditor_ctx)
    app.cleanup_ctx.append(events.hub_ctx)
    app.cleanup_ctx.append(monitoring.metrics_ctx)
    slash_optional(app.router)
    return app
