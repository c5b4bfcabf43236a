"""The project's remaining cloud quota, asked before anything is built (docs/adr/0008).

Nova's ``GET /limits`` (cores, instances, RAM), Cinder's ``GET /limits`` (volumes, gigabytes) and Neutron's
``GET /v2.0/quotas/{project}/details`` (floating IPs, ports, networks, security groups), through the cluster's
Keystone trust (the Cove service user acting in the user's project, as the provisioner does). What the cloud says
is cached per project for ``ttl`` seconds (``COVE_CLOUD_QUOTA_TTL``, default 10); the admission subtracts from it
what Cove has reserved in the project but not yet built, so a burst of creates costs one look-up, not one per
create. A project whose cloud quota is unlimited (-1) everywhere is remembered as such: nothing to check. The
entry of a project is dropped when one of its builds ends (the cloud's usage then includes what was built), so the
figures are stale by at most ``ttl`` seconds, and only toward refusing (servers deleted meanwhile).

A cloud that cannot be asked (no trust, Keystone or a service down) does not block admission: the create goes on
and the provisioner's own errors say what the cloud refused (logged as ``cloud_quota_unknown``).

Resizes that grow a nodegroup and new nodegroups are checked the same way (``growth_demand``), through the trust
the cluster was created with; their growth counts as unbuilt until the update ends.

The pure part (``cloud_demand``, ``growth_demand``, ``check``) is plain functions over plain data.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog

from proto import quotas

log = structlog.get_logger(__name__)

CLOUD_RESOURCES = ("instances", "cores", "ram", "volumes", "gigabytes", "floatingip", "port", "network",
                   "security_group")
"""The cloud's own quota names (Nova, Cinder, Neutron), as the 403 names them."""
UNITS = {"ram": " MB", "gigabytes": " GB"}


@dataclass(frozen=True)
class Room:
    """What is left of each cloud quota (None: unlimited), as the cloud said at ``fetched_at`` (monotonic)."""

    left: dict[str, int | None]
    limits: dict[str, int]
    fetched_at: float = 0.0

    @property
    def unlimited(self) -> bool:
        return all(v is None for v in self.left.values())


def cloud_demand(spec: Any) -> dict[str, int]:
    """What building the resolved ``ClusterSpec`` takes from the cloud's quotas: one server and one port per node
    (plus the load balancer's VIP port), the flavors' cores and RAM, one volume per node with a container-storage
    volume and per master with an etcd volume, a floating IP per node when enabled (plus the load balancer's), a
    network unless the cluster uses an existing one, and a security group per role."""
    out = dict.fromkeys(CLOUD_RESOURCES, 0)
    etcd = getattr(spec, "etcd_volume_size", None) or 0
    for g in getattr(spec, "nodegroups", []):
        n = g.node_count
        out["instances"] += n
        out["port"] += n
        out["cores"] += n * (g.vcpus or 0)
        out["ram"] += n * (g.ram_mb or 0)
        volumes = (1 if g.docker_volume_size else 0) + (1 if g.role == "master" and etcd else 0)
        out["volumes"] += n * volumes
        out["gigabytes"] += n * ((g.docker_volume_size or 0) + (etcd if g.role == "master" else 0))
        if spec.floating_ip_enabled:
            out["floatingip"] += n
    if spec.master_lb_enabled:
        out["port"] += 1
        if spec.master_lb_floating_ip_enabled:
            out["floatingip"] += 1
    out["network"] = 0 if spec.fixed_network else 1
    out["security_group"] = len({g.role for g in getattr(spec, "nodegroups", [])})
    return out


def growth_demand(per_node: Any, count: int, floating_ips: bool) -> dict[str, int]:
    """What ``count`` more nodes of a nodegroup (an ``admission.GroupSize``: vCPUs, RAM MB and volume GB per node)
    take from the cloud's quotas: a server and a port each, their cores and RAM, a volume each when the group has
    container storage, and a floating IP each when the cluster's nodes get one. The cluster's network, security
    groups and load balancer exist already."""
    out = dict.fromkeys(CLOUD_RESOURCES, 0)
    out.update(instances=count, port=count, cores=count * per_node.vcpus, ram=count * per_node.ram_mb)
    if per_node.volume_gb:
        out.update(volumes=count, gigabytes=count * per_node.volume_gb)
    if floating_ips:
        out["floatingip"] = count
    return out


def add(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in set(a) | set(b)}


def check(room: Room, pending: dict[str, int], asked: dict[str, int]) -> tuple[str, str] | None:
    """None when ``asked`` fits in what the cloud has left after ``pending`` (reserved by Cove, not yet built);
    else (resource, the refusal naming it, what was asked and what is left)."""
    for resource in CLOUD_RESOURCES:
        left = room.left.get(resource)
        want = asked.get(resource, 0)
        if left is None or want <= 0:
            continue
        free = left - pending.get(resource, 0)
        if want > free:
            unit = UNITS.get(resource, "")
            limit = room.limits.get(resource, 0)
            return resource, (f"Quota exceeded in the cloud for {resource}: requested {want}{unit}, "
                              f"{max(free, 0)}{unit} of {limit}{unit} left.")
    return None


def _left(limit: Any, used: Any, reserved: Any = 0) -> int | None:
    if limit is None or int(limit) < 0:
        return None
    return int(limit) - int(used or 0) - int(reserved or 0)


