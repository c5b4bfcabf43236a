"""The one code path that boots nodes: converge every nodegroup of a cluster (a create is an update from zero).

One pass: list the cluster's servers, record servers no event recorded yet (a crash between the create call and
its NodeCreated) and nodes whose server is gone, report servers that went ERROR or ACTIVE, then delete what the
plan removes and create what it lacks. Every node of every group is created in the same pass, masters and
workers alike: the user data already names where the control plane will be (the load balancer's VIP, or the
first master's port made before it boots), and the nodes wait for it themselves. A node's volumes are created
first and the server boots with them attached; a node whose volumes are not ``available`` yet waits a pass.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import structlog

from proto.events import NodeDeleted, NodeReleased
from proto.requests import ClusterCAKey
from services.provisioner import billing, certificates, coeapi, infra, model, nodeplan, store
from services.provisioner.cloud import CloudError, ClusterCloud, Flavor, PortRefs, Seen
from services.provisioner.drivers import driver_for
from services.provisioner.drivers.base import CoeDriver, NodeContext
from services.provisioner.drivers.kubernetes import bootstrap_token
from services.provisioner.state import Infra, TaskState

if TYPE_CHECKING:
    from services.provisioner.loop import Reconciler

log = structlog.get_logger(__name__)

DOCKER_DEVICE, SECOND_DEVICE = "/dev/vdb", "/dev/vdc"
"""Volumes attached before boot appear after the root disk, in the order of the block device mapping."""


@dataclass
class Convergence:
    """What one pass over the nodegroups found."""

    servers: list[model.ServerView] = field(default_factory=list)
    complete: bool = False
    failure: str | None = None
    """Why the operation fails (a server went to ERROR), or None."""
    exposure: infra.Exposure | None = None
    """Where users reach the cluster, once it is complete (``bring_up``)."""


async def bring_up(r: Reconciler, row: store.ClusterRow, st: TaskState) -> Convergence:
    """One pass of a create or an update: the resources around the servers, every nodegroup, then the load
    balancer's members and the floating IPs. ``complete`` (with ``exposure``) once all of it is there."""
    result = await converge(r, row, st, await infra.ensure(r, row, st))
    if result.complete:
        result.exposure = await infra.expose(r, row, st, result.servers)
        result.complete = result.exposure is not None
    return result


def volume_names(node: str, role: str, docker_gb: int | None, etcd_gb: int | None) -> list[tuple[str, int]]:
    """(volume name, GB) attached to ``node`` before it boots: container storage, then the masters' etcd."""
    out: list[tuple[str, int]] = []
    if docker_gb:
        out.append((model.volume_name(node, "docker"), docker_gb))
    if role == model.MASTER and etcd_gb:
        out.append((model.volume_name(node, "etcd"), etcd_gb))
    return out


def boots_on_own_port(driver: CoeDriver, role: str) -> bool:
    """Whether a node of ``role`` boots on a port made before it (``<node>-port``, released with it): its address
    is named in its certificate, or every node names every master's address."""
    return driver.needs_server_certificate(role) or (  # type: ignore[arg-type]
        role == model.MASTER and driver.needs_all_master_addresses())


