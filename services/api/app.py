"""The aiohttp application: typed app state, middlewares and the resources' routes."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from aiohttp import web

from services.api import openapi, policy
from services.api.freshness import ReadCache, TemplateCache
from services.api.keystone import Keystone
from services.api.middleware import KEYSTONE, MIDDLEWARES
from services.api.routing import slash_optional
from services.api.writer import Writer


@dataclass(frozen=True)
class Settings:
    admission_timeout: float = 1.5
    """How long a cluster create waits for the scheduler's answer to turn a quota refusal into a 403."""
    read_your_writes_timeout: float = 2.0


POOL = web.AppKey("pool", asyncpg.Pool)
WRITER = web.AppKey("writer", Writer)
SETTINGS = web.AppKey("settings", Settings)
READ_CACHE = web.AppKey("read_cache", ReadCache)
TEMPLATES = web.AppKey("template_cache", TemplateCache)


def build_app(*, pool: asyncpg.Pool, writer: Writer, keystone: Keystone, settings: Settings | None = None,
              read_cache: ReadCache | None = None, template_cache: TemplateCache | None = None
              ) -> web.Application:
    from services.api.resources import (
        certificates,
        clusters,
        clustertemplates,
        credentials,
        federations,
        mservices,
        quotas,
        root,
        stats,
    )

    app = web.Application(middlewares=list(MIDDLEWARES), client_max_size=1024**2)
    app[POOL] = pool
    app[WRITER] = writer
    app[KEYSTONE] = keystone
    app[SETTINGS] = settings or Settings()
    app[READ_CACHE] = read_cache or ReadCache(None)
    app[TEMPLATES] = template_cache or TemplateCache(None)
    app[policy.POLICY] = policy.load()
    app.add_routes(root.routes)
    app.add_routes(openapi.routes)
    app.add_routes(clustertemplates.routes)
    app.add_routes(clusters.routes)
    from services.api.resources import cluster_actions, nodegroups

    app.add_routes(nodegroups.routes)
    app.add_routes(cluster_actions.routes)
    for extra in (certificates, quotas, stats, mservices, federations, credentials):
        app.add_routes(extra.routes)
    slash_optional(app.router)
    return app
