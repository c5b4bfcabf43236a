"""What every COE's stand-in is made of: one object per cluster (``Endpoint``) that says, for each address the
cloud's state calls for, which aiohttp application answers there and with which TLS context; the reconciler binds
and unbinds the sites."""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Iterable

from aiohttp import web

from deploy.devcloud.coe.plan import Binding, Key, Plan, Rules
from deploy.devcloud.config import CoeFault
from deploy.devcloud.state import Cloud


def load_chain(context: ssl.SSLContext, cert_pem: str | bytes, key_pem: str | bytes) -> None:
    """Load a certificate (chain) and its key from PEM text (Python's ssl reads them only from a file)."""
    data = (cert_pem.encode() if isinstance(cert_pem, str) else cert_pem).rstrip(b"\n") + b"\n"
    data += key_pem.encode() if isinstance(key_pem, str) else key_pem
    with tempfile.TemporaryDirectory(prefix="coe-endpoint-") as tmp:
        path = os.path.join(tmp, "chain.pem")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
            f.write(data)
        context.load_cert_chain(path)


def local_key(request: web.Request) -> Key | None:
    """The (ip, port) the request came in at: which node (or load balancer) it is served as."""
    sock = request.transport.get_extra_info("sockname") if request.transport else None
    return (str(sock[0]), int(sock[1])) if sock else None


def coe_fault(cloud: Cloud, cluster_id: str) -> CoeFault | None:
    """The fault injected into this cluster's COE (``POST /admin/faults/coe``), if any."""
    return next((f for f in cloud.faults.coe if f.cluster_id == cluster_id), None)


def runner(app: web.Application) -> web.AppRunner:
    return web.AppRunner(app, access_log=None, shutdown_timeout=0.5)


class Endpoint:
    """One cluster's stand-in. Subclasses build their applications in ``__init__`` and say what serves each
    address in ``serving``."""

    def __init__(self, p: Plan, cloud: Cloud) -> None:
        self.plan = p
        self.cloud = cloud
        self.at: dict[Key, Binding] = {}
        """What each address the cluster listens at serves (updated on every reconcile)."""
        self.runners: list[web.AppRunner] = []

    async def start(self) -> None:
        for r in self.runners:
            await r.setup()

    def replaced_by(self, p: Plan) -> bool:
        """A new first master's files (a new CA or key) make a new endpoint."""
        return p.first != self.plan.first

    def update(self, p: Plan, cas: Iterable[str], wanted: dict[Key, Binding]) -> None:
        """The cloud's state changed: the new plan, every cluster CA the devcloud knows, the addresses this cluster
        is to listen at."""
        self.plan = p
        self.at = dict(wanted)

    def serving(self, key: Key, binding: Binding) -> tuple[web.AppRunner, ssl.SSLContext | None]:
        raise NotImplementedError

    async def close(self) -> None:
        for r in self.runners:
            await r.cleanup()


class StandIn:
    """A COE's stand-in: its plan rules and its endpoint class."""

    def __init__(self, coe: str, rules: Rules, endpoint: type[Endpoint]) -> None:
        self.coe = coe
        self.rules = rules
        self.endpoint = endpoint