async def converge(
    r: Reconciler, row: store.ClusterRow, st: TaskState, infra: Infra, only: set[str] | None = None,
) -> Convergence:
    """``only``: auto-healing's pass (``health.py``): re-create only the nodes of those names, delete nothing, and
    record as gone only those (a lost node not being repaired yet stays lost, to be repaired later)."""
    built, trust, spec = row.resolved, row.trust_id, row.spec
    assert trust is not None and spec is not None
    prefix = model.cluster_prefix(spec.name, row.uuid)
    groups: list[nodeplan.GroupSpec] = []
    flavors: dict[str, Flavor] = {}
    for g in row.groups:
        image = None
        if g.present:
            ref = g.image_ref or built.image_id
            image = await r.cloud.call(trust, lambda c, ref=ref: c.image(ref))  # type: ignore[misc]
            fref = g.flavor_id or (built.master_flavor_id if g.is_master else built.flavor_id)
            flavors[g.name] = await r.cloud.call(trust, lambda c, f=fref: c.flavor(f))  # type: ignore[misc]
        groups.append(nodeplan.GroupSpec(
            name=g.name, role=g.role, node_count=g.node_count, present=g.present, is_default=g.is_default,
            nodes_to_remove=g.nodes_to_remove, image=image, flavor_id=g.flavor_id, image_ref=g.image_ref,
            docker_volume_size=g.docker_volume_size, roll=g.roll,
        ))
    servers = await r.cloud.call(trust, lambda c: c.list_servers(prefix, row.uuid))
    listed_at = billing.now()  # a server this listing no longer shows is billed until here
    present = {s.id for s in servers}
    st.delete_requested &= present
    st.retired &= present

    unrecorded = []
    for server in servers:
        if server.id not in row.nodes:
            group = nodeplan.group_of(server)
            flavor = flavors.get(group)
            if flavor is None:  # a server of a group that is gone: counted with the cluster's worker flavor
                flavor = await r.cloud.call(trust, lambda c: c.flavor(built.flavor_id))
            unrecorded.append((server.id, server.name, server.role, flavor, group))
    await r.emit_nodes_created(row, unrecorded)
    gone = [node for sid, node in sorted(row.nodes.items()) if sid not in present and node.status != model.NODE_DELETED
            and (only is None or node.name in only)]
    ends = await billing.server_ends(r, row, [node.server_id for node in gone], listed_at)
    await r.emit_many(row, [(NodeDeleted(
        cluster_id=row.uuid, project_id=row.project_id or "", server_id=node.server_id, node_name=node.name,
        role=node.role, deleted_at=ends[node.server_id],  # type: ignore[arg-type]
    ), f"NodeDeleted:{node.server_id}") for node in gone])
    if built.docker_volume_size or built.etcd_volume_size or built.floating_ip_enabled or any(
            g.docker_volume_size for g in row.groups) or any(
            boots_on_own_port(driver_for(built.coe), role) for role in model.ROLES):
        st.releasing.update(node.name for node in gone)
        if only is None:  # (a repair pass boots the names it repairs again at once)
            st.releasing.update(unreleased(row, servers))
    api_port_node = None if built.master_lb_enabled else model.node_name(prefix, model.MASTER, 0)
    released_now: list[tuple[NodeReleased, str]] = []
    for name in sorted(st.releasing):
        seen = Seen()
        released = await r.cloud.call(trust, lambda c, name=name, seen=seen: c.release_node(  # type: ignore[misc]
            prefix, row.uuid, name, keep_port=name == api_port_node, seen=seen))
        await billing.gone(r, row, st, present=seen.present, deleted=seen.deleted, listed_at=billing.now(),
                           node_name=name)
        if released:
            st.releasing.discard(name)
            ids = sorted(sid for sid, node in row.nodes.items() if node.name == name and sid not in present)
            if ids:
                released_now.append((NodeReleased(cluster_id=row.uuid, project_id=row.project_id or "",
                                                  node_name=name, server_ids=ids), f"NodeReleased:{','.join(ids)}"))
    await r.emit_many(row, released_now)

    pool = await _pool(r, row, st, infra, groups, servers)
    plan = nodeplan.plan_update(prefix, groups, servers, row.nodes, st.delete_requested, row.max_batch_size, pool,
                                reserved=frozenset(st.releasing) if only is None else frozenset())
    if only is not None:
        plan.to_create = [(g, n) for g, n in plan.to_create if n.name in only]
        plan.to_delete = []
    failure = await r.emit_node_states(row, plan.failed, plan.became_active)
    if failure is not None:
        return Convergence(servers=servers, failure=failure)
    if plan.complete and not st.releasing:
        return Convergence(servers=servers, complete=True)
    st.waiting_for = _waiting_for(plan, servers, st)
    for server in plan.retire:  # a rolled master leaves the pool before its server goes (ADR 0010)
        lb = infra.load_balancer
        assert lb is not None and pool is not None
        st.retired.add(server.id)  # from now on no pass puts it back in the pool
        keep = {s.name: s.first_ip() or "" for s in servers if s.role == model.MASTER and s.id in pool
                and s.id not in st.retired}
        if await r.cloud.call(trust, lambda c, lb=lb, keep=keep: c.ensure_lb_members(  # type: ignore[misc]
                lb, keep, built.apiserver_port)):
            plan.to_delete.append(server)
            log.info("master_retired", node=server.name, pool=sorted(keep))
    if built.coe in coeapi.DRAINED_COES:
        await asyncio.gather(*(_drain(r, row, st, infra, server.name) for server in plan.to_delete
                               if server.id not in st.delete_requested))
    await asyncio.gather(*(r.cloud.call(trust, lambda c, sid=server.id: c.delete_server(sid))  # type: ignore[misc]
                           for server in plan.to_delete))
    for server in plan.to_delete:
        st.delete_requested.add(server.id)
        log.info("node_delete_sent", server_id=server.id, node=server.name)
    if plan.to_create:
        await _boot(r, row, infra, plan.to_create, flavors, servers, st)
    return Convergence(servers=servers)