@dataclass(frozen=True)
class CloudQuotaSettings:
    auth_url: str
    username: str = "cove"
    password: str = "cove-pass"
    user_domain_name: str = "Default"
    ttl: float = 10.0
    max_age: float = 120.0
    """A request older than this is decided without asking the cloud: a replay re-deciding what was published
    long ago (the published decision is the fact), or one that waited in a backlog."""
    timeout: float = 5.0

    @classmethod
    def from_env(cls, env: dict[str, str]) -> CloudQuotaSettings | None:
        """None (no cloud check) without an identity URL or with ``COVE_CLOUD_QUOTA_CHECK=off``."""
        if not quotas.cloud_quota_checked(env):
            return None
        auth_url = env.get("COVE_AUTH_URL") or env.get("COVE_CLOUD_AUTH_URL") or ""
        return cls(
            auth_url=auth_url.rstrip("/"),
            username=env.get("COVE_SERVICE_USER", "cove"),
            password=env.get("COVE_SERVICE_PASSWORD", "cove-pass"),
            user_domain_name=env.get("COVE_SERVICE_USER_DOMAIN", "Default"),
            ttl=float(env.get("COVE_CLOUD_QUOTA_TTL", "10")),
            max_age=float(env.get("COVE_CLOUD_QUOTA_MAX_AGE", "120")),
        )


@dataclass
class CloudQuota:
    """Asks the cloud, caches per project (see the module's docstring)."""

    settings: CloudQuotaSettings
    lookups: int = 0
    """How many times the cloud was asked (the benchmark and tests read it)."""
    _cache: dict[str, Room] = field(default_factory=dict)
    _session: aiohttp.ClientSession | None = None
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def forget(self, project_id: str) -> None:
        self._cache.pop(project_id, None)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def room(self, project_id: str, trust_id: str | None) -> Room | None:
        """The project's remaining cloud quota (cached), or None when it cannot be known."""
        hit = self._cache.get(project_id)
        if hit is not None and time.monotonic() - hit.fetched_at < self.settings.ttl:
            return hit
        if not trust_id:
            return None
        lock = self._locks.setdefault(project_id, asyncio.Lock())
        async with lock:
            hit = self._cache.get(project_id)
            if hit is not None and time.monotonic() - hit.fetched_at < self.settings.ttl:
                return hit
            try:
                room = await asyncio.wait_for(self._fetch(project_id, trust_id), self.settings.timeout)
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
                log.warning("cloud_quota_unknown", project_id=project_id, error=repr(exc))
                return None
            self._cache[project_id] = room
            return room

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.settings.timeout))
        return self._session

    async def _token(self, trust_id: str) -> tuple[str, list[dict[str, Any]]]:
        body = {"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": self.settings.username, "domain": {"name": self.settings.user_domain_name},
                "password": self.settings.password}}},
            "scope": {"OS-TRUST:trust": {"id": trust_id}},
        }}
        url = self.settings.auth_url
        url = url if url.endswith("/v3") else f"{url}/v3"
        async with self._http().post(f"{url}/auth/tokens", json=body) as resp:
            if resp.status != 201:
                raise ValueError(f"trust-scoped token refused ({resp.status})")
            data = await resp.json()
            return resp.headers["X-Subject-Token"], list(data["token"].get("catalog", []))

    async def _get(self, token: str, url: str) -> dict[str, Any]:
        async with self._http().get(url, headers={"X-Auth-Token": token, "Accept": "application/json"}) as resp:
            if resp.status != 200:
                raise ValueError(f"GET {url} answered {resp.status}")
            data: dict[str, Any] = await resp.json(content_type=None)
            return data

    async def _fetch(self, project_id: str, trust_id: str) -> Room:
        self.lookups += 1
        token, catalog = await self._token(trust_id)
        compute = _endpoint(catalog, "compute")
        volume = _endpoint(catalog, "block-storage", "volumev3")
        network = _endpoint(catalog, "network")
        left: dict[str, int | None] = dict.fromkeys(CLOUD_RESOURCES)
        limits: dict[str, int] = {}
        calls: list[Any] = []
        if compute:
            calls.append(self._get(token, f"{compute}/limits"))
        if volume:
            calls.append(self._get(token, f"{volume}/limits"))
        if network:
            base = network if network.rstrip("/").endswith("v2.0") else f"{network.rstrip('/')}/v2.0"
            calls.append(self._get(token, f"{base}/quotas/{project_id}/details"))
        answers = await asyncio.gather(*calls)
        i = 0
        if compute:
            a = answers[i]["limits"]["absolute"]
            i += 1
            for name, lim, used in (("instances", "maxTotalInstances", "totalInstancesUsed"),
                                    ("cores", "maxTotalCores", "totalCoresUsed"),
                                    ("ram", "maxTotalRAMSize", "totalRAMUsed")):
                left[name], limits[name] = _left(a.get(lim), a.get(used)), int(a.get(lim, -1))
        if volume:
            a = answers[i]["limits"]["absolute"]
            i += 1
            for name, lim, used in (("volumes", "maxTotalVolumes", "totalVolumesUsed"),
                                    ("gigabytes", "maxTotalVolumeGigabytes", "totalGigabytesUsed")):
                left[name], limits[name] = _left(a.get(lim), a.get(used)), int(a.get(lim, -1))
        if network:
            q = answers[i]["quota"]
            for name in ("floatingip", "port", "network", "security_group"):
                d = q.get(name) or {}
                left[name] = _left(d.get("limit"), d.get("used"), d.get("reserved"))
                limits[name] = int(d.get("limit", -1))
        room = Room(left, limits, time.monotonic())
        log.info("cloud_quota_fetched", project_id=project_id, unlimited=room.unlimited,
                 left={k: v for k, v in left.items() if v is not None})
        return room


def _endpoint(catalog: list[dict[str, Any]], *types: str) -> str | None:
    for entry in catalog:
        if entry.get("type") in types:
            for ep in entry.get("endpoints", []):
                if ep.get("interface") == "public":
                    return str(ep["url"]).rstrip("/")
    return None
