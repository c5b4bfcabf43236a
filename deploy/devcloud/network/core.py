"""Network's core: plain functions over the cloud's tables that raise `NetError`: IP allocation, networks,
subnets, security groups and rules, ports, routers, floating IPs, and the seeded external networks."""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Iterable
from typing import Any

import structlog

from deploy.devcloud.clock import now_iso
from deploy.devcloud.network.model import (
    FLOATINGIP,
    NETWORK,
    PORT,
    ROUTER,
    SECGROUP,
    SGRULE,
    SUBNET,
    IPAddress,
    IPNetwork,
    NetError,
    _bad,
    _base,
    _bool,
    _check_owner,
    _check_quota,
    _invalid,
    _lookup,
    _network_visible,
    _not_found,
    _record,
    _touch,
    net_state,
)
from deploy.devcloud.state import Cloud
from deploy.devcloud.web import new_id

log = structlog.get_logger("devcloud.network")

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


# ====================================================================================================================
# IP address management: a subnet keeps its pools as integer ranges, the set of used addresses and a cursor, so
# allocation is amortised O(1) however large the subnet.


def _pools_of(subnet: dict[str, Any]) -> list[tuple[int, int]]:
    return subnet["_pools"]  # type: ignore[no-any-return]


def _pool_size(pools: list[tuple[int, int]]) -> int:
    return sum(end - start + 1 for start, end in pools)


def _position_to_address(pools: list[tuple[int, int]], position: int) -> int:
    for start, end in pools:
        size = end - start + 1
        if position < size:
            return start + position
        position -= size
    raise IndexError(position)


def allocate_ip(subnet: dict[str, Any], requested: str | None = None) -> str:
    """Take `requested` (must be in the subnet and free) or the next free address of the allocation pools."""
    net: IPNetwork = subnet["_net"]
    used: set[int] = subnet["_used"]
    taken: set[int] | None = subnet.get("_taken")  # every loopback subnet's of the same CIDR (NetState)
    if taken is None:
        taken = set()
    if requested is not None:
        try:
            addr = ipaddress.ip_address(requested)
        except ValueError:
            raise _invalid(f"'{requested}' is not a valid IP address.") from None
        if addr not in net:
            raise _invalid(f"IP address {requested} is not a valid IP for the specified subnet.")
        if int(addr) in used:
            raise NetError(409, "IpAddressAlreadyAllocated",
                           f"IP address {requested} already allocated in subnet {subnet['id']}")
        used.add(int(addr))
        taken.add(int(addr))
        return str(addr)
    pools = _pools_of(subnet)
    total = _pool_size(pools)
    if total == 0:
        raise NetError(409, "IpAddressGenerationFailure",
                       f"No more IP addresses available on network {subnet['network_id']}.")
    position = subnet["_cursor"] % total
    for _ in range(min(total, len(used) + len(taken) + 1)):
        candidate = _position_to_address(pools, position)
        position = (position + 1) % total
        if candidate not in used and candidate not in taken:
            used.add(candidate)
            taken.add(candidate)
            subnet["_cursor"] = position
            return str(ipaddress.ip_address(candidate))
    raise NetError(409, "IpAddressGenerationFailure",
                   f"No more IP addresses available on network {subnet['network_id']}.")


def release_ip(cloud: Cloud, subnet_id: str, address: str) -> None:
    subnet = cloud.table("subnet").get(subnet_id)
    if subnet is not None:
        subnet["_used"].discard(int(ipaddress.ip_address(address)))
        if subnet.get("_taken") is not None:
            subnet["_taken"].discard(int(ipaddress.ip_address(address)))


# ====================================================================================================================
# Networks


def create_network(cloud: Cloud, project_id: str, is_admin: bool, body: dict[str, Any], *,
                   item_id: str | None = None) -> dict[str, Any]:
    shared = _bool(body.get("shared", False), "shared")
    external = _bool(body.get("router:external", False), "router:external")
    if (shared or external) and not is_admin:
        attr = "shared" if shared else "router:external"
        raise NetError(403, "PolicyNotAuthorized", f"(rule:create_network and rule:create_network:{attr}) "
                       "is disallowed by policy")
    _check_quota(cloud, NETWORK, project_id)
    item = _base(cloud, NETWORK, project_id, body)
    if item_id:
        item["id"] = item_id
    item.update({
        "status": "ACTIVE",
        "admin_state_up": _bool(body.get("admin_state_up", True), "admin_state_up"),
        "subnets": [],
        "shared": shared,
        "router:external": external,
        "mtu": int(body.get("mtu") or (1500 if external else 1442)),
        "port_security_enabled": _bool(body.get("port_security_enabled", True), "port_security_enabled"),
        "availability_zone_hints": list(body.get("availability_zone_hints") or []),
        "availability_zones": list(cloud.config.availability_zones[:1]),
        "ipv4_address_scope": None,
        "ipv6_address_scope": None,
        "is_default": bool(body.get("is_default", False)),
        "qos_policy_id": body.get("qos_policy_id"),
        "dns_domain": body.get("dns_domain") or "",
        "l2_adjacency": True,
        "_ports": 0,
        "_fips": 0,
    })
    for key in ("provider:network_type", "provider:physical_network", "provider:segmentation_id"):
        if key in body:
            item[key] = body[key]
    cloud.table("network").add(item, project_id)
    if shared or external:
        net_state(cloud).public_networks.add(item["id"])
    _record(cloud, NETWORK, item)
    return item


def update_network(cloud: Cloud, item: dict[str, Any], body: dict[str, Any], is_admin: bool) -> None:
    for attr in ("shared", "router:external"):
        if attr in body:
            value = _bool(body[attr], attr)
            if value != item[attr] and not is_admin:
                raise NetError(403, "PolicyNotAuthorized", f"rule:update_network:{attr} is disallowed by policy")
            item[attr] = value
    for attr in ("admin_state_up", "port_security_enabled", "is_default"):
        if attr in body and body[attr] is not None:
            item[attr] = _bool(body[attr], attr)
    for attr in ("name", "description", "dns_domain"):
        if attr in body:
            item[attr] = body[attr] or ""
    if body.get("mtu") is not None:
        item["mtu"] = int(body["mtu"])
    if "qos_policy_id" in body:
        item["qos_policy_id"] = body["qos_policy_id"]
    public = net_state(cloud).public_networks
    if item["shared"] or item["router:external"]:
        public.add(item["id"])
    else:
        public.discard(item["id"])


