"""Compute (Nova v2.1 with microversions up to 2.96): discovery, flavors, servers and their state machine,
actions, metadata, tags, keypairs, server groups, limits, quota sets, volume attachments, availability zones and
hypervisors; plus the server faults the admin API injects.

A server's life: BUILD (task_state scheduling) -> waits for a build slot -> spawning -> after
timing.boot_seconds ACTIVE (or ERROR when the boot failure rate strikes). Placement happens at create: the quota
first (403), then a host from the hypervisor capacity (none -> ERROR "No valid host was found"). Delete sets
task_state deleting and the server 404s after timing.delete_seconds; capacity, ports and volumes are released then.
The Neutron side of a server's NICs and the Cinder side of its volumes live in network/services.py and volume.py.

The package: `model.py` (constants, the per-cloud compute state, the seeded flavors), `core.py` (the server state
machine, placement and boot, injected faults), `http.py` (the route table, microversions, discovery, shared
handler helpers), `servers.py` (flavors, servers, actions, metadata, tags, volume attachments) and `resources.py`
(keypairs, server groups, limits, quota sets, zones, hypervisors). Other modules import only what this file
re-exports; importing it registers every handler on `routes`."""

from deploy.devcloud.compute import resources, servers  # noqa: F401 - registers their handlers on routes
from deploy.devcloud.compute.core import apply_server_fault, apply_zone_down
from deploy.devcloud.compute.http import routes
from deploy.devcloud.compute.model import seed

__all__ = ["apply_server_fault", "apply_zone_down", "routes", "seed"]
