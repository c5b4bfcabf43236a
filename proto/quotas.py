"""Quota resource names and the build queue's words, shared by the scheduler (which enforces and decides) and the
API (which validates quota rows and shows a waiting cluster's place): one definition each (docs/adr/0008)."""

from __future__ import annotations

CLUSTER, NODE, VCPU, RAM, VOLUME_GB = "Cluster", "Node", "vCPU", "RAM", "VolumeGB"
RESOURCES = (CLUSTER, NODE, VCPU, RAM, VOLUME_GB)
"""Magnum's quota resource names: ``Cluster`` (Magnum's own), then Cove's: nodes, vCPUs, RAM in MB, volume GB.
python-magnumclient passes any name through (``openstack coe quotas create --resource vCPU``)."""

UNLIMITED = -1
DEFAULT_ENV = {
    CLUSTER: "COVE_DEFAULT_CLUSTER_QUOTA",
    NODE: "COVE_DEFAULT_NODE_QUOTA",
    VCPU: "COVE_DEFAULT_VCPU_QUOTA",
    RAM: "COVE_DEFAULT_RAM_QUOTA",
    VOLUME_GB: "COVE_DEFAULT_VOLUMEGB_QUOTA",
}
"""The configuration variable of each resource's default limit (projects without a quota row)."""
MAGNUM_DEFAULT_CLUSTER_QUOTA = 20
"""Magnum's ``[quotas] max_clusters_per_project`` default; the other resources default to unlimited (-1)."""


def default_limits(environ: dict[str, str]) -> dict[str, int]:
    """Each resource's default limit from the environment (``COVE_DEFAULT_*_QUOTA``). Raises ``ValueError``."""
    out: dict[str, int] = {}
    for resource, var in DEFAULT_ENV.items():
        raw = environ.get(var, "").strip()
        value = int(raw) if raw else (MAGNUM_DEFAULT_CLUSTER_QUOTA if resource == CLUSTER else UNLIMITED)
        if value < (0 if resource == CLUSTER else UNLIMITED):
            raise ValueError(f"{var} must be >= {0 if resource == CLUSTER else UNLIMITED}, got {value}")
        out[resource] = value
    return out


def cloud_quota_checked(environ: dict[str, str]) -> bool:
    """Whether the scheduler checks the project's remaining cloud quota before building: an identity URL is
    configured (``COVE_AUTH_URL`` or ``COVE_CLOUD_AUTH_URL``) and ``COVE_CLOUD_QUOTA_CHECK`` is not off. The API
    then has every resize and nodegroup create decided by the scheduler, since the cloud may refuse any growth."""
    if not (environ.get("COVE_AUTH_URL") or environ.get("COVE_CLOUD_AUTH_URL")):
        return False
    return environ.get("COVE_CLOUD_QUOTA_CHECK", "on").strip().lower() not in ("off", "0", "false", "no")


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def waiting_reason(position: int) -> str:
    """A queued cluster's ``status_reason``."""
    return f"Waiting to be built: {ordinal(position)} in line"
