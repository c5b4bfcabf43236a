"""Network's model: Neutron's resource kinds, `NetError`, the per-cloud `NetState` and the small rules every
resource shares (base fields, visibility, ownership, quota checks, ledger records)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from deploy.devcloud.clock import now_iso
from deploy.devcloud.state import Cloud
from deploy.devcloud.web import new_id

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class NetError(Exception):
    """A Neutron fault: the HTTP layer renders it as {"NeutronError": {type, message}}."""

    def __init__(self, status: int, type_: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message


@dataclass(frozen=True)
class Kind:
    coll: str  # URL collection, e.g. security-groups
    res: str  # body key, e.g. security_group
    table: str  # state table and ledger kind
    quota: str  # quota key
    not_found: str  # NeutronError type
    label: str  # for messages


NETWORK = Kind("networks", "network", "network", "network", "NetworkNotFound", "Network")
SUBNET = Kind("subnets", "subnet", "subnet", "subnet", "SubnetNotFound", "Subnet")
ROUTER = Kind("routers", "router", "router", "router", "RouterNotFound", "Router")
PORT = Kind("ports", "port", "port", "port", "PortNotFound", "Port")
SECGROUP = Kind("security-groups", "security_group", "security_group", "security_group", "SecurityGroupNotFound",
                "Security group")
SGRULE = Kind("security-group-rules", "security_group_rule", "security_group_rule", "security_group_rule",
              "SecurityGroupRuleNotFound", "Security group rule")
FLOATINGIP = Kind("floatingips", "floatingip", "floating_ip", "floatingip", "FloatingIPNotFound", "Floating IP")
KINDS = (NETWORK, SUBNET, ROUTER, PORT, SECGROUP, SGRULE, FLOATINGIP)

QUOTA_KEYS = ("network", "subnet", "port", "router", "floatingip", "security_group", "security_group_rule")

EXTENSIONS: list[tuple[str, str, str]] = [
    ("router", "Neutron L3 Router", "Router abstraction for basic L3 forwarding between L2 Neutron networks"),
    ("ext-gw-mode", "Neutron L3 Configurable external gateway mode", "Extension of the router abstraction"),
    ("extraroute", "Neutron Extra Route", "Extra routes configuration for L3 router"),
    ("external-net", "Neutron external network", "Adds external network attribute to network resource."),
    ("security-group", "security-group", "The security groups extension."),
    ("stateful-security-group", "Stateful security group", "Indicates if the security group is stateful or not"),
    ("quotas", "Quota management support", "Expose functions for quotas management per project"),
    ("quota_details", "Quota details management support", "Expose functions for quotas usage statistics"),
    ("standard-attr-tag", "Tag support for resources with standard attribute", "Enables to set tag on resources"),
    ("standard-attr-description", "standard-attr-description", "Extension to add descriptions to resources."),
    ("standard-attr-timestamp", "Resource timestamps", "Adds created_at and updated_at fields."),
    ("standard-attr-revisions", "Resource revision numbers", "Adds revision_number to resources."),
    ("tag-ports-during-bulk-creation", "Tag Ports During Bulk Creation", "Allow to tag ports during bulk creation"),
    ("port-security", "Port Security", "Provides port security"),
    ("extra_dhcp_opt", "Neutron Extra DHCP options", "Extra options configuration for DHCP."),
    ("allowed-address-pairs", "Allowed Address Pairs", "Provides allowed address pairs"),
    ("binding", "Port Binding", "Expose port bindings of a virtual port to external application"),
    ("net-mtu", "Network MTU", "Provides MTU attribute for a network resource."),
    ("availability_zone", "Availability Zone", "The availability zone extension."),
    ("network_availability_zone", "Network Availability Zone", "Availability zone support for network."),
    ("router_availability_zone", "Router Availability Zone", "Availability zone support for router."),
    ("project-id", "project_id field enabled", "Extension that indicates that project_id field is enabled."),
    ("pagination", "Pagination support", "Extension that indicates that pagination is enabled."),
    ("sorting", "Sorting support", "Extension that indicates that sorting is enabled."),
    ("fip-port-details", "Floating IP Port Details Extension", "Add port_details attribute to Floating IP resource"),
]

# The attributes a PUT may change, per resource; anything else in the body is read-only (400).
UPDATABLE: dict[str, set[str]] = {
    "network": {"name", "description", "admin_state_up", "shared", "router:external", "mtu",
                "port_security_enabled", "dns_domain", "qos_policy_id", "is_default"},
    "subnet": {"name", "description", "gateway_ip", "dns_nameservers", "host_routes", "enable_dhcp",
               "allocation_pools", "service_types", "dns_publish_fixed_ip"},
    "router": {"name", "description", "admin_state_up", "external_gateway_info", "routes", "distributed", "ha"},
    "port": {"name", "description", "admin_state_up", "security_groups", "device_id", "device_owner",
             "allowed_address_pairs", "port_security_enabled", "fixed_ips", "binding:host_id", "binding:profile",
             "binding:vnic_type", "extra_dhcp_opts", "qos_policy_id", "dns_name", "propagate_uplink_status"},
    "security_group": {"name", "description", "stateful"},
    "security_group_rule": {"description"},
    "floating_ip": {"port_id", "fixed_ip_address", "description", "qos_policy_id"},
}
IGNORED_ON_UPDATE = {"id", "project_id", "tenant_id", "created_at", "updated_at", "revision_number", "tags"}


@dataclass
class NetState:
    """Indexes that keep every hot path O(1) or O(project's items)."""

    default_sg: dict[str, str] = field(default_factory=dict)  # project id -> its `default` group
    ports_by_device: dict[str, set[str]] = field(default_factory=dict)  # device id -> port ids
    fips_by_port: dict[str, set[str]] = field(default_factory=dict)  # port id -> floating ip ids
    public_networks: set[str] = field(default_factory=set)  # shared or external: visible to every project
    loopback_taken: dict[str, set[int]] = field(default_factory=dict)
    """Per loopback CIDR, the addresses allocated in any subnet of it. Neutron lets private networks reuse fixed
    IPs; the devcloud's COE stand-ins listen at them on one machine's loopback, where two clusters' masters at the
    same address would answer for each other, so an automatic allocation in a loopback subnet avoids them."""


def net_state(cloud: Cloud) -> NetState:
    state: NetState | None = getattr(cloud, "_network_state", None)
    if state is None:
        state = NetState()
        cloud._network_state = state  # type: ignore[attr-defined]
    return state


# ====================================================================================================================
# Small helpers


def _base(cloud: Cloud, kind: Kind, project_id: str, body: dict[str, Any]) -> dict[str, Any]:
    at = now_iso()
    return {
        "id": new_id(),
        "name": body.get("name") or "",
        "description": body.get("description") or "",
        "project_id": project_id,
        "tenant_id": project_id,
        "tags": list(body.get("tags") or []),
        "created_at": at,
        "updated_at": at,
        "revision_number": 0,
        "_project_id": project_id,
    }


def _touch(item: dict[str, Any]) -> None:
    item["updated_at"] = now_iso()
    item["revision_number"] = item.get("revision_number", 0) + 1


def _not_found(kind: Kind, item_id: str) -> NetError:
    return NetError(404, kind.not_found, f"{kind.label} {item_id} could not be found.")


def _bad(message: str) -> NetError:
    return NetError(400, "BadRequest", message)


def _invalid(message: str) -> NetError:
    return NetError(400, "InvalidInput", f"Invalid input for operation: {message}")


def render(item: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in item.items() if not k.startswith("_")}
    rules = out.get("security_group_rules")
    if isinstance(rules, list):
        out["security_group_rules"] = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rules]
    return out


