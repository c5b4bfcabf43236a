"""The devcloud application: every emulated service on one port under its own path prefix (devstack's layout),
with the cross-cutting behaviour of a real cloud in middlewares: request ids, authentication, an API rate limit
and injected API faults."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

import structlog
from aiohttp import web

from deploy.devcloud import coe
from deploy.devcloud.config import ApiFault, CloudConfig
from deploy.devcloud.state import CLOUD, Cloud
from deploy.devcloud.stats import STATS, Stats
from deploy.devcloud.web import (
    CTX,
    ROUTE_PUBLIC,
    ROUTE_SERVICE,
    Handler,
    error_for,
    install,
    keystone_error,
)

log = structlog.get_logger("devcloud")


class RateLimiter:
    """A token bucket over the whole cloud: `rate` requests per second, bursts up to one second's worth."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.stamp = time.monotonic()

    def allow(self) -> bool:
        if self.rate <= 0:
            return True
        t = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (t - self.stamp) * self.rate)
        self.stamp = t
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


RATE = web.AppKey("devcloud_rate", RateLimiter)


class RequestLog:
    """`--request-log FILE`: one line per request, "METHOD TEMPLATE STATUS", where TEMPLATE is the canonical path of
    the aiohttp route that served it (e.g. `/compute/v2.1/servers/{server_id}`). A request no route matched logs its
    raw path and a fourth field `unrouted`. The regression guard compares the (method, template) pairs an SDK/CLI run
    used with a golden list (tests/devcloud/golden_routes.txt)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.handle: IO[str] | None = None

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - closed in cleanup_ctx

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def write(self, request: web.Request, status: int) -> None:
        if self.handle is None:
            return
        resource = getattr(request.match_info.route, "resource", None)
        if resource is None:
            self.handle.write(f"{request.method} {request.path} {status} unrouted\n")
        else:
            self.handle.write(f"{request.method} {resource.canonical} {status}\n")


REQUEST_LOG = web.AppKey("devcloud_request_log", RequestLog)


def _route_service(request: web.Request) -> tuple[str, bool]:
    route = request.match_info.route
    return getattr(route, ROUTE_SERVICE, ""), getattr(route, ROUTE_PUBLIC, False)


def matching_fault(cloud: Cloud, service: str, request: web.Request) -> ApiFault | None:
    for fault in cloud.faults.api:
        if fault.count == 0:
            continue
        if fault.service not in ("*", service):
            continue
        if fault.method not in ("*", request.method):
            continue
        if fault.path and not re.search(fault.path, request.path):
            continue
        if fault.probability < 1.0 and cloud.rng.random() >= fault.probability:
            continue
        if fault.count > 0:
            fault.count -= 1
        return fault
    return None


@web.middleware
async def cloud_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    cloud = request.app[CLOUD]
    stats = request.app[STATS]
    stats.requests += 1
    request_id = f"req-{uuid.uuid4()}"
    service, public = _route_service(request)
    headers = {"x-openstack-request-id": request_id}
    if service == "compute":
        headers["x-compute-request-id"] = request_id
    status = 499  # stays so only when the client went away mid-request (the handler was cancelled)
    try:
        if not service:
            stats.unrouted_count += 1
            stats.unrouted.append(f"{request.method} {request.path}")
            log.warning("unrouted_request", method=request.method, path=request.path)
        elif service != "admin":
            if not request.app[RATE].allow():
                raise error_for(service)(429, "Rate limit exceeded: too many requests.")
            fault = matching_fault(cloud, service, request)
            if fault is not None:
                log.info("fault_injected", service=service, path=request.path, status=fault.status,
                         hang=fault.hang_seconds)
                if fault.hang_seconds:
                    await asyncio.sleep(fault.hang_seconds)
                if fault.status:
                    raise error_for(service)(fault.status, f"Injected fault: {fault.status}")
        if service and not public:
            token = cloud.identity.validate(request.headers.get("X-Auth-Token"))
            if token is None:
                raise keystone_error(401, "The request you have made requires authentication.")
            request[CTX] = cloud.identity.context(token)
        response = await handler(request)
        status = response.status
    except web.HTTPException as exc:
        exc.headers.update(headers)
        status = exc.status
        stats.by_status[exc.status] = stats.by_status.get(exc.status, 0) + 1
        raise
    except Exception:
        log.exception("unhandled_error", method=request.method, path=request.path)
        status = 500
        stats.by_status[500] = stats.by_status.get(500, 0) + 1
        raise error_for(service)(500, "An unexpected error prevented the server from fulfilling your request.")
    finally:
        request_log = request.app.get(REQUEST_LOG)
        if request_log is not None:
            request_log.write(request, status)
    response.headers.update(headers)
    stats.by_status[response.status] = stats.by_status.get(response.status, 0) + 1
    return response


def service_modules() -> list[Any]:
    """Each emulated service is one module with a `routes` table and, where it has seeded objects, `seed(cloud)`."""
    from deploy.devcloud import admin, compute, identity, image, loadbalancer, network, volume

    return [identity, compute, image, network, loadbalancer, volume, admin]


async def _sweeper(app: web.Application) -> Any:
    """Background upkeep: forget expired tokens every minute."""
    cloud = app[CLOUD]

    async def sweep() -> None:
        while True:
            await asyncio.sleep(60)
            cloud.identity.sweep()

    task = asyncio.create_task(sweep())
    yield
    task.cancel()
    cloud.cancel_timers()


async def _request_log(app: web.Application) -> AsyncIterator[None]:
    request_log = app[REQUEST_LOG]
    request_log.open()
    yield
    request_log.close()


def build_app(
    config: CloudConfig, public_url: str, magnum_url: str | None = None, request_log: str | Path | None = None
) -> web.Application:
    """The devcloud as an aiohttp application. `request_log`: a file to append "METHOD TEMPLATE STATUS" lines to."""
    app = web.Application(middlewares=[cloud_middleware], client_max_size=8 * 1024 * 1024)
    cloud = Cloud(config, public_url, magnum_url)
    app[CLOUD] = cloud
    app[STATS] = Stats()
    app[RATE] = RateLimiter(config.timing.api_rate_limit)
    modules = service_modules()
    install(app, [m.routes for m in modules])
    for module in modules:
        seed = getattr(module, "seed", None)
        if seed is not None:
            seed(cloud)
    app.cleanup_ctx.append(_sweeper)
    app.cleanup_ctx.append(coe.serve)  # stand-ins for booted clusters' API endpoints
    if request_log is not None:
        app[REQUEST_LOG] = RequestLog(request_log)
        app.cleanup_ctx.append(_request_log)
    return app
