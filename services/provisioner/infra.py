"""The cluster's cloud resources around its servers: network, per-role security groups with only the ports the COE
driver names (open only to the allow-list where it must face users), the masters' server group, the load balancer
in front of the masters (or the first master's port, made before it boots, when there is none), and, once the
nodes are up, the load balancer's members and the floating IPs. Each step is idempotent (``cloud.py`` finds what
exists by the cluster's tag or name before it creates anything); what a pass found is kept in ``TaskState.infra``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from services.provisioner import billing, model, nodeplan, store
from services.provisioner.cloud import CloudError, ClusterCloud, FloatingIpRef
from services.provisioner.drivers import driver_for
from services.provisioner.drivers.base import PortRule
from services.provisioner.state import Infra, TaskState

if TYPE_CHECKING:
    from services.provisioner.loop import Reconciler

async def ensure(r: Reconciler, row: store.ClusterRow, st: TaskState) -> Infra:
    """Everything the servers need before they boot. The load balancer is asked for again on every pass until it
    is ready (Octavia builds it while the servers build); the rest once per task."""
    built, trust = row.resolved, row.trust_id
    assert trust is not None and row.spec is not None
    prefix = model.cluster_prefix(row.spec.name, row.uuid)
    if st.infra is None:
        network = await r.cloud.call(trust, lambda c: c.ensure_network(
            prefix, row.uuid, fixed_network=built.fixed_network, fixed_subnet=built.fixed_subnet,
            external_network=built.external_network_id,
            cidr=built.fixed_subnet_cidr or r.settings.default_subnet_cidr, dns_nameserver=built.dns_nameserver,
        ))
        driver = driver_for(built.coe)
        rules: dict[str, list[PortRule]] = {
            role: driver.port_rules(role, api_port=built.apiserver_port, network_driver=built.network_driver)
            for role in model.ROLES
        }
        groups = await r.cloud.call(trust, lambda c: c.ensure_security_groups(
            prefix, row.uuid, rules, built.master_lb_allowed_cidrs))
        server_group = None
        if built.master_count > 1:
            server_group = await r.cloud.call(trust, lambda c: c.ensure_server_group(prefix, row.uuid))
        api_port_ref = None
        if not built.master_lb_enabled:
            api_port_ref = await r.cloud.call(trust, lambda c: c.ensure_port(
                prefix, row.uuid, model.node_port_name(model.node_name(prefix, model.MASTER, 0)), network_id=network.network_id,
                subnet_id=network.subnet_id, security_group_ids=[groups[model.MASTER]],
            ))
        st.infra = Infra(network=network, security_groups=groups, server_group=server_group, load_balancer=None,
                         api_port_ref=api_port_ref)
    infra = st.infra
    if built.master_lb_enabled and (infra.load_balancer is None or not infra.load_balancer.ready):
        if infra.network.subnet_id is None:
            raise CloudError("master_lb_enabled needs the cluster's subnet: give the template a fixed_subnet",
                             permanent=True)
        subnet_id = infra.network.subnet_id
        extra = [p for p in driver_for(built.coe).load_balancer_ports(built.apiserver_port)
                 if p != built.apiserver_port]
        subnet_cidr = built.fixed_subnet_cidr or r.settings.default_subnet_cidr
        infra.load_balancer = await r.cloud.call(trust, lambda c: c.ensure_load_balancer(
            prefix, row.uuid, subnet_id=subnet_id, api_port=built.apiserver_port,
            allowed_cidrs=built.master_lb_allowed_cidrs, extra_ports=extra, subnet_cidr=subnet_cidr,
        ))
        await billing.created(r, row, st, [billing.of_load_balancer(infra.load_balancer)])
    if infra.api_floating_ip is None:
        ref = await _api_floating_ip(r, row, infra)
        if ref is not None:
            name = api_floating_ip_name(prefix, infra)
            owner = None if infra.load_balancer is not None else model.node_name(prefix, model.MASTER, 0)
            await billing.created(r, row, st, [billing.of_floating_ip(ref, name, owner)])
            infra.api_floating_ip = ref.address
    return infra


def api_floating_ip_name(prefix: str, infra: Infra) -> str:
    """The floating IP in front of the API: the VIP's (``<prefix>-api``), or the first master's (``expose`` gives
    every node one by this name)."""
    return f"{prefix}-api" if infra.load_balancer is not None else f"{model.node_name(prefix, model.MASTER, 0)}-fip"


async def _api_floating_ip(r: Reconciler, row: store.ClusterRow, infra: Infra) -> FloatingIpRef | None:
    """Allocated before the masters boot, on the port that will carry the API (the VIP's, or the first master's, made
    beforehand), so that the API server's certificate can name it; None when the cluster has none."""
    built, trust, spec = row.resolved, row.trust_id, row.spec
    assert trust is not None and spec is not None
    external = built.external_network_id
    lb = infra.load_balancer
    wanted = built.master_lb_floating_ip_enabled if lb is not None else built.floating_ip_enabled
    if not external or not wanted:
        return None
    port = lb.vip_port_id if lb is not None else (infra.api_port_ref.id if infra.api_port_ref else None)
    if port is None:  # Octavia names the VIP's port in its create answer: this is a pass to try again
        raise CloudError("The API's address has no port yet for its floating IP", permanent=False)
    prefix = model.cluster_prefix(spec.name, row.uuid)
    name = api_floating_ip_name(prefix, infra)
    return await r.cloud.call(trust, lambda c: c.ensure_floating_ip(
        prefix, row.uuid, external_network=external, port_id=port, name=name))


