"""The site add-ons this cloud offers, as the API learns them from the provisioner (``cove.rpc.provisioner.addons``).

A template create, a template PATCH of its labels and a cluster create whose labels carry ``addons`` are refused
with 400 when a name is not in the provisioner's catalog, and with 503 when the provisioner does not answer (the
write is not accepted blindly). Writes without the label never ask.

The answer is cached for ``CACHE_SECONDS`` (30 s): the provisioner loads its catalog once, at start, so the names
change only when an operator edits the add-on directory and restarts it; a burst of writes shares one question
instead of adding a round trip each. A name missing from a cached answer older than ``RECHECK_SECONDS`` is asked
again once before the refusal, so an add-on the operator just installed is usable at once. Failures are not cached.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import structlog
from aiohttp import web

from proto import subjects
from proto.labels import addon_names
from proto.requests import AddonCatalog, ListAddons
from services.api.errors import ApiError, bad_request
from services.api.writer import Writer
from services.runtime import rpc

log = structlog.get_logger(__name__)

CACHE_SECONDS = 30.0
RECHECK_SECONDS = 1.0
RPC_TIMEOUT = 2.0


class AddonCatalogClient:
    """The provisioner's add-on names, asked over NATS and cached briefly."""

    def __init__(self, writer: Writer, *, ttl: float = CACHE_SECONDS, recheck: float = RECHECK_SECONDS,
                 timeout: float = RPC_TIMEOUT) -> None:
        self.writer = writer
        self.ttl = ttl
        self.recheck = recheck
        self.timeout = timeout
        self._names: tuple[str, ...] | None = None
        self._at = 0.0
        self._lock = asyncio.Lock()

    def forget(self) -> None:
        """Drop the cached answer (the next check asks the provisioner)."""
        self._names = None

    async def names(self, *, max_age: float | None = None) -> tuple[str, ...]:
        """The names on offer, at most ``max_age`` (default the cache's life) seconds old; 503 when no answer."""
        max_age = self.ttl if max_age is None else max_age
        async with self._lock:
            if self._names is not None and time.monotonic() - self._at <= max_age:
                return self._names
            try:
                reply = await rpc.request(self.writer.bus.nc, subjects.PROVISIONER_ADDONS, ListAddons(),
                                          timeout=self.timeout)
            except rpc.RpcError as exc:
                log.warning("addons_rpc_failed", code=exc.code, error=exc.message)
                raise ApiError(503, "The provisioner did not say which add-ons this cloud offers, so the labels' "
                                    "add-ons cannot be checked; try again later.") from exc
            if not isinstance(reply, AddonCatalog):
                raise ApiError(503, f"The provisioner answered {type(reply).__name__} for its add-ons.")
            self._names, self._at = tuple(reply.names), time.monotonic()
            return self._names

    async def check(self, labels: Mapping[str, str]) -> None:
        """400 naming the first add-on in ``labels`` this cloud does not offer; nothing asked without the label."""
        wanted = addon_names(labels)
        if not wanted:
            return
        offered = await self.names()
        if not set(wanted) <= set(offered):
            offered = await self.names(max_age=self.recheck)
        unknown = [name for name in wanted if name not in offered]
        if unknown:
            raise bad_request(f"Invalid input for field/attribute labels. Unknown add-on '{unknown[0]}'; this cloud "
                              f"offers: {', '.join(offered) or 'none'}.")


ADDONS = web.AppKey("addons", AddonCatalogClient)
"""The application's add-on catalog client (set by ``app.build_app``)."""
