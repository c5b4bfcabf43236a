"""The devcloud's request statistics and their application key, `STATS`: the middleware in `app.py` counts, the
admin API (`admin.py`, GET /admin/stats) reports. Both import this module, never each other."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from aiohttp import web


class Stats:
    """Requests served and the CPU they cost, for the benchmark's CPU-per-request figure."""

    def __init__(self) -> None:
        self.requests = 0
        self.by_status: dict[int, int] = {}
        self.started_cpu = time.process_time()
        self.started_wall = time.monotonic()
        self.unrouted_count = 0
        self.unrouted: deque[str] = deque(maxlen=100)  # the latest, so a flood of bad paths stays bounded

    def as_dict(self) -> dict[str, Any]:
        cpu = time.process_time() - self.started_cpu
        return {
            "requests": self.requests,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "cpu_seconds": round(cpu, 6),
            "wall_seconds": round(time.monotonic() - self.started_wall, 3),
            "cpu_ms_per_request": round(cpu * 1000 / self.requests, 4) if self.requests else None,
            "unrouted_count": self.unrouted_count,
            "unrouted": list(self.unrouted),
        }


STATS = web.AppKey("devcloud_stats", Stats)
