"""/healthz, /readyz and /metrics on 127.0.0.1:<COVE_HTTP_PORT> (0 = ephemeral; the bound port is reported)."""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

log = structlog.get_logger(__name__)

Check = Callable[[], bool | Awaitable[bool]]
Collector = Callable[[], Awaitable[None]]

_collectors: list[Collector] = []
"""Refreshed before each ``/metrics`` answer (gauges read from the database or NATS at scrape time). Process-wide,
like prometheus_client's registry: the API's application registers its own without reaching the service."""


def add_collector(collector: Collector) -> None:
    _collectors.append(collector)


def remove_collector(collector: Collector) -> None:
    if collector in _collectors:
        _collectors.remove(collector)


async def collect(extra: list[Collector] | None = None) -> None:
    """Run every collector (and ``extra``), each at most ``COLLECT_TIMEOUT`` seconds; one that fails leaves its
    last values."""
    for collector in (*_collectors, *(extra or ())):  # a copy: a collector may be removed while another runs
        try:
            await asyncio.wait_for(collector(), COLLECT_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - a scrape answers with what it has
            log.warning("metrics_collector_failed", collector=getattr(collector, "__qualname__", ""), error=repr(exc))


COLLECT_TIMEOUT = 2.0


class HealthServer:
    """``/healthz`` answers 200 while the process runs; ``/readyz`` 200 only when every check passes (503 and
    the failing names otherwise); ``/metrics`` is the Prometheus exposition of the process registry.

    When ``port_file`` is given (default ``$COVE_HTTP_PORT_FILE``) the bound port is written there.
    """

    def __init__(
        self, service: str, port: int = 0, *, host: str = "127.0.0.1", port_file: str | Path | None = None
    ) -> None:
        self.service = service
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self.checks: dict[str, Check] = {}
        self.collectors: list[Collector] = []
        env_file = os.environ.get("COVE_HTTP_PORT_FILE")
        self.port_file = Path(port_file) if port_file else (Path(env_file) if env_file else None)
        self._runner: web.AppRunner | None = None

    def add_check(self, name: str, check: Check) -> None:
        self.checks[name] = check

    def add_collector(self, collector: Collector) -> None:
        """Refreshed before each of this server's ``/metrics`` answers (like the process-wide ones)."""
        self.collectors.append(collector)

    async def readiness(self) -> dict[str, bool]:
        results: dict[str, bool] = {}
        for name, check in self.checks.items():
            try:
                value = check()
                if inspect.isawaitable(value):
                    value = await value
                results[name] = bool(value)
            except Exception:  # noqa: BLE001 - a failing check is "not ready"
                results[name] = False
        return results

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "alive", "service": self.service})

    async def _readyz(self, _: web.Request) -> web.Response:
        results = await self.readiness()
        ready = all(results.values())
        return web.json_response(
            {"status": "ready" if ready else "not ready", "service": self.service, "checks": results},
            status=200 if ready else 503,
        )

    async def _metrics(self, _: web.Request) -> web.Response:
        await collect(self.collectors)
        resp = web.Response(body=generate_latest(REGISTRY))
        resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return resp

    async def start(self) -> int:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.requested_port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]
        if self.port_file is not None:
            tmp = self.port_file.with_suffix(".tmp")
            tmp.write_text(str(self.port))
            tmp.replace(self.port_file)
        log.info("health_listening", host=self.host, port=self.port, port_file=str(self.port_file or ""))
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