def unreleased(row: store.ClusterRow, servers: list[model.ServerView]) -> set[str]:
    """Names of deleted nodes whose volumes, floating IP and port the store says are not released yet (a copy was
    killed between the node's ``NodeDeleted`` and its ``NodeReleased``), but for a name a listed server carries."""
    listed = {s.name for s in servers}
    return {node.name for node in row.nodes.values()
            if node.releasing and node.status == model.NODE_DELETED and node.name not in listed}


async def _pool(r: Reconciler, row: store.ClusterRow, st: TaskState, infra: Infra, groups: list[nodeplan.GroupSpec],
                servers: list[model.ServerView]) -> frozenset[str] | None:
    """The masters the load balancer's pool holds ACTIVE, asked only while a roll has more masters ACTIVE than the
    cluster's count (a new master joins the pool before an old one leaves); None without a load balancer."""
    if infra.load_balancer is None:
        return None if not row.resolved.master_lb_enabled else frozenset()
    lb = infra.load_balancer
    active = [s for s in servers if s.role == model.MASTER and s.status == "ACTIVE" and s.id not in st.delete_requested]
    wanted = sum(g.node_count for g in groups if g.is_master and g.present)
    if not lb.ready or len(active) <= wanted:
        return frozenset()
    serving = [s for s in active if s.id not in st.retired]
    members = {s.name: s.first_ip() or "" for s in serving}
    trust = row.trust_id or ""
    if await r.cloud.call(trust, lambda c: c.ensure_lb_members(lb, members, row.resolved.apiserver_port)):
        return frozenset(s.id for s in serving)
    return frozenset()


def _waiting_for(plan: nodeplan.UpdatePlan, servers: list[model.ServerView], st: TaskState) -> str:
    """What a pass that did not converge waits for, in words a deadline's reason can name."""
    building = sorted(s.name for s in servers if s.status not in ("ACTIVE", "ERROR", "DELETED")
                      and s.id not in st.delete_requested)
    going = sorted(s.name for s in servers if s.id in st.delete_requested)
    if building:
        return f"servers {', '.join(building)} to become ACTIVE"
    if plan.retire:
        return f"the load balancer's pool to let master {plan.retire[0].name} go"
    if going:
        return f"servers {', '.join(going)} to be deleted"
    if plan.to_create:
        return f"servers {', '.join(n.name for _, n in plan.to_create)} to be created"
    if st.releasing:
        return f"the volumes, ports and floating IPs of {', '.join(sorted(st.releasing))} to be released"
    return "the load balancer's pool to hold every new master"


async def _drain(r: Reconciler, row: store.ClusterRow, st: TaskState, infra: Infra, node_name: str) -> None:
    """Drain a Swarm node and take it out of the swarm before its server is deleted (``coeapi.py``); a COE API
    that cannot be reached or refuses is logged and the delete goes on (a resize must not hang on a broken
    cluster: its tasks are then rescheduled by the swarm when the node goes down)."""
    host = infra.api_floating_ip or infra.api_host
    if host is None or not coeapi.reachable(host, r.settings.coe_networks):
        log.warning("swarm_drain_skipped", cluster_id=row.uuid, node=node_name, api_host=host,
                    reason="the cluster's API is outside COVE_PROVISIONER_COE_NETWORKS")
        return
    try:
        if st.coe_client is None:
            st.coe_client = await certificates.node_tls(r.bus.nc, row, coeapi.CLIENT_NAME, [])
        endpoint = coeapi.Endpoint(host, row.resolved.apiserver_port, row.ca_cert_pem or "", st.coe_client)
        await coeapi.drain_swarm_node(endpoint, node_name, timeout=r.settings.drain_timeout)
    except (coeapi.DrainError, CloudError) as exc:
        log.warning("swarm_drain_failed", cluster_id=row.uuid, node=node_name, error=str(exc))


