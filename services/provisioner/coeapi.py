"""The provisioner as a client of a cluster's own COE API: what a resize does there before a node's server goes.

Swarm: the node is drained (``docker node update --availability drain``: its tasks are rescheduled on the other
nodes), the provisioner waits, bounded, until no task of the node should still run, then removes the node from
the swarm (``docker node rm --force``) so that the managers forget it, and only then is the server deleted. The
Docker engine's API is reached over TLS at the cluster's ``api_address`` (the load balancer's or the first
manager's address, its floating IP when it has one), with a client certificate the certs service issues to the
provisioner from the cluster CA (asked once per task and cluster).

The provisioner reaches only the networks ``COVE_PROVISIONER_COE_NETWORKS`` names (default ``127.0.0.0/8``, the
devcloud's: a production deployment names the networks its clusters' API addresses are in, e.g. the external
network's); a node whose cluster's API is elsewhere is deleted without a drain, and the log says why.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import ssl
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from services.provisioner.certificates import NodeTLS

log = structlog.get_logger(__name__)

DRAINED_COES = frozenset({"swarm", "swarm-mode"})
CLIENT_NAME = "cove-provisioner"
"""The common name of the provisioner's client certificate on each cluster."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    ca_cert_pem: str
    client: NodeTLS


def reachable(host: str, networks: Sequence[str]) -> bool:
    """Whether the provisioner may connect to ``host`` (an IP address inside one of ``networks``)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(n, strict=False) for n in networks)


def _ssl_context(endpoint: Endpoint) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=endpoint.ca_cert_pem)
    with tempfile.TemporaryDirectory() as tmp:  # the ssl module loads a client key only from files
        cert, key = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        cert.write_text(endpoint.client.cert_pem)
        key.touch(mode=0o600)
        key.write_text(endpoint.client.key_pem)
        ctx.load_cert_chain(cert, key)
    return ctx


class DrainError(Exception):
    pass


async def drain_swarm_node(endpoint: Endpoint, hostname: str, *, timeout: float, interval: float = 0.5) -> bool:
    """Drain the Swarm node named ``hostname`` (demoting it if it is a manager), wait (at most ``timeout``
    seconds) until none of its tasks should still run, and remove it from the swarm. False when the swarm does not know the node (nothing to drain).
    Raises ``DrainError`` when the engine refuses or cannot be reached."""
    base = f"https://{endpoint.host}:{endpoint.port}"
    connector = aiohttp.TCPConnector(ssl=_ssl_context(endpoint))
    async with aiohttp.ClientSession(base, connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as http:
        async def call(method: str, path: str, **kw: Any) -> Any:
            try:
                async with http.request(method, path, **kw) as resp:
                    body = await resp.text()
                    if resp.status >= 400:
                        raise DrainError(f"{method} {path}: {resp.status} {body[:200]}")
                    return json.loads(body) if body.strip() else None
            except (TimeoutError, aiohttp.ClientError, ssl.SSLError) as exc:
                raise DrainError(f"{method} {path}: {exc}") from exc

        nodes = await call("GET", "/nodes")
        node = next((n for n in nodes or [] if (n.get("Description") or {}).get("Hostname") == hostname), None)
        if node is None:
            return False
        spec = dict(node.get("Spec") or {})
        if spec.get("Availability") != "drain" or spec.get("Role") == "manager":
            # a manager is demoted in the same update: the swarm refuses to remove a manager, even with force
            spec.update(Availability="drain", Role="worker")
            version = (node.get("Version") or {}).get("Index", 0)
            await call("POST", f"/nodes/{node['ID']}/update", params={"version": str(version)}, json=spec)
            log.info("swarm_node_draining", node=hostname, node_id=node["ID"])
        filters = json.dumps({"node": [node["ID"]], "desired-state": ["running"]})
        deadline = time.monotonic() + timeout
        while tasks := await call("GET", "/tasks", params={"filters": filters}):
            if time.monotonic() >= deadline:
                log.warning("swarm_drain_timeout", node=hostname, tasks=len(tasks), timeout=timeout)
                break
            await asyncio.sleep(interval)
        await call("DELETE", f"/nodes/{node['ID']}", params={"force": "true"})
        log.info("swarm_node_removed", node=hostname, node_id=node["ID"])
        return True
