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
from typing import TYPE_CHECKING

import structlog

from proto import subjects
from proto.events import NodeDeleted
from proto.requests import ClusterCAKey, GetClusterCAKey
from services.provisioner import infra, model, nodeplan, store
from services.provisioner.cloud import CloudError, ClusterCloud, Flavor
from services.provisioner.drivers import driver_for
from services.provisioner.drivers.base import NodeContext
from services.provisioner.drivers.kubernetes import bootstrap_token
from services.provisioner.state import Infra, TaskState
from services.runtime import rpc

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


async def converge(r: Reconciler, row: store.ClusterRow, st: TaskState, infra: Infra) -> Convergence:
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
            docker_volume_size=g.docker_volume_size,
        ))
    servers = await r.cloud.call(trust, lambda c: c.list_servers(prefix, row.uuid))
    present = {s.id for s in servers}
    st.delete_requested &= present

    unrecorded = []
    for server in servers:
        if server.id not in row.nodes:
            group = nodeplan.group_of(server)
            flavor = flavors.get(group)
            if flavor is None:  # a server of a group that is gone: counted with the cluster's worker flavor
                flavor = await r.cloud.call(trust, lambda c: c.flavor(built.flavor_id))
            unrecorded.append((server.id, server.name, server.role, flavor, group))
    await r.emit_nodes_created(row, unrecorded)
    gone = [node for sid, node in sorted(row.nodes.items()) if sid not in present and node.status != model.NODE_DELETED]
    await r.emit_many(row, [(NodeDeleted(
        cluster_id=row.uuid, project_id=row.project_id or "", server_id=node.server_id, node_name=node.name,
        role=node.role,  # type: ignore[arg-type]
    ), f"NodeDeleted:{node.server_id}") for node in gone])
    if built.docker_volume_size or built.etcd_volume_size or built.floating_ip_enabled or any(
            g.docker_volume_size for g in row.groups):
        st.releasing.update(node.name for node in gone)
    for name in sorted(st.releasing):
        if await r.cloud.call(trust, lambda c, name=name: c.release_node(prefix, row.uuid, name)):  # type: ignore[misc]
            st.releasing.discard(name)

    plan = nodeplan.plan_update(prefix, groups, servers, row.nodes, st.delete_requested, row.max_batch_size)
    failure = await r.emit_node_states(row, plan.failed, plan.became_active)
    if failure is not None:
        return Convergence(servers=servers, failure=failure)
    if plan.complete and not st.releasing:
        return Convergence(servers=servers, complete=True)
    await asyncio.gather(*(r.cloud.call(trust, lambda c, sid=server.id: c.delete_server(sid))  # type: ignore[misc]
                           for server in plan.to_delete))
    for server in plan.to_delete:
        st.delete_requested.add(server.id)
        log.info("node_delete_sent", server_id=server.id, node=server.name)
    if plan.to_create:
        await _boot(r, row, infra, plan.to_create, flavors, servers)
    return Convergence(servers=servers)


async def _ca_key(r: Reconciler, row: store.ClusterRow) -> str:
    """The cluster CA's key, from the certs service, for the masters' user data (docs/adr/0006). Not kept: a
    pass that boots masters asks again."""
    try:
        reply = await rpc.request(r.bus.nc, subjects.CERTS_CA_KEY,
                                  GetClusterCAKey(cluster_id=row.uuid, project_id=row.project_id or ""))
    except rpc.RpcError as exc:
        raise CloudError(f"The cluster's CA is not available: {exc.message}",
                         permanent=exc.code in (400, 404)) from exc
    assert isinstance(reply, ClusterCAKey)
    return reply.key_pem


async def _boot(
    r: Reconciler,
    row: store.ClusterRow,
    infra: Infra,
    nodes: list[tuple[nodeplan.GroupSpec, model.DesiredNode]],
    flavors: dict[str, Flavor],
    servers: list[model.ServerView],
) -> None:
    """Create the missing nodes, each with its volumes attached before it boots; the first error is raised after
    every other node was tried (a cloud quota stops the operation with its own words)."""
    built, trust, spec = row.resolved, row.trust_id, row.spec
    assert trust is not None and spec is not None and row.ca_cert_pem is not None
    prefix = model.cluster_prefix(spec.name, row.uuid)
    driver = driver_for(built.coe)
    token = bootstrap_token(r.settings.bootstrap_secret, row.uuid)
    api_host = infra.api_host
    if api_host is None:
        raise CloudError("The cluster's API address could not be allocated", permanent=False)
    masters = tuple(s.first_ip() or "" for s in servers if s.role == model.MASTER and s.first_ip())
    ca_key = await _ca_key(r, row) if any(node.role == model.MASTER for _, node in nodes) else None

    async def create(group: nodeplan.GroupSpec, node: model.DesiredNode) -> str | CloudError | None:
        volumes = volume_names(node.name, node.role, group.docker_volume_size, built.etcd_volume_size)

        def work(c: ClusterCloud) -> str | None:
            volume_ids: list[str] = []
            for name, size in volumes:
                state = c.ensure_volume(prefix, row.uuid, name, size_gb=size, availability_zone=built.availability_zone)
                if state.status != "available":
                    return None  # boots on a later pass, once its volumes are ready
                volume_ids.append(state.id)
            is_first_master = node.role == model.MASTER and node.index == 0 and group.name == nodeplan.DEFAULT_MASTER
            user_data = driver.user_data(NodeContext(
                cluster_id=row.uuid, cluster_name=spec.name, node_name=node.name, role=node.role,  # type: ignore[arg-type]
                nodegroup=group.name, is_first_master=is_first_master, api_host=api_host,
                api_sans=(infra.api_floating_ip,) if infra.api_floating_ip else (),
                api_port=built.apiserver_port, ca_cert_pem=row.ca_cert_pem or "", bootstrap_token=token,
                labels=dict(built.labels), network_driver=built.network_driver, master_addresses=masters,
                docker_volume_device=DOCKER_DEVICE if group.docker_volume_size else None,
                etcd_volume_device=(SECOND_DEVICE if group.docker_volume_size else DOCKER_DEVICE)
                if node.role == model.MASTER and built.etcd_volume_size else None,
                http_proxy=built.http_proxy, https_proxy=built.https_proxy, no_proxy=built.no_proxy,
                ca_key_pem=ca_key if node.role == model.MASTER else None,
            ))
            port_id = None
            if is_first_master and infra.api_port_ref is not None:
                port_id = infra.api_port_ref.id
            return c.create_server(
                name=node.name, flavor_id=flavors[group.name].id, image_id=group.image or built.image_id,
                network_id=infra.network.network_id, port_id=port_id,
                security_group_ids=[infra.security_groups[node.role]],
                key_name=built.keypair,
                metadata=model.node_metadata(row.uuid, node, nodegroup=group.name, image=group.image),
                user_data=user_data, volume_ids=volume_ids,
                server_group=infra.server_group if node.role == model.MASTER else None,
                availability_zone=built.availability_zone,
            )

        try:
            return await r.cloud.call(trust, work)
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
    await r.emit_nodes_created(row, created)
    if first_error is not None:
        raise first_error

