"""HTTP helpers every emulated service shares: route tables, the request context, JSON, query parsing, paging,
and each real service's error envelope."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_json = msgspec.json.Encoder()


def new_id() -> str:
    return str(uuid.uuid4())


# --------------------------------------------------------------------------------------------------------------------
# Routes


@dataclass
class Route:
    method: str
    path: str
    handler: Handler
    public: bool = False  # discovery documents need no token


class Routes:
    """A route table for one emulated service. Every path is served with and without a trailing slash, because
    clients ask for both (`/volume/v3/` and `/compute/v2.1`)."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.routes: list[Route] = []

    def route(self, method: str, path: str, *, public: bool = False) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.routes.append(Route(method, path, handler, public))
            return handler

        return register

    def get(self, path: str, *, public: bool = False) -> Callable[[Handler], Handler]:
        return self.route("GET", path, public=public)

    def post(self, path: str) -> Callable[[Handler], Handler]:
        return self.route("POST", path)

    def put(self, path: str) -> Callable[[Handler], Handler]:
        return self.route("PUT", path)

    def patch(self, path: str) -> Callable[[Handler], Handler]:
        return self.route("PATCH", path)

    def delete(self, path: str) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path)

    def head(self, path: str) -> Callable[[Handler], Handler]:
        return self.route("HEAD", path)


ROUTE_SERVICE = "devcloud_service"
ROUTE_PUBLIC = "devcloud_public"


def install(app: web.Application, tables: Iterable[Routes]) -> None:
    for table in tables:
        for r in table.routes:
            paths = {r.path, r.path.rstrip("/") or "/", r.path.rstrip("/") + "/"}
            for path in sorted(paths):
                resource = app.router.add_resource(path)
                route = resource.add_route(r.method, r.handler)
                setattr(route, ROUTE_SERVICE, table.service)
                setattr(route, ROUTE_PUBLIC, r.public)


# --------------------------------------------------------------------------------------------------------------------
# The caller


@dataclass(frozen=True)
class Ctx:
    """Who is calling: from the token, never from the URL."""

    token: str
    user_id: str
    user_name: str
    project_id: str | None
    project_name: str | None
    roles: tuple[str, ...]
    trust_id: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    @property
    def can_write(self) -> bool:
        return "admin" in self.roles or "member" in self.roles


CTX = web.RequestKey("devcloud_ctx", Ctx)


def ctx(request: web.Request) -> Ctx:
    return request[CTX]


# --------------------------------------------------------------------------------------------------------------------
# JSON in and out


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=_json.encode(body), status=status, content_type="application/json", headers=headers)


async def read_json(request: web.Request, error: Callable[[int, str], Exception]) -> dict[str, Any]:
    """The request body as a JSON object; a body that is not one is a 400 in the service's own envelope."""
    raw = await request.read()
    if not raw:
        return {}
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise error(400, "Malformed request body") from None
    if not isinstance(body, dict):
        raise error(400, "Malformed request body: expected a JSON object")
    return body


def drop_nulls(d: dict[str, Any]) -> dict[str, Any]:
    """OSC sends explicit nulls for every unset field; a null means absent."""
    return {k: v for k, v in d.items() if v is not None}


# --------------------------------------------------------------------------------------------------------------------
# Query strings: the SDK and OSC send literal "None", "False", "True"


def qbool(value: str | None, default: bool | None = None) -> bool | None:
    if value is None or value.lower() in ("none", ""):
        return default
    return value.lower() in ("true", "1", "yes", "on")


def qstr(request: web.Request, name: str) -> str | None:
    value = request.query.get(name)
    if value is None or value == "None":
        return None
    return value


def qint(request: web.Request, name: str, error: Callable[[int, str], Exception]) -> int | None:
    value = qstr(request, name)
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        raise error(400, f"Invalid {name} parameter: {value!r}") from None
    if n < 0:
        raise error(400, f"Invalid {name} parameter: {value!r}")
    return n


def tag_filter(items: Iterable[dict[str, Any]], request: web.Request) -> list[dict[str, Any]]:
    """Neutron/Octavia style `tags` (all of), `tags-any`, `not-tags`, `not-tags-any`."""
    out = list(items)
    for key, test in (
        ("tags", lambda want, have: want <= have),
        ("tags-any", lambda want, have: bool(want & have)),
        ("not-tags", lambda want, have: not want <= have),
        ("not-tags-any", lambda want, have: not want & have),
    ):
        raw = request.query.getall(key, [])
        if raw:
            want = {t for part in raw for t in part.split(",") if t}
            out = [i for i in out if test(want, set(i.get("tags") or ()))]
    return out


