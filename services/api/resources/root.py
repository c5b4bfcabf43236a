"""``GET /`` and ``GET /v1``: version documents (no auth)."""

from __future__ import annotations

from aiohttp import web

from services.api import microversion
from services.api.middleware import base_url

routes = web.RouteTableDef()

V1_RESOURCES = (
    "clustertemplates", "clusters", "quotas", "certificates", "mservices", "stats", "federations", "credentials",
)


def _v1_link(base: str) -> dict[str, str]:
    return {"href": f"{base}/v1/", "rel": "self"}


@routes.get("/")
async def root(request: web.Request) -> web.Response:
    base = base_url(request)
    return web.json_response({
        "name": "OpenStack Magnum API",
        "description": "Magnum is an OpenStack project which aims to provide container cluster management.",
        "versions": [{
            "id": "v1",
            "links": [_v1_link(base)],
            "status": "CURRENT",
            "max_version": str(microversion.MAX),
            "min_version": str(microversion.MIN),
        }],
    })


@routes.get("/v1")
async def v1(request: web.Request) -> web.Response:
    base = base_url(request)
    body: dict[str, object] = {
        "id": "v1",
        "media_types": [{"base": "application/json", "type": "application/vnd.openstack.magnum.v1+json"}],
        "links": [
            _v1_link(base),
            {"href": "http://docs.openstack.org/developer/magnum/dev/api-spec-v1.html", "rel": "describedby",
             "type": "text/html"},
        ],
    }
    for resource in V1_RESOURCES:
        body[resource] = [
            {"href": f"{base}/v1/{resource}/", "rel": "self"},
            {"href": f"{base}/{resource}/", "rel": "bookmark"},
        ]
    body["nodegroups"] = [
        {"href": f"{base}/v1/clusters/{{cluster_id}}/nodegroups", "rel": "self"},
        {"href": f"{base}/clusters/{{cluster_id}}/nodegroups", "rel": "bookmark"},
    ]
    return web.json_response(body)