def delete_network(cloud: Cloud, item: dict[str, Any]) -> None:
    if item["_ports"] > 0 or item["_fips"] > 0:
        raise NetError(409, "NetworkInUse", f"Unable to complete operation on network {item['id']}. "
                       "There are one or more ports still in use on the network.")
    for subnet_id in list(item["subnets"]):
        subnet = cloud.table("subnet").get(subnet_id)
        if subnet is not None:
            _drop_subnet(cloud, subnet)
    cloud.table("network").remove(item["id"])
    net_state(cloud).public_networks.discard(item["id"])
    cloud.ledger.deleted(item["id"])


# ====================================================================================================================
# Subnets


def _default_pools(net: IPNetwork, gateway: IPAddress | None) -> list[tuple[int, int]]:
    if net.version == 4:
        if net.prefixlen >= 31:
            first, last = int(net.network_address), int(net.broadcast_address)
        else:
            first, last = int(net.network_address) + 1, int(net.broadcast_address) - 1
    else:
        first, last = int(net.network_address) + 1, int(net.broadcast_address)
    if first > last:
        return []
    if gateway is None or not first <= int(gateway) <= last:
        return [(first, last)]
    g = int(gateway)
    return [r for r in ((first, g - 1), (g + 1, last)) if r[0] <= r[1]]


def _pool_view(pools: list[tuple[int, int]]) -> list[dict[str, str]]:
    return [{"start": str(ipaddress.ip_address(s)), "end": str(ipaddress.ip_address(e))} for s, e in pools]


def _parse_pools(raw: Any, net: IPNetwork, gateway: IPAddress | None) -> list[tuple[int, int]]:
    if not isinstance(raw, list):
        raise _invalid("allocation_pools must be a list of {start, end}.")
    pools: list[tuple[int, int]] = []
    for pool in raw:
        try:
            start = ipaddress.ip_address(pool["start"])
            end = ipaddress.ip_address(pool["end"])
        except (KeyError, TypeError, ValueError):
            raise _invalid(f"Invalid data format for IP pool: '{pool}'.") from None
        if start not in net or end not in net or int(start) > int(end):
            raise NetError(400, "InvalidAllocationPool", f"The allocation pool {start}-{end} spans beyond the "
                           f"subnet cidr {net}.")
        if gateway is not None and int(start) <= int(gateway) <= int(end):
            raise NetError(409, "GatewayConflictWithAllocationPools",
                           f"Gateway ip {gateway} conflicts with allocation pool {start}-{end}.")
        for s, e in pools:
            if int(start) <= e and s <= int(end):
                raise NetError(400, "OverlappingAllocationPools", f"Found overlapping allocation pools: {start}-{end}")
        pools.append((int(start), int(end)))
    return pools


def create_subnet(cloud: Cloud, project_id: str, is_admin: bool, body: dict[str, Any]) -> dict[str, Any]:
    network_id = body.get("network_id")
    if not network_id:
        raise _bad("Failed to parse request. Required attribute 'network_id' not specified")
    net = _lookup(cloud, NETWORK, network_id, project_id, is_admin)
    _check_owner(NETWORK, net, project_id, is_admin, "create_subnet_on")
    cidr = body.get("cidr")
    if not cidr:
        raise _bad("Bad subnet request: a cidr must be specified (subnet pools are not emulated).")
    try:
        parsed = ipaddress.ip_network(cidr, strict=True)
    except ValueError:
        try:
            recommended = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise _invalid(f"'{cidr}' is not a valid IP subnet.") from None
        raise _invalid(f"'{cidr}' isn't a recognized IP subnet cidr, '{recommended}' is recommended.") from None
    ip_version = int(body.get("ip_version") or parsed.version)
    if ip_version != parsed.version:
        raise _invalid(f"Cidr {cidr} does not match ip_version {ip_version}.")
    for other_id in net["subnets"]:
        other = cloud.table("subnet").get(other_id)
        if other is not None and other["_net"].overlaps(parsed):
            raise _invalid(f"Requested subnet with cidr: {cidr} for network: {network_id} overlaps with another "
                           "subnet.")
    _check_quota(cloud, SUBNET, project_id)
    gateway: IPAddress | None
    if "gateway_ip" in body and body["gateway_ip"] is None:
        gateway = None
    elif body.get("gateway_ip"):
        try:
            gateway = ipaddress.ip_address(body["gateway_ip"])
        except ValueError:
            raise _invalid(f"'{body['gateway_ip']}' is not a valid IP address.") from None
        if gateway not in parsed:
            raise _invalid(f"Gateway IP {gateway} is not in subnet {cidr}.")
    else:
        gateway = parsed.network_address + 1 if parsed.num_addresses > 2 else None
    if body.get("allocation_pools"):
        pools = _parse_pools(body["allocation_pools"], parsed, gateway)
    else:
        pools = _default_pools(parsed, gateway)
    item = _base(cloud, SUBNET, project_id, body)
    item.update({
        "network_id": network_id,
        "ip_version": ip_version,
        "cidr": str(parsed),
        "gateway_ip": str(gateway) if gateway is not None else None,
        "allocation_pools": _pool_view(pools),
        "enable_dhcp": _bool(body.get("enable_dhcp", True), "enable_dhcp"),
        "dns_nameservers": list(body.get("dns_nameservers") or []),
        "host_routes": list(body.get("host_routes") or []),
        "ipv6_ra_mode": body.get("ipv6_ra_mode"),
        "ipv6_address_mode": body.get("ipv6_address_mode"),
        "subnetpool_id": None,
        "service_types": list(body.get("service_types") or []),
        "segment_id": None,
        "dns_publish_fixed_ip": False,
        "_net": parsed,
        "_pools": pools,
        "_used": set(),
        "_taken": (net_state(cloud).loopback_taken.setdefault(str(parsed), set())
                   if parsed.version == 4 and parsed.subnet_of(LOOPBACK) else None),  # type: ignore[arg-type]
        "_cursor": 0,
        "_routers": {},  # router id -> its interface port on this subnet
    })
    cloud.table("subnet").add(item, project_id)
    net["subnets"].append(item["id"])
    _touch(net)
    _record(cloud, SUBNET, item)
    return item