@dataclass
class Page:
    items: list[dict[str, Any]]
    next_marker: str | None  # the id to continue after, when the page is full


def paginate(
    items: Sequence[dict[str, Any]],
    *,
    limit: int | None,
    marker: str | None,
    max_limit: int,
    error: Callable[[int, str], Exception],
    key: str = "id",
) -> Page:
    """Items after `marker`, at most `limit` (capped at `max_limit`); an unknown marker is a 400, as in Nova,
    Cinder and Glance. `next_marker` is set exactly when the page is full and more may follow."""
    start = 0
    if marker is not None:
        for i, item in enumerate(items):
            if item[key] == marker:
                start = i + 1
                break
        else:
            raise error(400, f"marker [{marker}] not found")
    size = max_limit if limit is None else min(limit, max_limit)
    page = list(items[start : start + size])
    full = len(page) == size and size > 0 and (limit is not None or start + size < len(items))
    return Page(page, page[-1][key] if full and page else None)


def sort_items(
    items: list[dict[str, Any]], sort_key: str | None, sort_dir: str | None, default_key: str = "created_at"
) -> list[dict[str, Any]]:
    key = sort_key or default_key
    reverse = (sort_dir or "desc").lower() == "desc"
    return sorted(items, key=lambda i: (i.get(key) is None, str(i.get(key, ""))), reverse=reverse)


def next_link(request: web.Request, base_url: str, marker: str, limit: int | None) -> str:
    """An absolute href to the next page, carrying the caller's own filters."""
    query = {k: v for k, v in request.query.items() if k not in ("marker", "limit")}
    query["marker"] = marker
    if limit is not None:
        query["limit"] = str(limit)
    from urllib.parse import urlencode

    return f"{base_url}{request.path}?{urlencode(query)}"


# --------------------------------------------------------------------------------------------------------------------
# Errors in each real service's own envelope (the SDK reads `message` or `faultstring`)


class ApiError(web.HTTPException):
    """An error response with a ready body; raised from handlers, rendered by aiohttp as is."""

    def __init__(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self.status_code = status
        super().__init__(
            body=_json.encode(body), content_type="application/json", headers=headers
        )


_NOVA_KEYS = {
    400: "badRequest",
    401: "unauthorized",
    403: "forbidden",
    404: "itemNotFound",
    409: "conflictingRequest",
    413: "overLimit",
    429: "overLimit",
    500: "computeFault",
    501: "notImplemented",
    503: "serviceUnavailable",
}


def nova_error(status: int, message: str) -> ApiError:
    """Nova's and Cinder's envelope: {"itemNotFound": {"code": 404, "message": "..."}}."""
    return ApiError(status, {_NOVA_KEYS.get(status, "computeFault"): {"code": status, "message": message}})


_NEUTRON_TYPES = {400: "BadRequest", 401: "NotAuthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
                  503: "ServiceUnavailable"}


def neutron_error(status: int, message: str, type_: str | None = None) -> ApiError:
    return ApiError(
        status, {"NeutronError": {"type": type_ or _NEUTRON_TYPES.get(status, "NeutronError"),
                                  "message": message, "detail": ""}}
    )


def octavia_error(status: int, message: str) -> ApiError:
    return ApiError(
        status, {"faultcode": "Client" if status < 500 else "Server", "faultstring": message, "debuginfo": None}
    )


def keystone_error(status: int, message: str) -> ApiError:
    titles = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 409: "Conflict"}
    return ApiError(status, {"error": {"code": status, "message": message,
                                       "title": titles.get(status, "Error")}})


def glance_error(status: int, message: str) -> ApiError:
    return ApiError(status, {"code": status, "title": "Error", "message": message})


ERRORS: dict[str, Callable[..., ApiError]] = {
    "identity": keystone_error,
    "compute": nova_error,
    "volume": nova_error,
    "block-storage": nova_error,
    "network": neutron_error,
    "load-balancer": octavia_error,
    "image": glance_error,
    "admin": keystone_error,
}


def error_for(service: str) -> Callable[..., ApiError]:
    return ERRORS.get(service, keystone_error)


_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")


def is_uuid(value: str) -> bool:
    return bool(_UUID.match(value))
