"""Compute's model: Nova's constants and the per-cloud compute state the generic tables do not hold (flavors,
counted usage), seeded from the configuration."""

from __future__ import annotations

import uuid
import weakref
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from deploy.devcloud.state import Cloud
from deploy.devcloud.web import nova_error

PREFIX = "/compute"
V21 = f"{PREFIX}/v2.1"
ERR = nova_error

MIN_VERSION = (2, 1)
MAX_VERSION = (2, 96)
MAX_LIMIT = 1000
MAX_USER_DATA = 65535

SERVERS = "server"
KEYPAIRS = "keypair"
GROUPS = "server_group"

# vm_state -> the API status, as Nova maps them
POWER_RUNNING = 1
POWER_SHUTDOWN = 4
POWER_NOSTATE = 0

NO_VALID_HOST = "No valid host was found. There are not enough hosts available."
GROUP_POLICIES = ("affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity")

Version = tuple[int, int]
MV: web.RequestKey[Version] = web.RequestKey("compute_microversion", tuple)


# --------------------------------------------------------------------------------------------------------------------
# Per-cloud compute state that the generic tables do not hold


@dataclass
class Usage:
    instances: int = 0
    cores: int = 0
    ram: int = 0


@dataclass
class ComputeState:
    flavors: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> flavor, in seed order
    usage: dict[str, Usage] = field(default_factory=dict)  # project id -> live servers' counted usage
    seq: int = 0  # creation order, the default sort (newest first)
    keypair_ids: int = 0


_STATES: weakref.WeakKeyDictionary[Cloud, ComputeState] = weakref.WeakKeyDictionary()


def compute_state(cloud: Cloud) -> ComputeState:
    state = _STATES.get(cloud)
    if state is None:
        state = _STATES[cloud] = ComputeState()
    return state


def _usage(cloud: Cloud, project_id: str) -> Usage:
    usage = compute_state(cloud).usage
    u = usage.get(project_id)
    if u is None:
        u = usage[project_id] = Usage()
    return u


def seed(cloud: Cloud) -> None:
    """Flavors from the configuration, with ids that stay the same across restarts."""
    state = compute_state(cloud)
    for f in cloud.config.flavors:
        fid = f.id or str(uuid.uuid5(uuid.NAMESPACE_URL, f"devcloud/flavor/{f.name}"))
        state.flavors[fid] = {
            "id": fid,
            "name": f.name,
            "vcpus": f.vcpus,
            "ram": f.ram_mb,
            "disk": f.disk_gb,
            "ephemeral": 0,
            "swap": 0,
            "is_public": f.is_public,
            "description": None,
            "extra_specs": {},
        }
