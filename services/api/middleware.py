"""The HTTP edge's cross-cutting concerns, one middleware each: request ids, the Magnum error body,
microversions and Keystone token auth. Handlers read ``request[CONTEXT]`` and ``request[VERSION]``."""

from __future__ import annotations

import uuid

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from services.api import microversion, policy
from services.api.errors import ApiError, bad_request, error_body
from services.api.keys import KEYSTONE
from services.api.keystone import AuthContext
from services.api.routing import canonical

log = structlog.get_logger(__name__)

REQUEST_ID = web.RequestKey("request_id", str)
CONTEXT = web.RequestKey("auth_context", AuthContext)
VERSION = web.RequestKey("microversion", microversion.Microversion)

PUBLIC_PATHS = frozenset({"/", "/v1", "/v1/openapi.json"})  # slash-less: see routing.canonical
REQUEST_ID_HEADER = "X-Openstack-Request-Id"


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    rid = f"req-{uuid.uuid4()}"
    request[REQUEST_ID] = rid
    with structlog.contextvars.bound_contextvars(request_id=rid):
        response = await handler(request)
    response.headers[REQUEST_ID_HEADER] = rid
    return response


def _error_response(request: web.Request, status: int, detail: str, extra: dict[str, object] | None = None,
                    headers: dict[str, str] | None = None) -> web.Response:
    body = error_body(status, detail, request.get(REQUEST_ID, ""), extra)
    return web.json_response(body, status=status, headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        if "\x00" in request.path or "%00" in request.query_string or "\x00" in request.query_string:
            raise bad_request("Invalid input: a NUL character is not allowed in the URL.")
        return await handler(request)
    except ApiError as exc:
        if exc.status >= 500:
            log.error("request_failed", status=exc.status, detail=exc.detail)
        return _error_response(request, exc.status, exc.detail, exc.extra, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        detail = {
            404: "The resource could not be found.",
            405: "The method is not allowed for this resource.",
        }.get(exc.status, exc.reason)
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return _error_response(request, exc.status, detail, headers=headers)
    except Exception:
        log.exception("unhandled_error", path=request.path, method=request.method)
        return _error_response(request, 500, "An internal error occurred. Please try again later.")


@web.middleware
async def microversion_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/v1"):
        return await handler(request)
    try:
        version, service = microversion.parse(request.headers.get(microversion.HEADER))
    except ApiError as exc:
        exc.headers.update(microversion.response_headers(microversion.MIN, microversion.DEFAULT_SERVICE))
        raise
    request[VERSION] = version
    try:
        response = await handler(request)
    except ApiError as exc:
        exc.headers.update(microversion.response_headers(version, service))
        raise
    response.headers.update(microversion.response_headers(version, service))
    return response


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if canonical(request.path) in PUBLIC_PATHS and request.method in ("GET", "HEAD"):
        return await handler(request)
    keystone = request.app[KEYSTONE]
    ctx = await keystone.validate(request.headers.get("X-Auth-Token"))
    request[CONTEXT] = ctx
    policy.use(request.app)
    with structlog.contextvars.bound_contextvars(user_id=ctx.user_id, project_id=ctx.project_id):
        return await handler(request)


def context(request: web.Request) -> AuthContext:
    return request[CONTEXT]


def version(request: web.Request) -> microversion.Microversion:
    return request.get(VERSION, microversion.MIN)


def base_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


MIDDLEWARES = (request_id_middleware, error_middleware, microversion_middleware, auth_middleware)
