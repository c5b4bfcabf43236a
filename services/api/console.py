"""The web console (docs/console.md): its built files under ``/console/``, its configuration and its login.

The console is a static page (``console/``, built by Vite into ``console/dist``, committed) that calls only the
public API, with the user's Keystone token in ``X-Auth-Token`` like any client. The API serves three things for it,
none of them behind a token (``public``, wrapped around the auth middleware, lets ``/console`` through):

* ``GET /console/config.json``: what the page needs to know from the API's own settings: Keystone's URL (shown on
  the login page, and where a token pasted in comes from), the region and the API's microversion range;
* ``POST /console/auth/tokens``: the login. The browser cannot call Keystone itself (another origin, and Keystone
  is not configured for CORS), so this forwards the body as it is, a ``password`` or ``token`` identity with a
  project scope, to Keystone's ``POST /v3/auth/tokens`` and answers Keystone's status, its JSON body and the new
  token in ``X-Subject-Token``. It forwards nothing else, keeps nothing and takes no other path: the token is then
  validated by the API on every call like any client's;
* every other ``GET /console/...``: a file of ``console/dist`` (hashed assets cached for a year), else
  ``index.html`` (the page routes with the URL's fragment; an unknown path shows the page, not a 404).

``COVE_CONSOLE_DIR`` points at another build (a packaged one); where no build exists, ``/console/`` says so.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from services.api import microversion
from services.api.keys import KEYSTONE

log = structlog.get_logger(__name__)

routes = web.RouteTableDef()

PREFIX = "/console"
DIST = Path(__file__).resolve().parents[2] / "console" / "dist"
LOGIN_TIMEOUT = 15.0
MAX_LOGIN_BODY = 16 * 1024
IDENTITY_METHODS = frozenset({"password", "token"})


def dist_dir() -> Path:
    return Path(os.environ.get("COVE_CONSOLE_DIR") or DIST)


def is_console(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def public(auth: Middleware) -> Middleware:
    """``auth`` for every path but the console's: its files, configuration and login need no token."""

    @web.middleware
    async def console_or_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if is_console(request.path):
            return await handler(request)
        return await auth(request, handler)

    return console_or_auth


@routes.get(PREFIX + "/config.json")
async def config(request: web.Request) -> web.Response:
    keystone = request.app[KEYSTONE]
    body = {
        "keystone_url": keystone.v3,
        "login_url": f"{PREFIX}/auth/tokens",
        "api": "/v1",
        "events": "/v1/events",
        "microversion": {"min": str(microversion.MIN), "max": str(microversion.MAX)},
        "user_domain": os.environ.get("COVE_CONSOLE_DOMAIN", "Default"),
    }
    return web.json_response(body, headers={"Cache-Control": "no-cache"})


def _error(status: int, detail: str) -> web.Response:
    return web.json_response({"error": {"code": status, "message": detail}}, status=status)


@routes.post(PREFIX + "/auth/tokens")
async def login(request: web.Request) -> web.Response:
    if request.content_length is not None and request.content_length > MAX_LOGIN_BODY:
        return _error(413, "The login request is too large.")
    try:
        body: Any = json.loads(await request.text())
    except ValueError:
        return _error(400, "The login request must be JSON.")
    identity = body.get("auth", {}).get("identity", {}) if isinstance(body, dict) else {}
    methods = identity.get("methods") if isinstance(identity, dict) else None
    if not isinstance(methods, list) or not methods or not set(methods) <= IDENTITY_METHODS:
        return _error(400, "Log in with a password or a token.")
    url = request.app[KEYSTONE].v3 + "/auth/tokens"
    timeout = aiohttp.ClientTimeout(total=LOGIN_TIMEOUT)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.post(url, json=body) as resp:
            text = await resp.text()
            token = resp.headers.get("X-Subject-Token")
            status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("console_login_unreachable", error=str(exc))
        return _error(503, "Keystone cannot be reached; try again later.")
    log.info("console_login", status=status, methods=methods)
    headers = {"Cache-Control": "no-store"}
    if token and status == 201:
        headers["X-Subject-Token"] = token
    return web.Response(status=status, text=text, content_type="application/json", headers=headers)


def _file_of(tail: str) -> Path | None:
    root = dist_dir().resolve()
    candidate = (root / tail).resolve()
    if tail and candidate.is_file() and candidate.is_relative_to(root):
        return candidate
    return None


@routes.get(PREFIX + "/{tail:.*}")
async def files(request: web.Request) -> web.StreamResponse:
    tail = request.match_info["tail"]
    found = _file_of(tail)
    if found is not None:
        cache = "public, max-age=31536000, immutable" if tail.startswith("assets/") else "no-cache"
        return web.FileResponse(found, headers={"Cache-Control": cache})
    if tail.startswith("assets/"):
        raise web.HTTPNotFound()
    index = dist_dir() / "index.html"
    if not index.is_file():
        return web.Response(status=503, content_type="text/plain",
                            text="The console is not built: run `make console` (docs/console.md).")
    return web.FileResponse(index, headers={"Cache-Control": "no-cache"})


@routes.get(PREFIX)
async def root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound(PREFIX + "/")