def update_subnet(cloud: Cloud, item: dict[str, Any], body: dict[str, Any]) -> None:
    for attr in ("name", "description"):
        if attr in body:
            item[attr] = body[attr] or ""
    for attr in ("dns_nameservers", "host_routes", "service_types"):
        if attr in body:
            item[attr] = list(body[attr] or [])
    if "enable_dhcp" in body and body["enable_dhcp"] is not None:
        item["enable_dhcp"] = _bool(body["enable_dhcp"], "enable_dhcp")
    if "gateway_ip" in body:
        if item["_routers"]:
            raise NetError(409, "GatewayIpInUse", f"Gateway ip {item['gateway_ip']} is in use by a router "
                           "interface.")
        if body["gateway_ip"] is None:
            item["gateway_ip"] = None
        else:
            try:
                gateway = ipaddress.ip_address(body["gateway_ip"])
            except ValueError:
                raise _invalid(f"'{body['gateway_ip']}' is not a valid IP address.") from None
            if gateway not in item["_net"]:
                raise _invalid(f"Gateway IP {gateway} is not in subnet {item['cidr']}.")
            item["gateway_ip"] = str(gateway)
    if body.get("allocation_pools"):
        gw = ipaddress.ip_address(item["gateway_ip"]) if item["gateway_ip"] else None
        item["_pools"] = _parse_pools(body["allocation_pools"], item["_net"], gw)
        item["allocation_pools"] = _pool_view(item["_pools"])
        item["_cursor"] = 0


def _drop_subnet(cloud: Cloud, item: dict[str, Any]) -> None:
    cloud.table("subnet").remove(item["id"])
    net = cloud.table("network").get(item["network_id"])
    if net is not None and item["id"] in net["subnets"]:
        net["subnets"].remove(item["id"])
        _touch(net)
    cloud.ledger.deleted(item["id"])


def delete_subnet(cloud: Cloud, item: dict[str, Any]) -> None:
    if item["_used"] or item["_routers"]:
        raise NetError(409, "SubnetInUse", f"Unable to complete operation on subnet {item['id']}: One or more "
                       "ports have an IP allocation from this subnet.")
    _drop_subnet(cloud, item)


# ====================================================================================================================
# Security groups and rules


