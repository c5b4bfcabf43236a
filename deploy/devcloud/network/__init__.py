"""Network (Neutron v2.0): networks, subnets (IP allocation), routers (interfaces, external gateway), ports,
security groups and rules, floating IPs, quotas, tags and extensions, under `/networking/v2.0` (the SDK appends
`/v2.0` to the catalog URL itself, with no discovery).

The core is plain functions over the cloud's tables that raise `NetError`; the HTTP handlers turn that into
Neutron's envelope, and the functions other services call (compute's server NICs, the load balancer's VIP ports)
turn it into their own service's error.

The package: `model.py` (kinds, `NetError`, the per-cloud state and shared rules), `core.py` (the resources'
functions and the seeded external networks), `services.py` (what compute and the load balancer call) and
`http.py` (the aiohttp handlers and route table). Other modules import only what this file re-exports."""

from deploy.devcloud.network.core import seed
from deploy.devcloud.network.http import routes
from deploy.devcloud.network.model import net_state
from deploy.devcloud.network.services import (
    create_server_port,
    create_service_port,
    delete_port,
    floating_ips_of_server,
    get_port,
    get_subnet,
    network_name,
    release_server_ports,
)

__all__ = [
    "create_server_port",
    "create_service_port",
    "delete_port",
    "floating_ips_of_server",
    "get_port",
    "get_subnet",
    "net_state",
    "network_name",
    "release_server_ports",
    "routes",
    "seed",
]
