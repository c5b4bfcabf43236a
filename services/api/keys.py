"""The API application's typed state: one ``web.AppKey`` per shared object, and the settings.

Resources and middlewares reach the pool, the writer, Keystone and the caches through these keys
(``request.app[POOL]``), never by importing ``app.py``; ``app.py`` builds the application and imports the
resources, so the two never import each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from aiohttp import web

from services.api.freshness import ReadCache, TemplateCache
from services.api.keystone import Keystone
from services.api.usercloud import UserCloud
from services.api.writer import Writer


@dataclass(frozen=True)
class Settings:
    admission_timeout: float = 1.5
    """How long a cluster create waits for the scheduler's answer to turn a quota refusal into a 403."""
    read_your_writes_timeout: float = 10.0
    """How long a write waits for the read model to show it before it is answered anyway (logged
    ``read_your_writes_late``): longer than a NATS leader's fail-over, after which a GET of a cluster just created
    by another API copy would otherwise be a 404."""


POOL = web.AppKey("pool", asyncpg.Pool)
WRITER = web.AppKey("writer", Writer)
SETTINGS = web.AppKey("settings", Settings)
READ_CACHE = web.AppKey("read_cache", ReadCache)
TEMPLATES = web.AppKey("template_cache", TemplateCache)
KEYSTONE = web.AppKey("keystone", Keystone)
USER_CLOUD = web.AppKey("user_cloud", UserCloud)
"""Look-ups of the user's images, flavors and keypairs (Glance, Nova) with the user's token."""
