"""The devcloud's configuration: a YAML file decoded into typed structs (deploy/devcloud/cloud.yaml is the default)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml

DEFAULT_CONFIG = Path(__file__).with_name("cloud.yaml")


class Domain(msgspec.Struct, frozen=True):
    id: str
    name: str


class Project(msgspec.Struct, frozen=True):
    name: str
    domain: str = "default"
    id: str | None = None


class User(msgspec.Struct, frozen=True):
    name: str
    password: str
    roles: dict[str, list[str]] = {}
    domain: str = "default"
    id: str | None = None


class CloudEntry(msgspec.Struct, frozen=True):
    user: str
    project: str


class Flavor(msgspec.Struct, frozen=True):
    name: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    id: str | None = None
    is_public: bool = True


class Image(msgspec.Struct, frozen=True):
    name: str
    os_distro: str
    min_disk_gb: int = 0
    size_bytes: int = 0
    id: str | None = None
    disk_format: str = "qcow2"
    properties: dict[str, str] = {}


class ExternalNetwork(msgspec.Struct, frozen=True):
    name: str
    cidr: str
    id: str | None = None


class Hypervisors(msgspec.Struct, frozen=True):
    az: str
    count: int
    vcpus: int
    ram_mb: int
    disk_gb: int


class Distribution(msgspec.Struct, frozen=True):
    """A delay in seconds: fixed `value`, uniform in [low, high], or lognormal with `mean` and `sigma`."""

    dist: Literal["fixed", "uniform", "lognormal"] = "fixed"
    value: float = 0.0
    low: float = 0.0
    high: float = 0.0
    mean: float = 0.0
    sigma: float = 0.0

    def draw(self, rng: random.Random) -> float:
        if self.dist == "uniform":
            return rng.uniform(self.low, self.high)
        if self.dist == "lognormal":
            if self.mean <= 0:
                return 0.0
            # mean of the lognormal equals `mean`: mu = ln(mean) - sigma^2/2
            import math

            mu = math.log(self.mean) - self.sigma**2 / 2
            return rng.lognormvariate(mu, self.sigma)
        return self.value


class Timing(msgspec.Struct, frozen=True):
    time_factor: float = 1.0
    boot_seconds: Distribution = Distribution(dist="uniform", low=3.0, high=8.0)
    delete_seconds: Distribution = Distribution(value=1.0)
    max_concurrent_builds: int = 20
    volume_seconds: Distribution = Distribution(value=1.0)
    load_balancer_seconds: Distribution = Distribution(dist="uniform", low=3.0, high=6.0)
    load_balancer_child_seconds: Distribution = Distribution(value=0.5)
    api_rate_limit: float = 0.0
    token_lifetime_seconds: int = 86400
    seed: int | None = None


class ApiFault(msgspec.Struct):
    """Make matching API calls fail with `status` or hang for `hang_seconds`."""

    service: str = "*"  # identity | compute | image | network | load-balancer | volume | *
    method: str = "*"
    path: str = ""  # a regular expression searched in the request path
    status: int = 503
    probability: float = 1.0
    count: int = -1  # how many calls it still hits; -1 means every matching call
    hang_seconds: float = 0.0
    id: str | None = None


class ServerFault(msgspec.Struct):
    """A named server goes to ERROR or disappears `after_seconds` after it became ACTIVE (hardware failure)."""

    name: str
    action: Literal["error", "vanish"] = "error"
    after_seconds: float = 0.0
    id: str | None = None


class VolumeFault(msgspec.Struct):
    """A named volume (or id) goes to ``error`` or disappears from Cinder at once (a backend's loss)."""

    name: str
    action: Literal["error", "vanish"] = "error"
    id: str | None = None


class LoadBalancerFault(msgspec.Struct):
    """A named load balancer (or id) takes these statuses at once (an amphora's failure: ``ERROR`` / ``OFFLINE``)."""

    name: str
    provisioning_status: str | None = None
    operating_status: str | None = None
    id: str | None = None


class CoeFault(msgspec.Struct):
    """What a cluster's COE stand-in reports wrongly until cleared: its API's health endpoint answers
    ``api_status`` (Kubernetes ``/healthz``, Swarm ``/_ping``, Marathon ``/ping``; 0: healthy), and the nodes
    ``not_ready`` names (Kubernetes Ready=False, Swarm down, Mesos agent deactivated) while their servers run."""

    cluster_id: str
    api_status: int = 0
    not_ready: list[str] = []
    id: str | None = None


class Faults(msgspec.Struct):
    boot_failure_rate: float = 0.0
    lb_failure_rate: float = 0.0  # fraction of load balancer create/update/delete steps that end in ERROR
    api: list[ApiFault] = []
    servers: list[ServerFault] = []
    down_availability_zones: list[str] = []
    coe: list[CoeFault] = []


class QuotaSets(msgspec.Struct, frozen=True):
    default: dict[str, dict[str, int]] = {}
    projects: dict[str, dict[str, dict[str, int]]] = {}


class Ledger(msgspec.Struct, frozen=True):
    max_records: int = 200000


class CloudConfig(msgspec.Struct, frozen=True):
    region: str = "RegionOne"
    domains: list[Domain] = msgspec.field(default_factory=lambda: [Domain(id="default", name="Default")])
    projects: list[Project] = []
    users: list[User] = []
    clouds: dict[str, CloudEntry] = {}
    flavors: list[Flavor] = []
    images: list[Image] = []
    external_networks: list[ExternalNetwork] = []
    availability_zones: list[str] = msgspec.field(default_factory=lambda: ["nova"])
    hypervisors: list[Hypervisors] = []
    quotas: QuotaSets = QuotaSets()
    timing: Timing = Timing()
    faults: Faults = msgspec.field(default_factory=Faults)
    ledger: Ledger = Ledger()


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> CloudConfig:
    """Read a YAML configuration; `overrides` are merged over the top level (e.g. {"timing": {...}})."""
    raw = yaml.safe_load(Path(path or DEFAULT_CONFIG).read_text()) or {}
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return msgspec.convert(raw, CloudConfig)