def _rule(cloud: Cloud, sg: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """Build (not yet store) a rule of group `sg` from a request body, validated and normalised."""
    direction = body.get("direction")
    if direction not in ("ingress", "egress"):
        raise _invalid(f"{direction} is not in valid_values ['ingress', 'egress'].")
    ethertype = body.get("ethertype") or "IPv4"
    if ethertype not in ("IPv4", "IPv6"):
        raise NetError(400, "SecurityGroupRuleInvalidEtherType",
                       f"Security group rule for ethertype '{ethertype}' not supported. Allowed values are "
                       "['IPv4', 'IPv6'].")
    protocol = body.get("protocol")
    if protocol is not None:
        protocol = str(protocol).lower()
        if protocol == "any":
            protocol = None
        elif not protocol.isdigit() and protocol not in ("tcp", "udp", "icmp", "icmpv6", "ipv6-icmp", "sctp", "ah",
                                                         "esp", "gre", "dccp", "igmp", "udplite", "vrrp",
                                                         "ipip", "ospf", "pgm", "rsvp", "egp", "encap") or protocol.isdigit() and not 0 <= int(protocol) <= 255:
            raise NetError(400, "SecurityGroupRuleInvalidProtocol", f"Security group rule protocol {protocol} not "
                           "supported.")
    pmin, pmax = body.get("port_range_min"), body.get("port_range_max")
    try:
        pmin = int(pmin) if pmin is not None else None
        pmax = int(pmax) if pmax is not None else None
    except (TypeError, ValueError):
        raise _invalid("port_range_min and port_range_max must be integers.") from None
    if (pmin is not None or pmax is not None) and protocol is None:
        raise NetError(400, "SecurityGroupProtocolRequiredWithPorts", "Must also specify protocol if port range "
                       "is given.")
    if protocol in ("tcp", "udp", "sctp", "dccp", "udplite"):
        if pmin is not None and pmax is None:
            pmax = pmin
        for p in (pmin, pmax):
            if p is not None and not 1 <= p <= 65535:
                raise NetError(400, "SecurityGroupInvalidPortValue", f"Invalid value for port {p}.")
        if pmin is not None and pmax is not None and pmin > pmax:
            raise NetError(400, "SecurityGroupInvalidPortRange", "For TCP/UDP protocols, port_range_min must be "
                           "<= port_range_max")
    prefix = body.get("remote_ip_prefix")
    remote_group = body.get("remote_group_id")
    if prefix is not None and remote_group is not None:
        raise NetError(400, "SecurityGroupRemoteGroupAndRemoteIpPrefix",
                       "Only remote_ip_prefix or remote_group_id may be provided.")
    normalized = None
    if prefix is not None:
        try:
            pnet = ipaddress.ip_network(prefix, strict=False)
        except ValueError:
            raise _invalid(f"'{prefix}' is not a valid IP prefix.") from None
        if (pnet.version == 4) != (ethertype == "IPv4"):
            raise NetError(400, "SecurityGroupRuleParameterConflict",
                           f"Conflicting value ethertype {ethertype} for CIDR {prefix}")
        normalized = str(pnet)
    if remote_group is not None:
        other = cloud.table("security_group").get(remote_group)
        if other is None or other["_project_id"] != sg["_project_id"]:
            raise NetError(404, "SecurityGroupNotFound", f"Security group {remote_group} does not exist")
    at = now_iso()
    return {
        "id": new_id(),
        "project_id": sg["project_id"],
        "tenant_id": sg["project_id"],
        "security_group_id": sg["id"],
        "direction": direction,
        "ethertype": ethertype,
        "protocol": protocol,
        "port_range_min": pmin,
        "port_range_max": pmax,
        "remote_ip_prefix": prefix,
        "remote_group_id": remote_group,
        "remote_address_group_id": None,
        "normalized_cidr": normalized,
        "description": body.get("description") or "",
        "belongs_to_default_sg": sg["name"] == "default" and sg["_default"],
        "tags": [],
        "created_at": at,
        "updated_at": at,
        "revision_number": 0,
    }


def _rule_signature(rule: dict[str, Any]) -> tuple[Any, ...]:
    cidr = rule["normalized_cidr"]
    if cidr in ("0.0.0.0/0", "::/0"):
        cidr = None
    return (rule["direction"], rule["ethertype"], rule["protocol"], rule["port_range_min"], rule["port_range_max"],
            cidr, rule["remote_group_id"])


def add_rule(cloud: Cloud, sg: dict[str, Any], body: dict[str, Any], *, check_quota: bool = True
             ) -> dict[str, Any]:
    rule = _rule(cloud, sg, body)
    signature = _rule_signature(rule)
    for existing in sg["security_group_rules"]:
        if _rule_signature(existing) == signature:
            raise NetError(409, "SecurityGroupRuleExists",
                           f"Security group rule already exists. Rule id is {existing['id']}.")
    if check_quota:
        _check_quota(cloud, SGRULE, sg["_project_id"])
    cloud.table("security_group_rule").add(rule, sg["_project_id"])
    sg["security_group_rules"].append(rule)
    _touch(sg)
    return rule


def create_security_group(cloud: Cloud, project_id: str, body: dict[str, Any], *, default: bool = False
                          ) -> dict[str, Any]:
    if not default:
        ensure_default_sg(cloud, project_id)
        if body.get("name") == "default":
            raise NetError(409, "SecurityGroupDefaultAlreadyExists", "Default security group already exists.")
        _check_quota(cloud, SECGROUP, project_id)
    item = _base(cloud, SECGROUP, project_id, body)
    item.update({
        "stateful": _bool(body.get("stateful", True), "stateful"),
        "shared": False,
        "security_group_rules": [],
        "_default": default,
    })
    if default:
        item["name"] = "default"
        item["description"] = "Default security group"
    cloud.table("security_group").add(item, project_id)
    if default:
        for ethertype in ("IPv4", "IPv6"):
            add_rule(cloud, item, {"direction": "ingress", "ethertype": ethertype, "remote_group_id": item["id"]},
                     check_quota=False)
    for ethertype in ("IPv4", "IPv6"):
        add_rule(cloud, item, {"direction": "egress", "ethertype": ethertype}, check_quota=False)
    item["revision_number"] = 1
    _record(cloud, SECGROUP, item)
    return item


def ensure_default_sg(cloud: Cloud, project_id: str | None) -> str | None:
    """Every project has a `default` security group, created on its first use of the network service."""
    if not project_id:
        return None
    state = net_state(cloud)
    sg_id = state.default_sg.get(project_id)
    if sg_id is None:
        sg_id = create_security_group(cloud, project_id, {}, default=True)["id"]
        state.default_sg[project_id] = sg_id
        log.info("default_security_group_created", project_id=project_id, security_group_id=sg_id)
    return sg_id


def delete_security_group(cloud: Cloud, item: dict[str, Any], is_admin: bool) -> None:
    if item["_default"] and not is_admin:
        raise NetError(409, "SecurityGroupCannotRemoveDefault", "Insufficient rights for removing default "
                       "security group.")
    for port in cloud.table("port").of_project(item["_project_id"]):
        if item["id"] in port["security_groups"]:
            raise NetError(409, "SecurityGroupInUse", f"Security Group {item['id']} in use.")
    rules = cloud.table("security_group_rule")
    for rule in item["security_group_rules"]:
        rules.remove(rule["id"])
    cloud.table("security_group").remove(item["id"])
    state = net_state(cloud)
    if state.default_sg.get(item["_project_id"]) == item["id"]:
        del state.default_sg[item["_project_id"]]
    cloud.ledger.deleted(item["id"])


def delete_rule(cloud: Cloud, rule: dict[str, Any]) -> None:
    cloud.table("security_group_rule").remove(rule["id"])
    sg = cloud.table("security_group").get(rule["security_group_id"])
    if sg is not None:
        sg["security_group_rules"] = [r for r in sg["security_group_rules"] if r["id"] != rule["id"]]
        _touch(sg)


def _resolve_security_groups(cloud: Cloud, project_id: str, refs: Iterable[str], is_admin: bool) -> list[str]:
    """Security groups by id or (within the project) by name."""
    out: list[str] = []
    table = cloud.table("security_group")
    for ref in refs:
        sg = table.get(ref)
        if sg is not None and (is_admin or sg["_project_id"] == project_id):
            out.append(sg["id"])
            continue
        if ref == "default":
            sg_id = ensure_default_sg(cloud, project_id)
            if sg_id:
                out.append(sg_id)
                continue
        matches = [s["id"] for s in table.of_project(project_id) if s["name"] == ref]
        if len(matches) == 1:
            out.append(matches[0])
        elif len(matches) > 1:
            raise NetError(409, "DuplicateSecurityGroup",
                           f"Multiple security_group matches found for name '{ref}', use an ID to be more specific.")
        else:
            raise NetError(404, "SecurityGroupNotFound", f"Security group {ref} does not exist")
    return list(dict.fromkeys(out))


# ====================================================================================================================
# Ports


def _mac(cloud: Cloud) -> str:
    r = cloud.rng.getrandbits(24)
    return f"fa:16:3e:{r >> 16 & 0xFF:02x}:{r >> 8 & 0xFF:02x}:{r & 0xFF:02x}"


def _allocate_fixed_ips(cloud: Cloud, net: dict[str, Any], requested: Any) -> list[dict[str, str]]:
    """Fixed IPs for a port on `net`: the requested ones, or one from the network's first IPv4 subnet. All or none."""
    subnets = cloud.table("subnet")
    out: list[dict[str, str]] = []
    try:
        if requested is None:
            candidates = [subnets.get(s) for s in net["subnets"]]
            present = [s for s in candidates if s is not None]
            v4 = [s for s in present if s["ip_version"] == 4]
            chosen = (v4 or present)[:1]
            for first in chosen:
                out.append({"subnet_id": first["id"], "ip_address": allocate_ip(first)})
            return out
        if not isinstance(requested, list):
            raise _invalid("fixed_ips must be a list.")
        for spec in requested:
            if not isinstance(spec, dict):
                raise _invalid(f"Invalid fixed_ips entry {spec!r}.")
            subnet_id, address = spec.get("subnet_id"), spec.get("ip_address")
            subnet: dict[str, Any] | None = None
            if subnet_id:
                subnet = subnets.get(subnet_id)
                if subnet is None or subnet["network_id"] != net["id"]:
                    raise _invalid(f"Failed to create port on network {net['id']}, because fixed_ips included "
                                   f"invalid subnet {subnet_id}.")
            elif address:
                try:
                    parsed = ipaddress.ip_address(address)
                except ValueError:
                    raise _invalid(f"'{address}' is not a valid IP address.") from None
                for sid in net["subnets"]:
                    s = subnets.get(sid)
                    if s is not None and parsed in s["_net"]:
                        subnet = s
                        break
                if subnet is None:
                    raise _invalid(f"IP address {address} is not a valid IP for any subnet on network {net['id']}.")
            else:
                raise _invalid("fixed_ips entries need a subnet_id or an ip_address.")
            out.append({"subnet_id": subnet["id"], "ip_address": allocate_ip(subnet, address)})
    except NetError:
        for ip in out:
            release_ip(cloud, ip["subnet_id"], ip["ip_address"])
        raise
    return out


def _port_status(port: dict[str, Any]) -> str:
    return "ACTIVE" if port["device_id"] and port["device_owner"] and port["admin_state_up"] else "DOWN"


def _index_device(cloud: Cloud, port: dict[str, Any], old_device: str | None) -> None:
    by_device = net_state(cloud).ports_by_device
    if old_device:
        ids = by_device.get(old_device)
        if ids is not None:
            ids.discard(port["id"])
            if not ids:
                del by_device[old_device]
    if port["device_id"]:
        by_device.setdefault(port["device_id"], set()).add(port["id"])


def create_port(cloud: Cloud, project_id: str, is_admin: bool, body: dict[str, Any], *,
                table_project: str | None = None, check_quota: bool = True) -> dict[str, Any]:
    network_id = body.get("network_id")
    if not network_id:
        raise _bad("Failed to parse request. Required attribute 'network_id' not specified")
    net = _lookup(cloud, NETWORK, network_id, project_id, is_admin)
    if check_quota:
        _check_quota(cloud, PORT, project_id)
    device_owner = body.get("device_owner") or ""
    port_security = _bool(body.get("port_security_enabled", net["port_security_enabled"]), "port_security_enabled")
    if "security_groups" in body and body["security_groups"] is not None:
        sgs = _resolve_security_groups(cloud, project_id, body["security_groups"], is_admin)
    elif port_security and not device_owner.startswith("network:") and table_project != "":
        default = ensure_default_sg(cloud, project_id)
        sgs = [default] if default else []
    else:
        sgs = []
    if sgs and not port_security:
        raise NetError(400, "PortSecurityAndIPRequiredForSecurityGroups",
                       "Port security must be enabled and port must have an IP address in order to use security "
                       "groups.")
    fixed_ips = _allocate_fixed_ips(cloud, net, body.get("fixed_ips"))
    item = _base(cloud, PORT, project_id, body)
    item.update({
        "network_id": network_id,
        "admin_state_up": _bool(body.get("admin_state_up", True), "admin_state_up"),
        "mac_address": body.get("mac_address") or _mac(cloud),
        "fixed_ips": fixed_ips,
        "device_id": body.get("device_id") or "",
        "device_owner": device_owner,
        "security_groups": sgs,
        "allowed_address_pairs": list(body.get("allowed_address_pairs") or []),
        "extra_dhcp_opts": list(body.get("extra_dhcp_opts") or []),
        "port_security_enabled": port_security,
        "binding:vnic_type": body.get("binding:vnic_type") or "normal",
        "binding:host_id": body.get("binding:host_id") or "",
        "binding:profile": body.get("binding:profile") or {},
        "binding:vif_type": "unbound",
        "binding:vif_details": {},
        "dns_name": body.get("dns_name") or "",
        "dns_assignment": [],
        "qos_policy_id": body.get("qos_policy_id"),
        "propagate_uplink_status": False,
        "revision_number": 1,
        "_nova": False,
    })
    item["status"] = _port_status(item)
    if item["status"] == "ACTIVE":
        item["binding:vif_type"] = "ovs"
    if table_project == "":
        item["project_id"] = item["tenant_id"] = item["_project_id"] = ""
    cloud.table("port").add(item, project_id if table_project is None else table_project)
    net["_ports"] += 1
    _index_device(cloud, item, None)
    _record(cloud, PORT, item, item["status"], project_id=project_id)
    return item


def update_port(cloud: Cloud, item: dict[str, Any], body: dict[str, Any], is_admin: bool) -> None:
    project_id = item["_project_id"]
    for attr in ("name", "description", "dns_name", "binding:host_id", "binding:vnic_type"):
        if attr in body:
            item[attr] = body[attr] or ("normal" if attr == "binding:vnic_type" else "")
    for attr in ("allowed_address_pairs", "extra_dhcp_opts"):
        if attr in body:
            item[attr] = list(body[attr] or [])
    if "binding:profile" in body:
        item["binding:profile"] = body["binding:profile"] or {}
    if "qos_policy_id" in body:
        item["qos_policy_id"] = body["qos_policy_id"]
    if body.get("admin_state_up") is not None:
        item["admin_state_up"] = _bool(body["admin_state_up"], "admin_state_up")
    sgs = item["security_groups"]
    if "security_groups" in body:
        sgs = _resolve_security_groups(cloud, project_id, body["security_groups"] or [], is_admin)
    port_security = item["port_security_enabled"]
    if body.get("port_security_enabled") is not None:
        port_security = _bool(body["port_security_enabled"], "port_security_enabled")
    if sgs and not port_security:
        raise NetError(409, "PortSecurityPortHasSecurityGroup", "Port has security group associated. Cannot "
                       "disable port security or ip address until security group is removed")
    item["security_groups"], item["port_security_enabled"] = sgs, port_security
    if "fixed_ips" in body:
        net = cloud.table("network").get(item["network_id"])
        if net is not None:
            keep = {(ip["subnet_id"], ip["ip_address"]) for ip in item["fixed_ips"]}
            requested = body["fixed_ips"] or []
            fresh = [s for s in requested if (s.get("subnet_id"), s.get("ip_address")) not in keep
                     or not s.get("ip_address")]
            stay = [ip for ip in item["fixed_ips"]
                    if any(s.get("ip_address") == ip["ip_address"] for s in requested)]
            new = _allocate_fixed_ips(cloud, net, fresh)
            for ip in item["fixed_ips"]:
                if ip not in stay:
                    release_ip(cloud, ip["subnet_id"], ip["ip_address"])
            item["fixed_ips"] = stay + new
    old_device = item["device_id"]
    if "device_id" in body:
        item["device_id"] = body["device_id"] or ""
    if "device_owner" in body:
        item["device_owner"] = body["device_owner"] or ""
    if item["device_id"] != old_device:
        _index_device(cloud, item, old_device)
    _set_port_status(cloud, item)


def _set_port_status(cloud: Cloud, port: dict[str, Any]) -> None:
    status = _port_status(port)
    if status != port["status"]:
        port["status"] = status
        port["binding:vif_type"] = "ovs" if status == "ACTIVE" else "unbound"
        cloud.ledger.changed(port["id"], status)
        for fip_id in net_state(cloud).fips_by_port.get(port["id"], ()):
            fip = cloud.table("floating_ip").get(fip_id)
            if fip is not None:
                fip["status"] = "ACTIVE" if status == "ACTIVE" else "DOWN"
                fip["port_details"] = _port_details(port)
                cloud.ledger.changed(fip_id, fip["status"])


def _drop_port(cloud: Cloud, port: dict[str, Any]) -> None:
    """Remove a port: its addresses go back to their subnets, its floating IPs are disassociated."""
    for fip_id in list(net_state(cloud).fips_by_port.get(port["id"], ())):
        fip = cloud.table("floating_ip").get(fip_id)
        if fip is not None:
            _disassociate(cloud, fip)
    for ip in port["fixed_ips"]:
        release_ip(cloud, ip["subnet_id"], ip["ip_address"])
    cloud.table("port").remove(port["id"])
    net = cloud.table("network").get(port["network_id"])
    if net is not None:
        net["_ports"] -= 1
    old = port["device_id"]
    port["device_id"] = ""
    _index_device(cloud, port, old)
    cloud.ledger.deleted(port["id"])


def delete_port_checked(cloud: Cloud, port: dict[str, Any]) -> None:
    if port["device_owner"] in ("network:router_interface", "network:router_gateway",
                                "network:router_interface_distributed", "network:floatingip"):
        raise NetError(409, "L3PortInUse", f"Port {port['id']} cannot be deleted directly via the port API: has "
                       f"device owner {port['device_owner']}.")
    _drop_port(cloud, port)


# ====================================================================================================================
# Routers


def _external_subnet(cloud: Cloud, net: dict[str, Any], subnet_id: str | None = None) -> dict[str, Any]:
    subnets = cloud.table("subnet")
    for sid in net["subnets"]:
        s = subnets.get(sid)
        if s is not None and (subnet_id is None or sid == subnet_id) and s["ip_version"] == 4:
            return s
    for sid in net["subnets"]:
        s = subnets.get(sid)
        if s is not None and (subnet_id is None or sid == subnet_id):
            return s
    raise NetError(400, "BadRequest", f"Bad request: network {net['id']} has no subnet to allocate from.")


def _set_gateway(cloud: Cloud, router: dict[str, Any], info: Any, is_admin: bool) -> None:
    """Set, change or clear (an empty or null `info`) a router's external gateway."""
    current = router["external_gateway_info"]
    if not info:
        if current is not None:
            _clear_gateway(cloud, router)
        return
    if not isinstance(info, dict) or not info.get("network_id"):
        raise _invalid("external_gateway_info needs a network_id.")
    net_id = info["network_id"]
    net = cloud.table("network").get(net_id)
    if net is None or not _network_visible(net, router["_project_id"], is_admin):
        raise _not_found(NETWORK, net_id)
    if not net["router:external"]:
        raise NetError(400, "BadRequest", f"Bad router request: Network {net_id} is not an external network.")
    enable_snat = _bool(info.get("enable_snat", True), "enable_snat") if info.get("enable_snat") is not None \
        else True
    if current is not None and current["network_id"] == net_id:
        current["enable_snat"] = enable_snat
        return
    if current is not None:
        _clear_gateway(cloud, router)
    requested = info.get("external_fixed_ips") or None
    if requested:
        fixed = [{"subnet_id": r.get("subnet_id") or _external_subnet(cloud, net)["id"],
                  **({"ip_address": r["ip_address"]} if r.get("ip_address") else {})} for r in requested]
    else:
        fixed = [{"subnet_id": _external_subnet(cloud, net)["id"]}]
    port = create_port(cloud, router["_project_id"], True, {
        "network_id": net_id, "device_owner": "network:router_gateway", "device_id": router["id"],
        "fixed_ips": fixed,
    }, table_project="", check_quota=False)
    router["_gw_port"] = port["id"]
    router["external_gateway_info"] = {
        "network_id": net_id,
        "enable_snat": enable_snat,
        "external_fixed_ips": [dict(ip) for ip in port["fixed_ips"]],
    }


def _clear_gateway(cloud: Cloud, router: dict[str, Any]) -> None:
    net_id = router["external_gateway_info"]["network_id"]
    for fip in cloud.table("floating_ip").of_project(router["_project_id"]):
        if fip["router_id"] == router["id"] and fip["floating_network_id"] == net_id:
            raise NetError(409, "RouterExternalGatewayInUseByFloatingIp",
                           f"Gateway cannot be updated for router {router['id']}, since a gateway to external "
                           f"network {net_id} is required by one or more floating IPs.")
    port = cloud.table("port").get(router.get("_gw_port") or "")
    if port is not None:
        _drop_port(cloud, port)
    router["_gw_port"] = None
    router["external_gateway_info"] = None


def create_router(cloud: Cloud, project_id: str, is_admin: bool, body: dict[str, Any]) -> dict[str, Any]:
    _check_quota(cloud, ROUTER, project_id)
    item = _base(cloud, ROUTER, project_id, body)
    item.update({
        "status": "ACTIVE",
        "admin_state_up": _bool(body.get("admin_state_up", True), "admin_state_up"),
        "external_gateway_info": None,
        "routes": list(body.get("routes") or []),
        "distributed": bool(body.get("distributed") or False),
        "ha": bool(body.get("ha") or False),
        "flavor_id": None,
        "availability_zone_hints": list(body.get("availability_zone_hints") or []),
        "availability_zones": list(cloud.config.availability_zones[:1]),
        "_gw_port": None,
        "_interfaces": {},  # subnet id -> interface port id
    })
    cloud.table("router").add(item, project_id)
    try:
        _set_gateway(cloud, item, body.get("external_gateway_info"), is_admin)
    except NetError:
        cloud.table("router").remove(item["id"])
        raise
    _record(cloud, ROUTER, item)
    return item


def update_router(cloud: Cloud, item: dict[str, Any], body: dict[str, Any], is_admin: bool) -> None:
    for attr in ("name", "description"):
        if attr in body:
            item[attr] = body[attr] or ""
    if body.get("admin_state_up") is not None:
        item["admin_state_up"] = _bool(body["admin_state_up"], "admin_state_up")
    if "routes" in body:
        item["routes"] = list(body["routes"] or [])
    if "external_gateway_info" in body:
        _set_gateway(cloud, item, body["external_gateway_info"], is_admin)


def _interface_info(router: dict[str, Any], port: dict[str, Any], subnet_id: str) -> dict[str, Any]:
    return {
        "id": router["id"],
        "tenant_id": router["project_id"],
        "project_id": router["project_id"],
        "port_id": port["id"],
        "network_id": port["network_id"],
        "subnet_id": subnet_id,
        "subnet_ids": [ip["subnet_id"] for ip in port["fixed_ips"]],
    }


def add_router_interface(cloud: Cloud, router: dict[str, Any], body: dict[str, Any], project_id: str | None,
                         is_admin: bool) -> dict[str, Any]:
    subnet_id, port_id = body.get("subnet_id"), body.get("port_id")
    if bool(subnet_id) == bool(port_id):
        raise _bad("Bad router request: Either subnet_id or port_id must be specified.")
    if subnet_id:
        subnet = _lookup(cloud, SUBNET, subnet_id, project_id, is_admin)
        if not subnet["gateway_ip"]:
            raise _bad("Bad router request: Subnet for router interface must have a gateway IP.")
        if router["id"] in subnet["_routers"]:
            raise _bad(f"Bad router request: Router already has a port on subnet {subnet_id}.")
        port = create_port(cloud, router["_project_id"], True, {
            "network_id": subnet["network_id"], "device_owner": "network:router_interface",
            "device_id": router["id"], "fixed_ips": [{"subnet_id": subnet_id, "ip_address": subnet["gateway_ip"]}],
        })
    else:
        port = _lookup(cloud, PORT, port_id, project_id, is_admin)  # type: ignore[arg-type]
        if port["device_id"]:
            raise NetError(409, "PortInUse", f"Unable to complete operation on port {port_id} for network "
                           f"{port['network_id']}. Port already has an attached device {port['device_id']}.")
        if not port["fixed_ips"]:
            raise _bad("Bad router request: Router port must have at least one fixed IP.")
        for ip in port["fixed_ips"]:
            if router["id"] in cloud.table("subnet").get(ip["subnet_id"])["_routers"]:  # type: ignore[index]
                raise _bad(f"Bad router request: Router already has a port on subnet {ip['subnet_id']}.")
        update_port(cloud, port, {"device_id": router["id"], "device_owner": "network:router_interface"}, True)
        subnet_id = port["fixed_ips"][0]["subnet_id"]
    for ip in port["fixed_ips"]:
        attached = cloud.table("subnet").get(ip["subnet_id"])
        if attached is not None:
            attached["_routers"][router["id"]] = port["id"]
        router["_interfaces"][ip["subnet_id"]] = port["id"]
    _touch(router)
    return _interface_info(router, port, subnet_id)  # type: ignore[arg-type]


def remove_router_interface(cloud: Cloud, router: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    subnet_id, port_id = body.get("subnet_id"), body.get("port_id")
    if not subnet_id and not port_id:
        raise _bad("Bad router request: Either subnet_id or port_id must be specified.")
    if port_id:
        if port_id not in router["_interfaces"].values():
            raise NetError(404, "RouterInterfaceNotFound",
                           f"Router {router['id']} does not have an interface with id {port_id}")
    else:
        port_id = router["_interfaces"].get(subnet_id)
        if port_id is None:
            raise NetError(404, "RouterInterfaceNotFoundForSubnet",
                           f"Router {router['id']} has no interface on subnet {subnet_id}")
    port = cloud.table("port").get(port_id)
    if port is None:
        raise _not_found(PORT, port_id)
    subnet_ids = [ip["subnet_id"] for ip in port["fixed_ips"]]
    for fip in cloud.table("floating_ip").of_project(router["_project_id"]):
        if fip["router_id"] == router["id"] and fip["port_id"]:
            fport = cloud.table("port").get(fip["port_id"])
            if fport is not None and any(ip["subnet_id"] in subnet_ids for ip in fport["fixed_ips"]):
                raise NetError(409, "RouterInterfaceInUseByFloatingIP",
                               f"Router interface for subnet {subnet_ids[0]} on router {router['id']} cannot be "
                               "deleted, as it is required by one or more floating IPs.")
    info = _interface_info(router, port, subnet_id or subnet_ids[0])
    for sid in subnet_ids:
        router["_interfaces"].pop(sid, None)
        subnet = cloud.table("subnet").get(sid)
        if subnet is not None:
            subnet["_routers"].pop(router["id"], None)
    _drop_port(cloud, port)
    _touch(router)
    return info


def delete_router(cloud: Cloud, item: dict[str, Any]) -> None:
    if item["_interfaces"]:
        raise NetError(409, "RouterInUse", f"Router {item['id']} still has ports")
    if item["external_gateway_info"] is not None:
        _clear_gateway(cloud, item)
    cloud.table("router").remove(item["id"])
    cloud.ledger.deleted(item["id"])


# ====================================================================================================================
# Floating IPs


def _port_details(port: dict[str, Any]) -> dict[str, Any]:
    return {k: port[k] for k in ("name", "network_id", "mac_address", "admin_state_up", "status", "device_id",
                                 "device_owner")}


def _disassociate(cloud: Cloud, fip: dict[str, Any]) -> None:
    ids = net_state(cloud).fips_by_port.get(fip["port_id"] or "")
    if ids is not None:
        ids.discard(fip["id"])
        if not ids:
            del net_state(cloud).fips_by_port[fip["port_id"]]
    fip.update(port_id=None, fixed_ip_address=None, router_id=None, port_details=None, status="DOWN")
    _touch(fip)
    cloud.ledger.changed(fip["id"], "DOWN")


def _associate(cloud: Cloud, fip: dict[str, Any], port_id: str, fixed_ip: str | None, is_admin: bool) -> None:
    port = cloud.table("port").get(port_id)
    if port is None or not (is_admin or port["_project_id"] == fip["_project_id"]):
        raise _not_found(PORT, port_id)
    if not port["fixed_ips"]:
        raise _bad(f"Bad floatingip request: Port {port_id} does not have any IP addresses.")
    chosen = None
    for ip in port["fixed_ips"]:
        if fixed_ip is None and ipaddress.ip_address(ip["ip_address"]).version == 4 or ip["ip_address"] == fixed_ip:
            chosen = ip
            break
    if chosen is None:
        raise _bad(f"Bad floatingip request: Port {port_id} does not have fixed ip {fixed_ip}." if fixed_ip else
                   f"Bad floatingip request: Port {port_id} has no IPv4 address.")
    state = net_state(cloud)
    for other_id in state.fips_by_port.get(port_id, ()):
        other = cloud.table("floating_ip").get(other_id)
        if other is not None and other["id"] != fip["id"] and other["fixed_ip_address"] == chosen["ip_address"]:
            raise NetError(409, "FloatingIPPortAlreadyAssociated",
                           f"Cannot associate floating IP {fip['floating_ip_address']} ({fip['id']}) with port "
                           f"{port_id} using fixed IP {chosen['ip_address']}, as that fixed IP already has a "
                           f"floating IP on external network {other['floating_network_id']}.")
    subnet = cloud.table("subnet").get(chosen["subnet_id"])
    router_id = None
    for rid in (subnet or {}).get("_routers", {}):
        router = cloud.table("router").get(rid)
        gw = router["external_gateway_info"] if router else None
        if gw and gw["network_id"] == fip["floating_network_id"]:
            router_id = rid
            break
    if router_id is None:
        raise NetError(404, "ExternalGatewayForFloatingIPNotFound",
                       f"External network {fip['floating_network_id']} is not reachable from subnet "
                       f"{chosen['subnet_id']}.  Therefore, cannot associate Port {port_id} with a Floating IP.")
    if fip["port_id"] and fip["port_id"] != port_id:
        _disassociate(cloud, fip)
    fip.update(port_id=port_id, fixed_ip_address=chosen["ip_address"], router_id=router_id,
               port_details=_port_details(port), status="ACTIVE" if port["status"] == "ACTIVE" or
               not port["device_id"] else "DOWN")
    state.fips_by_port.setdefault(port_id, set()).add(fip["id"])
    cloud.ledger.changed(fip["id"], fip["status"], port_id=port_id)


def create_floating_ip(cloud: Cloud, project_id: str, is_admin: bool, body: dict[str, Any]) -> dict[str, Any]:
    net_id = body.get("floating_network_id")
    if not net_id:
        raise _bad("Failed to parse request. Required attribute 'floating_network_id' not specified")
    net = cloud.table("network").get(net_id)
    if net is None or not _network_visible(net, project_id, is_admin):
        raise _not_found(NETWORK, net_id)
    if not net["router:external"]:
        raise _bad(f"Bad floatingip request: Network {net_id} is not a valid external network.")
    _check_quota(cloud, FLOATINGIP, project_id)
    subnet = _external_subnet(cloud, net, body.get("subnet_id"))
    address = allocate_ip(subnet, body.get("floating_ip_address"))
    item = _base(cloud, FLOATINGIP, project_id, body)
    item.update({
        "floating_ip_address": address,
        "floating_network_id": net_id,
        "router_id": None,
        "port_id": None,
        "fixed_ip_address": None,
        "status": "DOWN",
        "port_details": None,
        "port_forwardings": [],
        "qos_policy_id": body.get("qos_policy_id"),
        "dns_domain": "",
        "dns_name": "",
        "_subnet_id": subnet["id"],
    })
    if body.get("port_id"):
        try:
            _associate(cloud, item, body["port_id"], body.get("fixed_ip_address"), is_admin)
        except NetError:
            release_ip(cloud, subnet["id"], address)
            raise
    cloud.table("floating_ip").add(item, project_id)
    net["_fips"] += 1
    _record(cloud, FLOATINGIP, item, item["status"])
    return item


def update_floating_ip(cloud: Cloud, item: dict[str, Any], body: dict[str, Any], is_admin: bool) -> None:
    if "description" in body:
        item["description"] = body["description"] or ""
    if "port_id" in body:
        if body["port_id"]:
            _associate(cloud, item, body["port_id"], body.get("fixed_ip_address"), is_admin)
        elif item["port_id"]:
            _disassociate(cloud, item)


def delete_floating_ip(cloud: Cloud, item: dict[str, Any]) -> None:
    if item["port_id"]:
        _disassociate(cloud, item)
    release_ip(cloud, item["_subnet_id"], item["floating_ip_address"])
    cloud.table("floating_ip").remove(item["id"])
    net = cloud.table("network").get(item["floating_network_id"])
    if net is not None:
        net["_fips"] -= 1
    cloud.ledger.deleted(item["id"])


# ====================================================================================================================
# Seed


def seed(cloud: Cloud) -> None:
    """The external networks from the configuration: owned by the admin project, router:external, not shared but
    visible to every project, each with a subnet from its cidr."""
    from deploy.devcloud.identity import stable_id

    admin_project = cloud.identity.project_id("admin") or "admin"
    for ext in cloud.config.external_networks:
        net = create_network(cloud, admin_project, True, {"name": ext.name, "router:external": True},
                             item_id=ext.id or str(uuid.UUID(stable_id("network", ext.name))))
        create_subnet(cloud, admin_project, True, {"network_id": net["id"], "cidr": ext.cidr,
                                                   "name": f"{ext.name}-subnet", "enable_dhcp": False})
        log.info("external_network_seeded", network_id=net["id"], name=ext.name, cidr=ext.cidr)
