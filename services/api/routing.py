"""One router rule: every route answers the same with and without a trailing slash, as Magnum's pecan does.

python-magnumclient lists with query options as ``GET /v1/clusters/?limit=1`` and patches a cluster as
``PATCH /v1/clusters/<id>/?rollback=True``; other tools strip the slash. Resources declare each route once, in
its slash-less form (``/v1/clusters``); ``slash_optional`` registers the other spelling of every route with the
same handler, so no resource spells both and no new route can forget one. The twin is a real route, not a
redirect: a redirect costs a round trip and some clients do not follow it for a PATCH or POST.
"""

from __future__ import annotations

from aiohttp import web


def twin(path: str) -> str | None:
    """The other spelling of ``path``: ``/v1/x`` <-> ``/v1/x/``; ``None`` for the root ``/``."""
    if path == "/":
        return None
    return path[:-1] if path.endswith("/") else path + "/"


def canonical(path: str) -> str:
    """The slash-less spelling under which a route is described (the OpenAPI document, policy tables)."""
    return path if path == "/" else path.rstrip("/")


def slash_optional(router: web.UrlDispatcher) -> None:
    """Register the twin of every route that lacks one. Call after every resource's routes are added."""
    served = {(route.method, route.resource.canonical) for route in router.routes() if route.resource}
    for route in list(router.routes()):
        if route.resource is None:
            continue
        other = twin(route.resource.canonical)
        if other is None or (route.method, other) in served:
            continue
        router.add_route(route.method, other, route.handler)  # HEAD too: aiohttp gave each GET its own
        served.add((route.method, other))
