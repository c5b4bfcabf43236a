"""The nodegroup planner, a pure function over plain data: for a create, a resize, a nodegroup created or deleted,
or an upgrade, which servers to delete, which to create and whether the cluster is converged (no I/O here).

One planner for every nodegroup, masters included: a cluster create is an update from zero nodes. A worker
nodegroup is converged when exactly ``node_count`` of its servers exist, all ACTIVE, all booted from the group's
image, none of them being deleted; a master group when it has its masters, all ACTIVE. Servers are removed in this order: the ones named in
``nodes_to_remove``, then the highest-numbered ones; new servers take the lowest free numbers. An upgrade replaces
at most ``max_batch_size`` outdated servers at a time, and only once the group is otherwise converged (rolling).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from services.provisioner import model

DEFAULT_MASTER, DEFAULT_WORKER = "default-master", "default-worker"
_INDEX = re.compile(r"-(\d+)$")


@dataclass(frozen=True)
class GroupSpec:
    """One nodegroup's desired state, as the provisioner's store records it."""

    name: str
    role: str
    node_count: int
    present: bool = True
    is_default: bool = False
    nodes_to_remove: frozenset[str] = frozenset()
    image: str | None = None
    """The resolved image id servers of the group must run (None: any)."""
    flavor_id: str | None = None
    image_ref: str | None = None
    """The group's image as given (name or id) before resolution."""
    docker_volume_size: int | None = None
    """GB of the volume attached to each of the group's servers before boot; None: none."""

    @property
    def is_master(self) -> bool:
        return self.role == model.MASTER


def group_of(server: model.ServerView) -> str:
    """The nodegroup a server belongs to (servers created before nodegroups existed: the default of its role)."""
    return server.metadata.get("cove_nodegroup") or (DEFAULT_MASTER if server.role == model.MASTER else DEFAULT_WORKER)


def group_slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower() or "group"


def group_node_name(prefix: str, group: GroupSpec, index: int) -> str:
    """Default groups keep the create path's names; other groups' servers are ``<prefix>-ng-<group>-<n>``."""
    if group.name == DEFAULT_WORKER:
        return model.node_name(prefix, model.WORKER, index)
    if group.name == DEFAULT_MASTER:
        return model.node_name(prefix, model.MASTER, index)
    return f"{prefix}-ng-{group_slug(group.name)}-{index}"


def index_of(name: str) -> int:
    m = _INDEX.search(name)
    return int(m.group(1)) if m else -1


@dataclass
class UpdatePlan:
    to_delete: list[model.ServerView] = field(default_factory=list)
    to_create: list[tuple[GroupSpec, model.DesiredNode]] = field(default_factory=list)
    became_active: list[model.ServerView] = field(default_factory=list)
    failed: list[model.ServerView] = field(default_factory=list)
    complete: bool = False


def _outdated(server: model.ServerView, group: GroupSpec) -> bool:
    image = server.metadata.get("cove_image")
    return group.image is not None and image is not None and image != group.image


def plan_update(
    prefix: str,
    groups: list[GroupSpec],
    servers: list[model.ServerView],
    known: dict[str, model.KnownNode],
    deleting: set[str],
    max_batch_size: int = 1,
) -> UpdatePlan:
    """Compare the groups' desired state with the cluster's servers. ``deleting`` are server ids whose delete was
    already sent; ``known`` the nodes the provisioner's events recorded (keyed by server id)."""
    plan = UpdatePlan()
    by_group: dict[str, list[model.ServerView]] = {}
    for s in sorted(servers, key=lambda s: (index_of(s.name), s.name, s.id)):
        by_group.setdefault(group_of(s), []).append(s)
    names = {g.name for g in groups}
    complete = True
    # servers of a group nobody wants any more (its record is gone): remove them
    for gname, members in by_group.items():
        if gname not in names and gname != DEFAULT_MASTER:
            doomed = [s for s in members if s.id not in deleting and s.status != "DELETED"]
            plan.to_delete += doomed
            complete = False
    for group in groups:
        members = by_group.get(group.name, [])
        if group.is_master:
            complete = _plan_masters(plan, prefix, group, members, known, deleting) and complete
            continue
        alive = [s for s in members if s.id not in deleting and s.status != "DELETED"]
        pending = len(members) - len(alive)
        if not group.present:
            plan.to_delete += alive
            complete = complete and not members
            continue
        _observe(plan, alive, known)
        remove = [s for s in alive if s.id in group.nodes_to_remove or s.name in group.nodes_to_remove]
        keep = [s for s in alive if s not in remove]
        surplus = len(keep) - group.node_count
        if surplus > 0:
            doomed = sorted(keep, key=lambda s: (index_of(s.name), s.name), reverse=True)[:surplus]
            remove += doomed
            keep = [s for s in keep if s not in doomed]
        outdated = [s for s in keep if _outdated(s, group)]
        settled = (
            not remove and not pending and len(keep) == group.node_count
            and all(s.status == "ACTIVE" for s in keep)
        )
        if outdated and settled:
            batch = outdated[: max(1, max_batch_size)]
            remove += batch
            keep = [s for s in keep if s not in batch]
        plan.to_delete += remove
        missing = group.node_count - len(keep)
        if missing > 0:
            taken = {index_of(s.name) for s in members}
            index = 0
            for _ in range(missing):
                while index in taken:
                    index += 1
                taken.add(index)
                role = model.WORKER
                plan.to_create.append((group, model.DesiredNode(group_node_name(prefix, group, index), role, index)))
        done = settled and not outdated
        complete = complete and done
    plan.complete = complete and not plan.failed and not plan.to_create and not plan.to_delete
    return plan


def _observe(plan: UpdatePlan, alive: list[model.ServerView], known: dict[str, model.KnownNode]) -> None:
    """Servers that went to ERROR, or became ACTIVE, since the provisioner's events last said so."""
    for s in alive:
        recorded = known.get(s.id)
        if s.status == "ERROR" and (recorded is None or recorded.status != model.NODE_FAILED):
            plan.failed.append(s)
        elif s.status == "ACTIVE" and (recorded is None or recorded.status == model.NODE_CREATED):
            plan.became_active.append(s)


def _plan_masters(
    plan: UpdatePlan, prefix: str, group: GroupSpec, members: list[model.ServerView], known: dict[str, model.KnownNode],
    deleting: set[str],
) -> bool:
    """Masters are created up to the group's count (a create is an update from zero nodes) and never removed nor
    rolled here (Magnum fixes master_count at create). True when the group has its masters, all ACTIVE."""
    alive = [s for s in members if s.id not in deleting and s.status != "DELETED"]
    _observe(plan, alive, known)
    taken = {index_of(s.name) for s in members}
    index = 0
    for _ in range(group.node_count - len(alive)):
        while index in taken:
            index += 1
        taken.add(index)
        plan.to_create.append((group, model.DesiredNode(group_node_name(prefix, group, index), model.MASTER, index)))
    return len(alive) >= group.node_count and all(s.status == "ACTIVE" for s in alive)


def worker_count(groups: list[GroupSpec]) -> int:
    """The cluster's node_count: the sum over its worker groups (Magnum: every non-master nodegroup)."""
    return sum(g.node_count for g in groups if g.present and not g.is_master)