@dataclass(frozen=True)
class Exposure:
    """Where users reach the cluster once it is up (ClusterCreateCompleted's addresses)."""

    api_address: str
    master_addresses: list[str]
    node_addresses: list[str]


async def expose(r: Reconciler, row: store.ClusterRow, st: TaskState, servers: list[model.ServerView]
                 ) -> Exposure | None:
    """The load balancer's members (the masters) and the floating IPs; None while Octavia still works."""
    built, trust, infra = row.resolved, row.trust_id, st.infra
    assert trust is not None and infra is not None and row.spec is not None
    prefix = model.cluster_prefix(row.spec.name, row.uuid)
    masters = sorted((s for s in servers if s.role == model.MASTER), key=lambda s: (nodeplan.index_of(s.name), s.name))
    workers = sorted((s for s in servers if s.role != model.MASTER), key=lambda s: (nodeplan.index_of(s.name), s.name))
    api_host = infra.api_floating_ip or infra.api_host  # allocated before the masters booted (``ensure``)
    external = built.external_network_id
    if infra.load_balancer is not None:
        lb = infra.load_balancer
        members = {s.name: s.first_ip() or "" for s in masters}
        if not lb.ready or not await r.cloud.call(trust, lambda c: c.ensure_lb_members(
                lb, members, built.apiserver_port)):
            return None
    fips = {s.id: s.floating_ip for s in servers if s.floating_ip}  # Nova shows them: nothing to ask again
    if built.floating_ip_enabled and external:
        async def fip(server: model.ServerView) -> tuple[model.ServerView, FloatingIpRef]:
            def work(c: ClusterCloud) -> FloatingIpRef:
                port = c.server_port(server.id)
                if port is None:
                    raise CloudError(f"Server {server.name} has no port for its floating IP", permanent=False)
                return c.ensure_floating_ip(prefix, row.uuid, external_network=external, port_id=port.id,
                                            name=f"{server.name}-fip")
            return server, await r.cloud.call(trust, work)

        made = await asyncio.gather(*(fip(s) for s in [*masters, *workers] if s.id not in fips))
        await billing.created(r, row, st, [billing.of_floating_ip(ref, f"{s.name}-fip", s.name) for s, ref in made])
        fips |= {s.id: ref.address for s, ref in made}

    def shown(s: model.ServerView) -> str:
        return fips.get(s.id) or s.first_ip() or ""

    return Exposure(
        api_address=driver_for(built.coe).api_address(api_host, built.apiserver_port) if api_host else "",
        master_addresses=[shown(s) for s in masters],
        node_addresses=[shown(s) for s in workers],
    )


