"""Which endpoints the cloud's state calls for, shared by every COE: a cluster is the servers with the same
``cove_cluster_id`` metadata; it is served once its first master has been ACTIVE and its COE's stand-in has what it
needs from that master's user data; each ACTIVE node serves its COE's ports at its fixed and floating IPs, and a load
balancer's VIP (and the VIP's floating IPs) serve a listener's port while it forwards to an ACTIVE master."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from deploy.devcloud.coe.userdata import NodeFiles, read_user_data
from deploy.devcloud.state import Cloud

LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
ENDPOINT_KINDS = frozenset({"server", "port", "floating_ip", "load_balancer", "listener", "pool", "member"})
"""Ledger kinds whose changes can move an endpoint."""
ROUTING = ("ACTIVE", "PENDING_UPDATE")  # an Octavia object whose data plane forwards traffic

Key = tuple[str, int]
"""(ip, port) a stand-in listens at."""


@dataclass(frozen=True)
class Node:
    server_id: str
    name: str
    role: str
    addresses: tuple[str, ...]
    created: str
    files: NodeFiles | None = None


@dataclass(frozen=True)
class Binding:
    rank: int
    """0: the API host or a floating IP in front of it; 1: another address (loses a shared fixed IP)."""
    node_port: int
    """The port the node serves this at (a load balancer's listener forwards to it)."""
    server_id: str | None
    """The node served at this address; None at a load balancer's VIP (the cluster's first master stands for it)."""


@dataclass
class Plan:
    """One cluster's endpoint as the cloud's state calls for it."""

    cluster_id: str
    first: NodeFiles
    """The first master's files (the CA, the API host and port, the COE's own facts)."""
    created: str
    first_server_id: str = ""
    project_id: str = ""
    nodes: list[Node] = field(default_factory=list)
    """The cluster's ACTIVE servers of the same COE and CA, in creation order."""
    down: list[Node] = field(default_factory=list)
    """The cluster's servers of the same COE that were built but do not run now (ERROR, SHUTOFF...): a COE still
    lists them, not ready (Kubernetes until the node object is deleted, Swarm as ``down``, Mesos deactivated)."""
    bindings: dict[Key, Binding] = field(default_factory=dict)
    master_ips: set[str] = field(default_factory=set)

    @property
    def coe(self) -> str:
        return self.first.coe

    @property
    def ca_cert_pem(self) -> str:
        return self.first.ca_cert_pem

    @property
    def api_host(self) -> str:
        return self.first.api_host

    @property
    def trusted_cas(self) -> tuple[str, ...]:
        """The CAs whose client certificates the cluster accepts: its CA, and during a CA rotation's roll the
        bundle of new and old the serving master's user data names."""
        return self.first.client_ca_pems or (self.first.ca_cert_pem,)


@dataclass(frozen=True)
class Rules:
    """What plan() needs to know of a COE's stand-in."""

    ready: Callable[[NodeFiles], bool]
    """Whether the first master's files suffice to serve (Kubernetes: its CA key; Swarm: its engine certificate)."""
    ports: Callable[[NodeFiles], tuple[int, ...]]
    """The ports a node serves at its own addresses (Kubernetes masters: the API port; every Swarm node: the
    engine's; Mesos masters: Marathon's and the Mesos master's)."""


def _server_ports(cloud: Cloud, server_id: str) -> list[dict[str, Any]]:
    from deploy.devcloud.network import net_state

    table = cloud.table("port")
    ports = [table.get(pid) for pid in net_state(cloud).ports_by_device.get(server_id, ())]
    return [p for p in ports if p is not None]


def floating_ips(cloud: Cloud, port_id: str) -> list[str]:
    from deploy.devcloud.network import net_state

    table = cloud.table("floating_ip")
    fips = [table.get(fid) for fid in net_state(cloud).fips_by_port.get(port_id, ())]
    return [f["floating_ip_address"] for f in fips if f is not None and f.get("fixed_ip_address")]


def plan(cloud: Cloud, known: dict[str, tuple[str, NodeFiles]], rules: dict[str, Rules]) -> dict[str, Plan]:
    """The endpoints the cloud's state calls for, by cluster id. `known` remembers each cluster's first master (server
    id, files) once it was ACTIVE (the other masters took the control plane's secrets from it); it is updated here,
    and forgets clusters that have no server left. `rules`: each COE's, by ``COVE_COE``."""
    by_cluster: dict[str, list[dict[str, Any]]] = {}
    for s in cloud.table("server").items.values():
        cid = (s.get("metadata") or {}).get("cove_cluster_id")
        if cid:
            by_cluster.setdefault(cid, []).append(s)
    for cid in [c for c in known if c not in by_cluster]:
        del known[cid]
    plans: dict[str, Plan] = {}
    member_index: dict[tuple[str, str], str] = {}  # (subnet id, fixed ip) of an ACTIVE master -> cluster id
    for cid, servers in by_cluster.items():
        servers.sort(key=lambda s: (str(s.get("created") or ""), s["id"]))
        parsed = [(s, read_user_data(s.get("_user_data"))) for s in servers]
        active = {s["id"] for s in servers if s["status"] == "ACTIVE"}
        for s, files in parsed:
            # the first master, or (Kubernetes) a master a roll booted with the CA files: it takes over when the
            # one known is gone or it brings another CA or client CA bundle (a CA rotation's roll)
            if (files is not None and (files.first_master or (files.role == "master" and files.ca_key_pem))
                    and s["status"] == "ACTIVE" and files.coe in rules and rules[files.coe].ready(files)):
                held = known.get(cid)
                if (held is None or held[0] not in active or files.first_master
                        or (files.ca_cert_pem, files.client_ca_pems) != (held[1].ca_cert_pem, held[1].client_ca_pems)):
                    if held is not None and not files.first_master:
                        # a joining master takes the cluster's ClusterConfiguration (certSANs) and RBAC from the
                        # control plane it joins, as kubeadm join does from the kubeadm-config ConfigMap
                        files = dataclasses.replace(files, cert_sans=files.cert_sans or held[1].cert_sans,
                                                    group_roles=files.group_roles or held[1].group_roles,
                                                    user_roles=files.user_roles or held[1].user_roles)
                    known[cid] = (s["id"], files)
        if cid not in known:
            continue
        first_id, first = known[cid]
        record = cloud.ledger.records.get(first_id)
        p = Plan(cid, first, str(servers[0].get("created") or ""), first_id,
                 str(record["project_id"]) if record else "")
        for s, files in parsed:
            if files is not None and files.coe == first.coe and s["status"] not in ("ACTIVE", "BUILD"):
                fixed_ips = [ip["ip_address"] for port in _server_ports(cloud, s["id"]) for ip in port.get("fixed_ips") or []]
                p.down.append(Node(s["id"], files.node_name, files.role, tuple(fixed_ips), str(s.get("created") or ""),
                                   files))
            if files is None or s["status"] != "ACTIVE" or files.coe != first.coe:
                continue
            ports = _server_ports(cloud, s["id"])
            fixed = [ip for port in ports for ip in port.get("fixed_ips") or []]
            p.nodes.append(Node(s["id"], files.node_name, files.role, tuple(ip["ip_address"] for ip in fixed),
                                str(s.get("created") or ""), files))
            if files.ca_cert_pem.strip() not in {ca.strip() for ca in (first.ca_cert_pem, *first.client_ca_pems)}:
                continue  # not a node of a CA the cluster's clients trust: it serves nothing
            for node_port in rules[first.coe].ports(files):
                for port in ports:
                    for ip in port.get("fixed_ips") or []:
                        rank = 0 if ip["ip_address"] == first.api_host else 1
                        p.bindings[(ip["ip_address"], node_port)] = Binding(rank, node_port, s["id"])
                    for fip in floating_ips(cloud, port["id"]):
                        p.bindings[(fip, node_port)] = Binding(0, node_port, s["id"])
            if files.role == "master":
                for ip in fixed:
                    p.master_ips.add(ip["ip_address"])
                    member_index[(ip.get("subnet_id") or "", ip["ip_address"])] = cid
        if p.bindings:
            plans[cid] = p
    _load_balancers(cloud, plans, member_index, rules)
    return plans


def _load_balancers(cloud: Cloud, plans: dict[str, Plan], member_index: dict[tuple[str, str], str],
                    rules: dict[str, Rules]) -> None:
    """A load balancer's VIP (and its floating IPs) serve a cluster while one of its listeners forwards, through
    its default pool, to an ACTIVE master of the cluster on a port the master serves."""
    listeners: dict[str, list[dict[str, Any]]] = {}
    for listener in cloud.table("listener").items.values():
        listeners.setdefault(listener["_lb_id"], []).append(listener)
    for lb in cloud.table("load_balancer").items.values():
        if lb["provisioning_status"] not in ROUTING or not lb.get("admin_state_up", True) or not lb.get("vip_address"):
            continue
        for listener in listeners.get(lb["id"], []):
            if listener["provisioning_status"] not in ROUTING or not listener.get("admin_state_up", True):
                continue
            pool = cloud.table("pool").get(listener.get("default_pool_id") or "")
            if pool is None or pool["provisioning_status"] not in ROUTING:
                continue
            for ref in pool["members"]:
                m = cloud.table("member").get(ref["id"])
                if m is None or m["provisioning_status"] not in ROUTING or not m.get("admin_state_up", True):
                    continue
                cid = member_index.get((m.get("subnet_id") or lb.get("vip_subnet_id") or "", m["address"]))
                if cid is None or cid not in plans:
                    continue
                p = plans[cid]
                if m["protocol_port"] not in rules[p.coe].ports(p.first):
                    continue
                port = listener["protocol_port"]
                rank = 0 if lb["vip_address"] == p.api_host else 1
                p.bindings[(lb["vip_address"], port)] = Binding(rank, m["protocol_port"], None)
                for fip in floating_ips(cloud, lb.get("vip_port_id") or ""):
                    p.bindings[(fip, port)] = Binding(0, m["protocol_port"], None)
                break


def assign(plans: dict[str, Plan], held: dict[Key, str]) -> dict[Key, str]:
    """Which cluster listens at each (ip, port). Clusters' private networks may reuse the same fixed IPs, which
    one machine's loopback cannot tell apart: the cluster whose API host the address is wins, then the one that
    already listens there, then the older cluster."""
    best: dict[Key, tuple[int, int, str, str]] = {}
    for cid, p in plans.items():
        for key, binding in p.bindings.items():
            candidate = (binding.rank, 0 if held.get(key) == cid else 1, p.created, cid)
            if key not in best or candidate < best[key]:
                best[key] = candidate
    return {key: c[3] for key, c in best.items()}


def is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip) in LOOPBACK
    except ValueError:
        return False
