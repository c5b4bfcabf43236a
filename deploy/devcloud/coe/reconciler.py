"""The reconciler: poked by every ledger change of a kind an endpoint depends on, it makes the listening sites match
what the cloud's state calls for (``plan.plan``), whatever the COE. Only 127.0.0.0/8 addresses are ever bound."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from deploy.devcloud.coe import kubernetes, mesos, swarm
from deploy.devcloud.coe.base import Endpoint, StandIn
from deploy.devcloud.coe.plan import ENDPOINT_KINDS, Key, assign, is_loopback, plan
from deploy.devcloud.coe.userdata import NodeFiles
from deploy.devcloud.state import CLOUD, Cloud

log = structlog.get_logger("devcloud.coe")

STAND_INS: dict[str, StandIn] = {s.coe: s for s in (kubernetes.STAND_IN, swarm.STAND_IN, mesos.STAND_IN)}
"""Each COE's stand-in, by the ``COVE_COE`` of its nodes' environment file."""


class CoeEndpoints:
    """Compares the endpoints the cloud's state calls for with those listening, and starts or stops sites."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.known: dict[str, tuple[str, NodeFiles]] = {}
        self.endpoints: dict[str, Endpoint] = {}
        self.held: dict[Key, str] = {}
        self.sites: dict[Key, tuple[web.TCPSite, web.AppRunner, ssl.SSLContext | None]] = {}
        self.refused: set[Key] = set()
        self.dirty = asyncio.Event()
        self.rules = {coe: s.rules for coe, s in STAND_INS.items()}

    def poke(self, kind: str | None, resource_id: str) -> None:
        """A ledger change: plan again only for the kinds an endpoint depends on (not a volume, a keypair, a
        security group), so a busy cloud does not replan on every change."""
        if kind is None or kind in ENDPOINT_KINDS:
            self.dirty.set()

    async def run(self) -> None:
        while True:
            await self.dirty.wait()
            self.dirty.clear()
            try:
                await self.reconcile()
            except Exception:  # the next change tries again; the cloud itself goes on
                log.exception("coe_endpoint_reconcile_failed")

    async def reconcile(self) -> None:
        plans = plan(self.cloud, self.known, self.rules)
        wanted = {k: cid for k, cid in assign(plans, self.held).items() if self._allowed(k, cid)}
        for cid in [c for c in self.endpoints if c not in plans or self.endpoints[c].replaced_by(plans[c])]:
            for key in [k for k, c in self.held.items() if c == cid]:
                await self._unbind(key, cid)
            await self.endpoints.pop(cid).close()
            log.info("coe_endpoint_stopped", cluster_id=cid)
        cas = {ca for p in plans.values() for ca in (p.ca_cert_pem, *p.trusted_cas)}
        for cid, p in plans.items():
            if cid not in self.endpoints:
                endpoint = STAND_INS[p.coe].endpoint(p, self.cloud)
                await endpoint.start()
                self.endpoints[cid] = endpoint
            self.endpoints[cid].update(p, cas, {k: p.bindings[k] for k, c in wanted.items() if c == cid})
        for key, cid in list(self.held.items()):
            serves = self.endpoints[cid].serving(key, self.endpoints[cid].at[key]) if wanted.get(key) == cid else None
            if serves is None or serves != self.sites[key][1:]:
                await self._unbind(key, cid)
        for key, cid in wanted.items():
            if key not in self.held:
                await self._bind(key, cid)

    def _allowed(self, key: Key, cid: str) -> bool:
        if is_loopback(key[0]):
            return True
        if key not in self.refused:
            self.refused.add(key)
            log.warning("coe_endpoint_address_refused", cluster_id=cid, address=key[0], port=key[1],
                        reason="the devcloud binds only 127.0.0.0/8")
        return False

    async def _bind(self, key: Key, cid: str) -> None:
        endpoint = self.endpoints[cid]
        app_runner, context = endpoint.serving(key, endpoint.at[key])
        site = web.TCPSite(app_runner, key[0], key[1], ssl_context=context, reuse_address=True, shutdown_timeout=0.5)
        try:
            await site.start()
        except OSError as e:
            log.warning("coe_endpoint_bind_failed", cluster_id=cid, address=key[0], port=key[1], error=str(e))
            return
        self.sites[key] = (site, app_runner, context)
        self.held[key] = cid
        log.info("coe_endpoint_listening", cluster_id=cid, coe=endpoint.plan.coe, address=key[0], port=key[1])

    async def _unbind(self, key: Key, cid: str) -> None:
        del self.held[key]
        site = self.sites.pop(key, None)
        if site is not None:
            await site[0].stop()
        log.info("coe_endpoint_unbound", cluster_id=cid, address=key[0], port=key[1])

    async def close(self) -> None:
        for key, cid in list(self.held.items()):
            await self._unbind(key, cid)
        for endpoint in self.endpoints.values():
            await endpoint.close()
        self.endpoints.clear()


async def serve(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the reconciler runs beside the cloud, poked by each change the ledger records."""
    cloud = app[CLOUD]
    endpoints = CoeEndpoints(cloud)
    cloud.ledger.listeners.append(endpoints.poke)
    task = asyncio.create_task(endpoints.run())
    yield
    cloud.ledger.listeners.remove(endpoints.poke)
    task.cancel()
    await endpoints.close()
