"""Compute's HTTP plumbing: the route table, microversion negotiation, discovery and the helpers every handler
uses (policy, paging links, the caller's project)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from deploy.devcloud.compute.model import ERR, MAX_VERSION, MIN_VERSION, MV, PREFIX, V21, Version
from deploy.devcloud.state import Cloud, cloud_of
from deploy.devcloud.web import ApiError, Ctx, Routes, json_response, next_link, qbool

routes = Routes("compute")


# --------------------------------------------------------------------------------------------------------------------
# Microversions


def parse_version(raw: str) -> Version:
    """'2.61' -> (2, 61); 'latest' -> the maximum; out of [min, max] -> 406; garbage -> 400."""
    raw = raw.strip()
    if raw.lower() == "latest":
        return MAX_VERSION
    m = re.fullmatch(r"(\d+)\.(\d+)", raw)
    if not m:
        raise ERR(400, f"API Version String {raw} is of invalid format. Must be of format MajorNum.MinorNum.")
    version = (int(m.group(1)), int(m.group(2)))
    if not MIN_VERSION <= version <= MAX_VERSION:
        raise ApiError(
            406,
            {
                "computeFault": {
                    "code": 406,
                    "message": f"Version {raw} is not supported by the API. Minimum is "
                    f"{MIN_VERSION[0]}.{MIN_VERSION[1]} and maximum is {MAX_VERSION[0]}.{MAX_VERSION[1]}.",
                }
            },
        )
    return version


def negotiate(request: web.Request) -> Version:
    """The requested microversion: `OpenStack-API-Version: compute X` wins over `X-OpenStack-Nova-API-Version: X`;
    none means 2.1."""
    header = request.headers.get("OpenStack-API-Version")
    if header:
        for item in header.split(","):
            bits = item.split()
            if len(bits) == 2 and bits[0].lower() == "compute":
                return parse_version(bits[1])
    legacy = request.headers.get("X-OpenStack-Nova-API-Version")
    if legacy:
        return parse_version(legacy)
    return MIN_VERSION


def _version_headers(v: Version) -> dict[str, str]:
    text = f"{v[0]}.{v[1]}"
    return {
        "OpenStack-API-Version": f"compute {text}",
        "X-OpenStack-Nova-API-Version": text,
        "Vary": "OpenStack-API-Version, X-OpenStack-Nova-API-Version",
    }


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _versioned(fn: Handler) -> Handler:
    """Negotiate the microversion, keep it on the request, echo it on the response (errors included)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        version = negotiate(request)
        request[MV] = version
        headers = _version_headers(version)
        try:
            response = await fn(request)
        except web.HTTPException as exc:
            exc.headers.update(headers)
            raise
        response.headers.update(headers)
        return response

    handler.__name__ = fn.__name__
    handler.__doc__ = fn.__doc__
    return handler


def _api(method: str, path: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        routes.route(method, f"{V21}{path}")(_versioned(fn))
        return fn

    return register


def mv(request: web.Request) -> Version:
    return request.get(MV, MIN_VERSION)


def at_least(request: web.Request, minor: int) -> bool:
    return mv(request) >= (2, minor)


# --------------------------------------------------------------------------------------------------------------------
# Discovery (no token)


def _version_doc(cloud: Cloud) -> dict[str, Any]:
    return {
        "id": "v2.1",
        "status": "CURRENT",
        "version": f"{MAX_VERSION[0]}.{MAX_VERSION[1]}",
        "min_version": f"{MIN_VERSION[0]}.{MIN_VERSION[1]}",
        "updated": "2013-07-23T11:33:21Z",
        "links": [{"rel": "self", "href": cloud.url(f"{V21}/")}],
        "media-types": [{"base": "application/json", "type": "application/vnd.openstack.compute+json;version=2.1"}],
    }


@routes.get(V21, public=True)
async def version(request: web.Request) -> web.Response:
    return json_response({"version": _version_doc(cloud_of(request))})


@routes.get(PREFIX, public=True)
async def versions(request: web.Request) -> web.Response:
    cloud = cloud_of(request)
    v20 = {
        "id": "v2.0",
        "status": "SUPPORTED",
        "version": "",
        "min_version": "",
        "updated": "2011-01-21T11:33:21Z",
        "links": [{"rel": "self", "href": cloud.url(f"{PREFIX}/v2/")}],
    }
    return json_response({"versions": [v20, _version_doc(cloud)]})


# --------------------------------------------------------------------------------------------------------------------
# Shared helpers


def _writer(c: Ctx, action: str) -> None:
    if not c.can_write:
        raise ERR(403, f"Policy doesn't allow os_compute_api:{action} to be performed.")


def _project(c: Ctx) -> str:
    if c.project_id is None:
        raise ERR(403, "A project-scoped token is required.")
    return c.project_id


def _links(cloud: Cloud, kind: str, item_id: str) -> list[dict[str, str]]:
    return [
        {"rel": "self", "href": cloud.url(f"{V21}/{kind}/{item_id}")},
        {"rel": "bookmark", "href": cloud.url(f"{PREFIX}/{kind}/{item_id}")},
    ]


def _ref_id(ref: Any) -> str:
    """flavorRef/imageRef may be an id or an href ending in the id."""
    text = str(ref).rstrip("/")
    return text.rsplit("/", 1)[-1]


def _all_projects(request: web.Request, c: Ctx) -> bool:
    wanted = qbool(request.query.get("all_tenants"), None)
    if wanted is None and "all_tenants" in request.query and request.query["all_tenants"] == "":
        wanted = True
    if wanted is None:
        wanted = qbool(request.query.get("all_projects"), False)
    return bool(wanted) and c.is_admin


def _page_links(request: web.Request, key: str, marker: str | None, limit: int | None) -> dict[str, Any]:
    if marker is None:
        return {}
    href = next_link(request, cloud_of(request).public_url, marker, limit)
    return {f"{key}_links": [{"rel": "next", "href": href}]}
