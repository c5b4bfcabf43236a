"""The resolved cluster: every value the cluster will be built with, decided once, by the API, when it is asked for.

Magnum's rule "the request's value, else the template's, else a default" used to be written in five places with
different results (``cluster show``, ``nodegroup show`` and the booted servers disagreed on the master flavor; the
provisioner re-merged template labels when the request said ``merge_labels=false``). ``resolve_cluster`` is now
the one place: the API calls it and carries the result in ``ClusterCreateRequested.spec``; the API's read model,
its nodegroups, the scheduler and the provisioner read those fields and never re-derive them.

Events written before the field existed carry no spec: ``spec_of`` resolves them with the same function, so a
replay of an old stream gives what the API would have decided.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

import msgspec

from proto import labels as label_rules
from proto.nodegroups import DEFAULT_MASTER, DEFAULT_WORKER

if TYPE_CHECKING:
    from proto.events import ClusterCreateRequested, ClusterTemplate

DEFAULT_FLAVOR = "m1.small"
"""Magnum's Heat templates default both the master and the worker flavor to m1.small."""
DEFAULT_API_PORT = 6443
"""Kubernetes' API port; also what ``ClusterSpec.apiserver_port`` decodes to for an event written without one."""
DEFAULT_API_PORTS: dict[str, int] = {"kubernetes": 6443, "swarm-mode": 2376, "swarm": 2376, "mesos": 8080}
"""Where each COE's API listens when the template names no ``apiserver_port``: the Kubernetes API server, the
Docker engine's TLS port, Marathon. Each driver's ``default_api_port`` equals its COE's entry (tested)."""
DEFAULT_CREATE_TIMEOUT = 60


class NodeGroupSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One nodegroup as it will be built: every value resolved."""

    name: str
    role: str  # "master" | "worker"
    node_count: int
    flavor_id: str
    image_id: str
    docker_volume_size: int | None = None
    """GB of the container-storage volume attached to each node before it boots; None: no volume."""
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    vcpus: int | None = None
    """vCPUs of ``flavor_id`` as Nova reported them when the API resolved the spec (the scheduler's quota demand);
    None in specs resolved before sizes were carried, or when the flavor could not be looked up."""
    ram_mb: int | None = None
    """RAM (MB) of ``flavor_id``, as ``vcpus``."""


FlavorSizes = dict[str, tuple[int, int]]
"""Flavor id or name -> (vCPUs, RAM MB), as the API found them in Nova."""


class ClusterSpec(msgspec.Struct, frozen=True, kw_only=True):
    """The cluster as it will be built (Magnum's cluster fields with the template's values and defaults applied)."""

    coe: str
    image_id: str
    master_count: int
    node_count: int
    master_flavor_id: str
    flavor_id: str
    keypair: str | None = None
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    """After ``merge_labels``: the request's labels merged over the template's, or instead of them."""
    network_driver: str | None = None
    volume_driver: str | None = None
    docker_storage_driver: str | None = None
    docker_volume_size: int | None = None
    etcd_volume_size: int | None = None
    """GB of each master's etcd volume (label ``etcd_volume_size``); None: etcd on the root disk."""
    external_network_id: str | None = None
    fixed_network: str | None = None
    fixed_subnet: str | None = None
    fixed_subnet_cidr: str | None = None
    """The private subnet's CIDR (label ``fixed_subnet_cidr``); None: the provisioner's configured default."""
    dns_nameserver: str | None = None
    master_lb_enabled: bool = False
    floating_ip_enabled: bool = True
    master_lb_floating_ip_enabled: bool = False
    """A floating IP on the load balancer's VIP (label ``master_lb_floating_ip_enabled``, default
    ``floating_ip_enabled``, as Magnum)."""
    master_lb_allowed_cidrs: list[str] = msgspec.field(default_factory=list)
    """Who may reach the API (and SSH): label ``master_lb_allowed_cidrs``; empty: anyone (0.0.0.0/0)."""
    availability_zone: str | None = None
    apiserver_port: int = DEFAULT_API_PORT
    tls_disabled: bool = False
    server_type: str = "vm"
    cluster_distro: str | None = None
    http_proxy: str | None = None
    https_proxy: str | None = None
    no_proxy: str | None = None
    registry_enabled: bool = False
    insecure_registry: str | None = None
    create_timeout: int = DEFAULT_CREATE_TIMEOUT
    discovery_url: str | None = None
    nodegroups: list[NodeGroupSpec] = msgspec.field(default_factory=list)
    """``default-master`` then ``default-worker``."""

    def nodegroup(self, name: str) -> NodeGroupSpec | None:
        return next((g for g in self.nodegroups if g.name == name), None)


class SpecError(ValueError):
    """A value the cluster cannot be built with; ``str()`` is the user-facing reason (the API answers 400)."""


def merged_labels(template_labels: dict[str, str], labels: dict[str, str] | None, merge: bool) -> dict[str, str]:
    """Magnum: a cluster without labels inherits the template's; else its labels replace them, or with
    ``merge_labels`` are merged over them."""
    if not labels:
        return dict(template_labels)
    return {**template_labels, **labels} if merge else dict(labels)


def _bool_label(labels: dict[str, str], key: str, default: bool) -> bool:
    raw = labels.get(key)
    if raw is None or raw == "":
        return default
    value = label_rules.bool_value(raw)
    if value is None:
        raise SpecError(f"Invalid value '{raw}' for label {key}: true or false is expected.")
    return value


def _size_label(labels: dict[str, str], key: str) -> int | None:
    raw = labels.get(key)
    if raw is None:
        return None
    try:
        return label_rules.size_value(raw)
    except ValueError:
        raise SpecError(
            f"Invalid value '{raw}' for label {key}: a size between 1 and {label_rules.MAX_VOLUME_GB} GB is expected."
        ) from None


def _cidrs_label(labels: dict[str, str], key: str) -> list[str]:
    raw = labels.get(key) or ""
    out: list[str] = []
    for item in (part.strip() for part in raw.replace(";", ",").split(",")):
        if not item:
            continue
        try:
            out.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise SpecError(f"Invalid CIDR '{item}' in label {key}.") from None
    return out


def _cidr_label(labels: dict[str, str], key: str) -> str | None:
    cidrs = _cidrs_label(labels, key)
    if len(cidrs) > 1:
        raise SpecError(f"Label {key} takes one CIDR, not {len(cidrs)}.")
    return cidrs[0] if cidrs else None


def resolve_cluster(
    template: ClusterTemplate,
    *,
    master_count: int = 1,
    node_count: int = 1,
    flavor_id: str | None = None,
    master_flavor_id: str | None = None,
    labels: dict[str, str] | None = None,
    merge_labels: bool = False,
    keypair: str | None = None,
    docker_volume_size: int | None = None,
    fixed_network: str | None = None,
    fixed_subnet: str | None = None,
    floating_ip_enabled: bool | None = None,
    master_lb_enabled: bool | None = None,
    create_timeout: int | None = None,
    discovery_url: str | None = None,
    flavor_sizes: FlavorSizes | None = None,
) -> ClusterSpec:
    """The one rule: the request's value, else the template's, else Magnum's default. Raises ``SpecError``.
    ``flavor_sizes`` (the flavors' vCPUs and RAM) are carried in the nodegroups for the scheduler's quotas."""
    resolved_labels = merged_labels(template.labels, labels, merge_labels)
    master_flavor = master_flavor_id or template.master_flavor_id or DEFAULT_FLAVOR
    worker_flavor = flavor_id or template.flavor_id or DEFAULT_FLAVOR
    volume = docker_volume_size if docker_volume_size is not None else template.docker_volume_size
    fip = floating_ip_enabled if floating_ip_enabled is not None else template.floating_ip_enabled
    lb = master_lb_enabled if master_lb_enabled is not None else template.master_lb_enabled
    sizes = flavor_sizes or {}
    master_size, worker_size = sizes.get(master_flavor), sizes.get(worker_flavor)
    groups = [
        NodeGroupSpec(name=DEFAULT_MASTER, role="master", node_count=master_count, flavor_id=master_flavor,
                      image_id=template.image_id, docker_volume_size=volume or None, labels=resolved_labels,
                      vcpus=master_size[0] if master_size else None, ram_mb=master_size[1] if master_size else None),
        NodeGroupSpec(name=DEFAULT_WORKER, role="worker", node_count=node_count, flavor_id=worker_flavor,
                      image_id=template.image_id, docker_volume_size=volume or None, labels=resolved_labels,
                      vcpus=worker_size[0] if worker_size else None, ram_mb=worker_size[1] if worker_size else None),
    ]
    return ClusterSpec(
        coe=template.coe,
        image_id=template.image_id,
        master_count=master_count,
        node_count=node_count,
        master_flavor_id=master_flavor,
        flavor_id=worker_flavor,
        keypair=keypair if keypair is not None else template.keypair_id,
        labels=resolved_labels,
        network_driver=template.network_driver,
        volume_driver=template.volume_driver,
        docker_storage_driver=template.docker_storage_driver,
        docker_volume_size=volume or None,
        etcd_volume_size=_size_label(resolved_labels, "etcd_volume_size"),
        external_network_id=template.external_network_id,
        fixed_network=fixed_network or template.fixed_network,
        fixed_subnet=fixed_subnet or template.fixed_subnet,
        fixed_subnet_cidr=_cidr_label(resolved_labels, "fixed_subnet_cidr"),
        dns_nameserver=template.dns_nameserver,
        master_lb_enabled=bool(lb),
        floating_ip_enabled=bool(fip),
        master_lb_floating_ip_enabled=_bool_label(resolved_labels, "master_lb_floating_ip_enabled", bool(fip)),
        master_lb_allowed_cidrs=_cidrs_label(resolved_labels, "master_lb_allowed_cidrs"),
        availability_zone=resolved_labels.get("availability_zone") or None,
        apiserver_port=template.apiserver_port or DEFAULT_API_PORTS.get(template.coe, DEFAULT_API_PORT),
        tls_disabled=template.tls_disabled,
        server_type=template.server_type,
        cluster_distro=template.cluster_distro,
        http_proxy=template.http_proxy,
        https_proxy=template.https_proxy,
        no_proxy=template.no_proxy,
        registry_enabled=template.registry_enabled,
        insecure_registry=template.insecure_registry,
        create_timeout=create_timeout if create_timeout is not None else DEFAULT_CREATE_TIMEOUT,
        discovery_url=discovery_url,
        nodegroups=groups,
    )


def with_flavor_sizes(spec: ClusterSpec, sizes: FlavorSizes) -> ClusterSpec:
    """``spec`` with each nodegroup's flavor sizes from ``sizes`` (those it names), as ``resolve_cluster`` would
    have carried them."""
    groups = [
        msgspec.structs.replace(g, vcpus=sizes[g.flavor_id][0], ram_mb=sizes[g.flavor_id][1])
        if g.flavor_id in sizes else g
        for g in spec.nodegroups
    ]
    return msgspec.structs.replace(spec, nodegroups=groups)


def spec_of(event: ClusterCreateRequested) -> ClusterSpec:
    """The event's resolved spec; for an event written before specs were carried, what the API decides now."""
    if event.spec is not None:
        return event.spec
    return resolve_cluster(
        event.template, master_count=event.master_count, node_count=event.node_count, flavor_id=event.flavor_id,
        master_flavor_id=event.master_flavor_id, labels=event.labels, merge_labels=event.merge_labels,
        keypair=event.keypair, docker_volume_size=event.docker_volume_size, fixed_network=event.fixed_network,
        fixed_subnet=event.fixed_subnet, floating_ip_enabled=event.floating_ip_enabled,
        master_lb_enabled=event.master_lb_enabled, create_timeout=event.create_timeout,
        discovery_url=event.discovery_url,
    )