def _other_cas(cas: ClusterCAKey) -> dict[str, str | None]:
    """The etcd and front-proxy CAs for the first master's user data (kubeadm uses them instead of making its own;
    a cluster created before they existed has none, and kubeadm makes them)."""
    return {"etcd_ca_cert_pem": cas.etcd_cert_pem, "etcd_ca_key_pem": cas.etcd_key_pem,
            "front_proxy_ca_cert_pem": cas.front_proxy_cert_pem, "front_proxy_ca_key_pem": cas.front_proxy_key_pem}


async def _boot(
    r: Reconciler,
    row: store.ClusterRow,
    infra: Infra,
    nodes: list[tuple[nodeplan.GroupSpec, model.DesiredNode]],
    flavors: dict[str, Flavor],
    servers: list[model.ServerView],
    st: TaskState | None = None,
) -> None:
    """Create the missing nodes, each with its volumes attached before it boots; the first error is raised after
    every other node was tried (a cloud quota stops the operation with its own words). The volumes (made or found)
    and the time each server's create call returned are reported to accounting."""
    volumes_seen: list[billing.Billed] = []
    calls: dict[str, tuple[datetime, datetime]] = {}
    """Server id -> when its create call was sent and answered."""
    built, trust, spec = row.resolved, row.trust_id, row.spec
    assert trust is not None and spec is not None and row.ca_cert_pem is not None
    prefix = model.cluster_prefix(spec.name, row.uuid)
    driver = driver_for(built.coe)
    token = bootstrap_token(r.settings.bootstrap_secret, row.uuid)
    api_host = infra.api_host
    if api_host is None:
        raise CloudError("The cluster's API address could not be allocated", permanent=False)
    masters = tuple(s.first_ip() or "" for s in servers if s.role == model.MASTER and s.first_ip())
    if driver.needs_all_master_addresses():  # every master's port first: each node names the whole ensemble
        master_ports = await r.cloud.call(trust, lambda c: [c.ensure_port(
            prefix, row.uuid, model.node_port_name(model.node_name(prefix, model.MASTER, i)),
            network_id=infra.network.network_id, subnet_id=infra.network.subnet_id,
            security_group_ids=[infra.security_groups[model.MASTER]]) for i in range(built.master_count)])
        masters = tuple(p.ip for p in master_ports if p.ip)
    rolling = row.status not in (None, model.CREATE_IN_PROGRESS)  # the control plane is up: this is a roll
    bundle = (row.ca_cert_pem.rstrip() + "\n" + row.ca_previous_pem.rstrip() + "\n") if row.ca_previous_pem else None
    cas = await certificates.ca_key(r.bus.nc, row) if any(
        driver.needs_ca_key(node.role) for _, node in nodes) else None  # type: ignore[arg-type]
    ca_key = cas.key_pem if cas is not None else None

    async def create(group: nodeplan.GroupSpec, node: model.DesiredNode) -> str | CloudError | None:
        volumes = volume_names(node.name, node.role, group.docker_volume_size, built.etcd_volume_size)
        # A roll's master behind a load balancer joins the running control plane, master-0's replacement too; a
        # single master without one is booted again as the first master on the kept API port (docs/adr/0010).
        is_first_master = (node.role == model.MASTER and node.index == 0 and group.name == nodeplan.DEFAULT_MASTER
                           and not (rolling and built.master_lb_enabled))
        rejoin = node.role == model.MASTER and rolling and not is_first_master
        with_certificate = driver.needs_server_certificate(node.role)  # type: ignore[arg-type]
        own_port = boots_on_own_port(driver, node.role)

        def prepare(c: ClusterCloud) -> tuple[list[str], PortRefs | None] | None:
            """The node's volumes and, for a driver that names the node's address in its certificate, its port;
            None while a volume is not ``available`` yet (the node boots on a later pass)."""
            volume_ids: list[str] = []
            for name, size in volumes:
                state = c.ensure_volume(prefix, row.uuid, name, size_gb=size, availability_zone=built.availability_zone)
                volumes_seen.append(billing.of_volume(state, node.name))
                if state.status != "available":
                    return None
                volume_ids.append(state.id)
            port = None
            if is_first_master and infra.api_port_ref is not None:
                port = infra.api_port_ref
            elif own_port:
                port = c.ensure_port(prefix, row.uuid, model.node_port_name(node.name), network_id=infra.network.network_id,
                                     subnet_id=infra.network.subnet_id,
                                     security_group_ids=[infra.security_groups[node.role]])
            return volume_ids, port

        def boot(c: ClusterCloud, volume_ids: list[str], port: PortRefs | None,
                 tls: certificates.NodeTLS | None) -> str:
            user_data = driver.user_data(NodeContext(
                cluster_id=row.uuid, cluster_name=spec.name, node_name=node.name, role=node.role,  # type: ignore[arg-type]
                nodegroup=group.name, is_first_master=is_first_master, api_host=api_host,
                api_sans=(infra.api_floating_ip,) if infra.api_floating_ip else (),
                api_port=built.apiserver_port, ca_cert_pem=row.ca_cert_pem or "", bootstrap_token=token,
                labels=dict(built.labels), network_driver=built.network_driver, master_addresses=masters,
                master_count=built.master_count,
                docker_volume_device=DOCKER_DEVICE if group.docker_volume_size else None,
                etcd_volume_device=(SECOND_DEVICE if group.docker_volume_size else DOCKER_DEVICE)
                if node.role == model.MASTER and built.etcd_volume_size else None,
                http_proxy=built.http_proxy, https_proxy=built.https_proxy, no_proxy=built.no_proxy,
                ca_key_pem=ca_key if driver.needs_ca_key(node.role) else None,  # type: ignore[arg-type]
                node_address=port.ip if port is not None else None,
                **(_other_cas(cas) if (is_first_master or rejoin) and cas is not None else {}),
                rejoin=rejoin, client_ca_bundle_pem=bundle if node.role == model.MASTER else None,
                server_cert_pem=tls.cert_pem if tls else None, server_key_pem=tls.key_pem if tls else None,
            ))
            try:
                user_data = r.settings.addons.render(user_data, built.labels)
            except ValueError as exc:
                raise CloudError(str(exc), permanent=True) from exc
            sent = billing.now()
            server_id = c.create_server(
                name=node.name, flavor_id=flavors[group.name].id, image_id=group.image or built.image_id,
                network_id=infra.network.network_id, port_id=port.id if port is not None else None,
                security_group_ids=[infra.security_groups[node.role]],
                key_name=built.keypair,
                metadata={**model.node_metadata(row.uuid, node, nodegroup=group.name, image=group.image),
                          "cove_roll": str(group.roll)},
                user_data=user_data, volume_ids=volume_ids,
                server_group=infra.server_group if node.role == model.MASTER else None,
                availability_zone=built.availability_zone,
            )
            calls[server_id] = (sent, billing.now())
            return server_id

        try:
            prepared = await r.cloud.call(trust, prepare)
            if prepared is None:
                return None
            volume_ids, port = prepared
            tls = None
            if with_certificate:
                addresses = [a for a in (port.ip if port else None, api_host, infra.api_floating_ip) if a]
                tls = await certificates.node_tls(r.bus.nc, row, node.name, addresses)
            return await r.cloud.call(trust, lambda c: boot(c, volume_ids, port, tls))
        except CloudError as err:
            return err

    results = await asyncio.gather(*(create(g, n) for g, n in nodes))
    first_error: CloudError | None = None
    created = []
    for (group, node), result in zip(nodes, results, strict=True):
        if isinstance(result, CloudError):
            first_error = first_error or result
        elif result is not None:
            created.append((result, node.name, node.role, flavors[group.name], group.name))
    if st is not None:
        await billing.created(r, row, st, volumes_seen)
    await r.emit_nodes_created(row, created, await billing.server_made(r, row, calls))
    if first_error is not None:
        raise first_error