def _owned(item: dict[str, Any], project_id: str | None, is_admin: bool) -> bool:
    return is_admin or item["_project_id"] == project_id


def _network_visible(net: dict[str, Any], project_id: str | None, is_admin: bool) -> bool:
    return is_admin or net["_project_id"] == project_id or net["shared"] or net["router:external"]


def _lookup(cloud: Cloud, kind: Kind, item_id: str, project_id: str | None, is_admin: bool) -> dict[str, Any]:
    """An item the caller may see, or NotFound (another project's item looks absent)."""
    item = cloud.table(kind.table).get(item_id)
    if item is None:
        raise _not_found(kind, item_id)
    if kind is NETWORK:
        if not _network_visible(item, project_id, is_admin):
            raise _not_found(kind, item_id)
    elif kind is SUBNET:
        net = cloud.table("network").get(item["network_id"])
        if not (_owned(item, project_id, is_admin) or (net is not None and net["shared"])):
            raise _not_found(kind, item_id)
    elif not _owned(item, project_id, is_admin):
        raise _not_found(kind, item_id)
    return item


def _check_owner(kind: Kind, item: dict[str, Any], project_id: str | None, is_admin: bool, action: str) -> None:
    """Visible but not owned (a shared or external network): the policy refuses the write."""
    if not _owned(item, project_id, is_admin):
        raise NetError(403, "PolicyNotAuthorized", f"rule:{action}_{kind.res} is disallowed by policy")


def _check_quota(cloud: Cloud, kind: Kind, project_id: str, adding: int = 1) -> None:
    limit = cloud.quota(project_id, "network").get(kind.quota, -1)
    if limit < 0:
        return
    if cloud.table(kind.table).count(project_id) + adding > limit:
        raise NetError(409, "OverQuota", f"Quota exceeded for resources: ['{kind.quota}'].")


def _bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise _invalid(f"'{value}' is not a valid boolean value for {name}.")


def _record(cloud: Cloud, kind: Kind, item: dict[str, Any], status: str = "ACTIVE", project_id: str | None = None
            ) -> None:
    cloud.ledger.created(kind.table, item["id"], project_id if project_id is not None else item["project_id"],
                         name=item.get("name", ""), status=status)
