"""What other emulated services call in Network: compute's server NICs, the load balancer's VIP ports; each
turns a `NetError` into the calling service's own error."""

from __future__ import annotations

import copy
from typing import Any

from deploy.devcloud.network.core import _drop_port, create_port, ensure_default_sg, update_port
from deploy.devcloud.network.model import NetError, _network_visible, net_state, render
from deploy.devcloud.state import Cloud
from deploy.devcloud.web import ApiError, nova_error, octavia_error

# ====================================================================================================================
# What other services call: compute's server NICs, the load balancer's VIP ports.


def _to_nova(exc: NetError) -> ApiError:
    status = exc.status
    if exc.type == "OverQuota":
        return nova_error(403, "Maximum number of ports exceeded")
    if exc.type in ("NetworkNotFound", "SecurityGroupNotFound", "SubnetNotFound"):
        status = 400
    return nova_error(status, exc.message)


def create_server_port(cloud: Cloud, project_id: str, network_id: str | None, port_id: str | None, server_id: str,
                       security_groups: list[str]) -> dict[str, Any]:
    """A server's NIC. An existing port (by id) is bound to the server; otherwise a new port on `network_id` is
    created with `security_groups` (names or ids; `default` when empty) and deleted again by release_server_ports.
    Errors are Nova's: 400 unknown network or security group, 404 unknown port, 409 port in use, 403 port quota."""
    ensure_default_sg(cloud, project_id)
    try:
        if port_id:
            port = cloud.table("port").get(port_id)
            if port is None or port["_project_id"] != project_id:
                raise nova_error(404, f"Port id {port_id} could not be found.")
            if port["device_id"]:
                raise nova_error(409, f"Port {port_id} is still in use.")
            update_port(cloud, port, {"device_id": server_id, "device_owner": "compute:nova"}, False)
            port["binding:host_id"] = port["binding:host_id"] or "devcloud"
            return copy.deepcopy(render(port))
        if not network_id:
            raise nova_error(400, "A network or a port is required to create a server NIC.")
        net = cloud.table("network").get(network_id)
        if net is None or not _network_visible(net, project_id, False):
            raise nova_error(400, f"Network {network_id} could not be found.")
        if not net["subnets"]:
            raise nova_error(400, f"Network {network_id} requires a subnet in order to boot instances on.")
        port = create_port(cloud, project_id, False, {
            "network_id": network_id, "device_id": server_id, "device_owner": "compute:nova",
            "security_groups": list(security_groups) or ["default"],
            "binding:host_id": "devcloud",
        })
        port["_nova"] = True
        return copy.deepcopy(render(port))
    except NetError as exc:
        raise _to_nova(exc) from None


def release_server_ports(cloud: Cloud, server_id: str) -> None:
    """A server is gone: ports Nova created for it are deleted (their floating IPs disassociated); ports that
    existed before are unbound (DOWN) and keep their floating IPs, as in Neutron."""
    for port_id in list(net_state(cloud).ports_by_device.get(server_id, ())):
        port = cloud.table("port").get(port_id)
        if port is None:
            continue
        if port["_nova"]:
            _drop_port(cloud, port)
        else:
            update_port(cloud, port, {"device_id": "", "device_owner": "", "binding:host_id": ""}, True)


def server_ports(cloud: Cloud, server_id: str) -> list[dict[str, Any]]:
    """The ports bound to a server, rendered (copies)."""
    table = cloud.table("port")
    ports = [table.get(pid) for pid in net_state(cloud).ports_by_device.get(server_id, ())]
    return [copy.deepcopy(render(p)) for p in ports if p is not None]


def network_name(cloud: Cloud, network_id: str) -> str:
    """The network's name (what Nova keys `addresses` by); its id when it has no name or is gone."""
    net = cloud.table("network").get(network_id)
    return (net["name"] if net is not None else "") or network_id


def floating_ips_of_server(cloud: Cloud, server_id: str) -> list[tuple[str, str, str]]:
    """(network name, fixed ip, floating ip) for each floating IP associated with one of the server's ports."""
    state = net_state(cloud)
    out: list[tuple[str, str, str]] = []
    for port_id in state.ports_by_device.get(server_id, ()):
        port = cloud.table("port").get(port_id)
        if port is None:
            continue
        for fip_id in state.fips_by_port.get(port_id, ()):
            fip = cloud.table("floating_ip").get(fip_id)
            if fip is not None and fip["fixed_ip_address"]:
                out.append((network_name(cloud, port["network_id"]), fip["fixed_ip_address"],
                            fip["floating_ip_address"]))
    return out


def create_service_port(cloud: Cloud, project_id: str, subnet_id: str | None, network_id: str | None,
                        device_owner: str, device_id: str) -> dict[str, Any]:
    """A port for a service (a load balancer's VIP) on `subnet_id` (an address from it) or on `network_id` (its
    first subnet). Errors are Octavia's: 400 for an unknown or invisible subnet/network, 409 when the project's
    port quota or the subnet's addresses are exhausted."""
    try:
        fixed_ips = None
        if subnet_id:
            subnet = cloud.table("subnet").get(subnet_id)
            net = cloud.table("network").get(subnet["network_id"]) if subnet is not None else None
            if subnet is None or net is None or not (subnet["_project_id"] == project_id or net["shared"]):
                raise octavia_error(400, f"Validation failure: Subnet {subnet_id} not found.")
            network_id = subnet["network_id"]
            fixed_ips = [{"subnet_id": subnet_id}]
        elif network_id:
            net = cloud.table("network").get(network_id)
            if net is None or not _network_visible(net, project_id, False):
                raise octavia_error(400, f"Validation failure: Network {network_id} not found.")
        else:
            raise octavia_error(400, "Validation failure: VIP must contain one of: vip_port_id, vip_network_id, "
                                "vip_subnet_id.")
        body: dict[str, Any] = {"network_id": network_id, "device_owner": device_owner, "device_id": device_id,
                                "security_groups": [], "name": f"octavia-lb-{device_id}"}
        if fixed_ips is not None:
            body["fixed_ips"] = fixed_ips
        return copy.deepcopy(render(create_port(cloud, project_id, True, body)))
    except NetError as exc:
        raise octavia_error(409 if exc.status == 409 else exc.status, exc.message) from None


def delete_port(cloud: Cloud, port_id: str) -> None:
    """Delete a port (idempotent): its addresses are released and its floating IPs disassociated."""
    port = cloud.table("port").get(port_id)
    if port is not None:
        _drop_port(cloud, port)


def get_subnet(cloud: Cloud, subnet_id: str) -> dict[str, Any] | None:
    """A subnet's API view (a copy), or None."""
    subnet = cloud.table("subnet").get(subnet_id)
    return copy.deepcopy(render(subnet)) if subnet is not None else None


def get_port(cloud: Cloud, port_id: str) -> dict[str, Any] | None:
    """A port's API view (a copy), or None."""
    port = cloud.table("port").get(port_id)
    return copy.deepcopy(render(port)) if port is not None else None
