"""Look-ups in the user's own cloud, with the user's token, as Magnum's API makes them before it accepts a
template or a cluster: the Glance image (exists, unique, has ``os_distro``), the Nova flavor and keypair.

Keystone (``keystone.py``) validates tokens and makes trusts; these calls go to Glance and Nova through the
endpoints of the user's catalog, over the Keystone client's HTTP session.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import aiohttp

from services.api.errors import ApiError, bad_request
from services.api.keystone import AuthContext, Keystone

_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")


def _q(value: str) -> str:
    return quote(value, safe="")


class UserCloud:
    """The user's images, flavors and keypairs (raises ``ApiError`` with Magnum's status and words)."""

    def __init__(self, keystone: Keystone) -> None:
        self.keystone = keystone

    async def _get(self, user: AuthContext, url: str) -> tuple[int, Any]:
        async with self.keystone._session().get(url, headers={"X-Auth-Token": user.token}) as resp:
            try:
                data = await resp.json(content_type=None)
            except (ValueError, aiohttp.ContentTypeError):
                data = None
            return resp.status, data

    async def find_image(self, user: AuthContext, ident: str) -> dict[str, Any]:
        """The Glance image named or identified by ``ident`` (Magnum's checks: exists, unique, has os_distro)."""
        base = user.endpoint("image")
        if base is None:
            raise ApiError(503, "No image service in the catalog.")
        base = base if base.endswith("/v2") else f"{base}/v2"
        if _UUID.match(ident):
            status, data = await self._get(user, f"{base}/images/{ident}")
            if status == 200 and isinstance(data, dict):
                return data
        status, data = await self._get(user, f"{base}/images?name={_q(ident)}")
        images = (data or {}).get("images", []) if status == 200 else []
        if not images:
            raise bad_request(f"Image {ident} could not be found.")
        if len(images) > 1:
            raise ApiError(409, f"Multiple images exist with same name {ident}. Please use the image id instead.")
        return dict(images[0])

    async def find_flavor(self, user: AuthContext, ident: str) -> dict[str, Any]:
        base = user.endpoint("compute")
        if base is None:
            raise ApiError(503, "No compute service in the catalog.")
        status, data = await self._get(user, f"{base}/flavors/detail")
        flavors = (data or {}).get("flavors", []) if status == 200 else []
        for flavor in flavors:
            if flavor.get("id") == ident or flavor.get("name") == ident:
                return dict(flavor)
        raise bad_request(f"Flavor {ident} could not be found.")

    async def find_keypair(self, user: AuthContext, name: str) -> None:
        base = user.endpoint("compute")
        if base is None:
            raise ApiError(503, "No compute service in the catalog.")
        status, _ = await self._get(user, f"{base}/os-keypairs/{_q(name)}")
        if status == 404:
            raise ApiError(404, f"Unable to find keypair {name}.")
        if status != 200:
            raise ApiError(503, f"Could not look up keypair {name} (compute answered {status}).")
