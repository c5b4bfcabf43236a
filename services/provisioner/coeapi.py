"""The provisioner as a client of a cluster's own COE API: what a resize does there before a node's server goes.

Swarm: the node is drained (``docker node update --availability drain``: its tasks are rescheduled on the other
nodes), the provisioner waits, bounded, until no task of the node should still run, then removes the node from
the swarm (``docker node rm --force``) so that the managers forget it, and only then is the server deleted. The
Docker engine's API is reached over TLS at the cluster's ``api_address`` (the load balancer's or the first
manager's address, its floating IP when it has one), with a client certificate the certs service issues to the
provisioner from the cluster CA (asked once per task and cluster).

The health check (``check``): each driver names its probes (``drivers.base.Probe``: Kubernetes ``/healthz`` and
``/api/v1/nodes``, Swarm ``/_ping`` and ``/nodes``, Marathon ``/ping`` and the Mesos master's ``/master/slaves``)
and reads their answers; this module only sends them, at the same address and with the same client certificate,
each bounded by a timeout so that a dead or hanging API costs the health pass at most that.

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
from services.provisioner.drivers.base import Answer, Probe

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
    return client_context(endpoint.ca_cert_pem, endpoint.client)


def client_context(ca_cert_pem: str, client: NodeTLS) -> ssl.SSLContext:
    """TLS to a cluster's API: its CA trusted, the provisioner's client certificate presented."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_cert_pem)
    with tempfile.TemporaryDirectory() as tmp:  # the ssl module loads a client key only from files
        cert, key = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        cert.write_text(client.cert_pem)
        key.touch(mode=0o600)
        key.write_text(client.key_pem)
        ctx.load_cert_chain(cert, key)
    return ctx


async def check(host: str, api_port: int, probes: Sequence[Probe], *, tls: ssl.SSLContext | None,
                timeout: float) -> dict[str, Answer]:
    """Send a driver's health probes to ``host`` (the cluster's API address, which the caller made sure is
    ``reachable``), one after the other; each gets at most ``timeout`` seconds. The answers by probe name: a probe
    that could not be sent (refused, timed out, TLS refused, no TLS context for a TLS probe) says why in ``error``."""
    answers: dict[str, Answer] = {}
    limit = aiohttp.ClientTimeout(total=timeout, connect=timeout)
    async with aiohttp.ClientSession(timeout=limit, connector=aiohttp.TCPConnector(ssl=False)) as http:
        for probe in probes:
            port = probe.port or api_port
            if probe.tls and tls is None:
                answers[probe.name] = Answer(error="no client certificate for the cluster's API")
                continue
            url = f"{'https' if probe.tls else 'http'}://{host}:{port}{probe.path}"
            context: ssl.SSLContext | bool = tls if probe.tls and tls is not None else False
            try:
                async with http.get(url, ssl=context) as resp:
                    answers[probe.name] = Answer(status=resp.status, body=await resp.text(errors="replace"))
            except TimeoutError:
                answers[probe.name] = Answer(error=f"{probe.path} on port {port}: no answer within {timeout:g} s")
            except (aiohttp.ClientError, ssl.SSLError, OSError) as exc:
                answers[probe.name] = Answer(error=f"{probe.path} on port {port}: {exc.__class__.__name__}: "
                                                   f"{str(exc)[:160]}")
    return answers


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
