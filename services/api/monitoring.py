"""The API's own Prometheus gauges, read from its read model when ``/metrics`` is scraped: clusters by status."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web

from proto import statuses
from services.api.keys import POOL
from services.runtime import health, metrics


async def count_clusters(pool: asyncpg.Pool) -> dict[str, int]:
    rows = await pool.fetch("SELECT status, count(*) AS n FROM api.clusters GROUP BY status")
    return {row["status"]: int(row["n"]) for row in rows}


async def metrics_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: ``cove_clusters{status}``, every status Magnum knows present (0 when none is in it)."""
    seen: set[str] = set(_known_statuses())

    async def collect() -> None:
        counts = await count_clusters(app[POOL])
        seen.update(counts)
        for status in seen:
            metrics.CLUSTERS_BY_STATUS.labels(status).set(counts.get(status, 0))

    health.add_collector(collect)
    yield
    health.remove_collector(collect)


def _known_statuses() -> list[str]:
    return [v for k, v in vars(statuses).items() if k.isupper() and isinstance(v, str) and v.isupper()]
