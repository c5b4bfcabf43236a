"""COE drivers: ``driver_for(coe)`` picks the driver of a cluster's COE (see ``base.py`` for the interface)."""

from __future__ import annotations

from services.provisioner.drivers.base import CoeDriver
from services.provisioner.drivers.kubernetes import KubernetesDriver
from services.provisioner.drivers.mesos import MesosDriver
from services.provisioner.drivers.swarm import SwarmDriver

DRIVERS: dict[str, type[CoeDriver]] = {
    "kubernetes": KubernetesDriver,
    "swarm-mode": SwarmDriver,
    "swarm": SwarmDriver,  # Magnum's API accepted both names for Swarm mode
    "mesos": MesosDriver,
}


def driver_for(coe: str) -> CoeDriver:
    """The driver of ``coe``; ``ValueError`` for a COE Cove has no driver for."""
    try:
        driver = DRIVERS[coe]
    except KeyError:
        raise ValueError(f"no driver for COE {coe!r}; Cove drives: {', '.join(sorted(DRIVERS))}") from None
    return driver()
