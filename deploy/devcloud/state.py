"""The cloud's state: resource tables, the timing model, capacity, quotas, faults and the ledger, in one object
that every emulated service reaches through `request.app[CLOUD]`. All of it lives in memory: the devcloud is the
cloud, not a store of Cove's."""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from deploy.devcloud.config import CloudConfig, Distribution, Faults
from deploy.devcloud.identity_state import Identity
from deploy.devcloud.ledger import Ledger


class Table:
    """One kind of resource: by id, and by owning project for isolation without a scan of the whole cloud."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        self.by_project: dict[str, dict[str, dict[str, Any]]] = {}

    def add(self, item: dict[str, Any], project_id: str) -> dict[str, Any]:
        self.items[item["id"]] = item
        self.by_project.setdefault(project_id, {})[item["id"]] = item
        item.setdefault("_project_id", project_id)
        return item

    def get(self, item_id: str) -> dict[str, Any] | None:
        return self.items.get(item_id)

    def remove(self, item_id: str) -> dict[str, Any] | None:
        item = self.items.pop(item_id, None)
        if item is not None:
            owned = self.by_project.get(item["_project_id"])
            if owned is not None:
                owned.pop(item_id, None)
                if not owned:
                    del self.by_project[item["_project_id"]]
        return item

    def of_project(self, project_id: str) -> Iterator[dict[str, Any]]:
        return iter(self.by_project.get(project_id, {}).values())

    def visible(self, project_id: str | None, all_projects: bool) -> Iterator[dict[str, Any]]:
        if all_projects or project_id is None:
            return iter(self.items.values())
        return self.of_project(project_id)

    def count(self, project_id: str) -> int:
        return len(self.by_project.get(project_id, ()))

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class Host:
    name: str
    az: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    used_vcpus: int = 0
    used_ram_mb: int = 0
    used_disk_gb: int = 0

    def fits(self, vcpus: int, ram_mb: int, disk_gb: int) -> bool:
        return (
            self.used_vcpus + vcpus <= self.vcpus
            and self.used_ram_mb + ram_mb <= self.ram_mb
            and self.used_disk_gb + disk_gb <= self.disk_gb
        )


@dataclass
class Capacity:
    """The hypervisors. Placement is first-fit over the hosts of the requested (or any live) availability zone."""

    hosts: list[Host] = field(default_factory=list)

    def place(
        self, vcpus: int, ram_mb: int, disk_gb: int, az: str | None, down: AbstractSet[str], avoid: AbstractSet[str] = frozenset()
    ) -> Host | None:
        for host in self.hosts:
            if az and host.az != az:
                continue
            if host.az in down or host.name in avoid:
                continue
            if host.fits(vcpus, ram_mb, disk_gb):
                host.used_vcpus += vcpus
                host.used_ram_mb += ram_mb
                host.used_disk_gb += disk_gb
                return host
        return None

    def release(self, host_name: str, vcpus: int, ram_mb: int, disk_gb: int) -> None:
        for host in self.hosts:
            if host.name == host_name:
                host.used_vcpus -= vcpus
                host.used_ram_mb -= ram_mb
                host.used_disk_gb -= disk_gb
                return


class BuildSlots:
    """A bounded number of concurrent builds: the rest wait their turn, as on a cloud whose conductors are busy."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.active = 0
        self.waiting: deque[Callable[[], None]] = deque()

    def acquire(self, start: Callable[[], None]) -> None:
        if self.active < self.limit:
            self.active += 1
            start()
        else:
            self.waiting.append(start)

    def release(self) -> None:
        if self.waiting:
            self.waiting.popleft()()
        else:
            self.active -= 1


class Cloud:
    def __init__(self, config: CloudConfig, public_url: str, magnum_url: str | None = None) -> None:
        self.config = config
        self.public_url = public_url.rstrip("/")
        self.magnum_url = magnum_url
        self.rng = random.Random(config.timing.seed)
        self.time_factor = config.timing.time_factor
        self.tables: dict[str, Table] = {}
        self.faults: Faults = Faults(
            boot_failure_rate=config.faults.boot_failure_rate,
            lb_failure_rate=config.faults.lb_failure_rate,
            api=list(config.faults.api),
            servers=list(config.faults.servers),
            down_availability_zones=list(config.faults.down_availability_zones),
            coe=list(config.faults.coe),
        )
        self.ledger = Ledger(config.ledger.max_records)
        self.capacity = Capacity(
            [
                Host(f"{hv.az}-host-{i:04d}", hv.az, hv.vcpus, hv.ram_mb, hv.disk_gb)
                for hv in config.hypervisors
                for i in range(hv.count)
            ]
        )
        self.builds = BuildSlots(config.timing.max_concurrent_builds)
        self.quota_overrides: dict[str, dict[str, dict[str, int]]] = {
            pid: {svc: dict(v) for svc, v in by_svc.items()} for pid, by_svc in config.quotas.projects.items()
        }
        self.identity = Identity(config, self.public_url, magnum_url)
        self._timers: set[asyncio.TimerHandle] = set()
        self.seeders: list[Callable[[Cloud], None]] = []

    # ---------------------------------------------------------------------------------------------------- tables
    def table(self, kind: str) -> Table:
        table = self.tables.get(kind)
        if table is None:
            table = self.tables[kind] = Table()
        return table

    # ---------------------------------------------------------------------------------------------------- timing
    def delay(self, dist: Distribution) -> float:
        """A delay drawn from the timing model, scaled by the time factor."""
        return max(0.0, dist.draw(self.rng)) * self.time_factor

    def later(self, seconds: float, fn: Callable[[], None]) -> None:
        """Run `fn` after `seconds` of (already scaled) time; 0 runs it on the next loop iteration."""
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(handle)
            fn()

        handle = loop.call_later(seconds, fire)
        self._timers.add(handle)

    def cancel_timers(self) -> None:
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()

    # ---------------------------------------------------------------------------------------------------- quotas
    def quota(self, project_id: str, service: str) -> dict[str, int]:
        """The project's quota for one service (compute, network, volume, load_balancer); -1 is unlimited."""
        base = dict(self.config.quotas.default.get(service, {}))
        name = self.identity.project_name(project_id)
        for key in (project_id, name):
            if key and key in self.quota_overrides:
                base.update(self.quota_overrides[key].get(service, {}))
        return base

    def set_quota(self, project_id: str, service: str, values: dict[str, int]) -> dict[str, int]:
        self.quota_overrides.setdefault(project_id, {}).setdefault(service, {}).update(values)
        return self.quota(project_id, service)

    # ---------------------------------------------------------------------------------------------------- urls
    def url(self, path: str) -> str:
        return f"{self.public_url}{path}"


CLOUD = web.AppKey("devcloud_cloud", Cloud)


def cloud_of(request: web.Request) -> Cloud:
    return request.app[CLOUD]


def identity_of(request: web.Request) -> Identity:
    return request.app[CLOUD].identity
