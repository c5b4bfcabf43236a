"""The nodegroup planner, a pure function over plain data: for a create, a resize, a nodegroup created or deleted,
or an upgrade, which servers to delete, which to create and whether the cluster is converged (no I/O here).

One planner for every nodegroup, masters included: a cluster create is an update from zero nodes. A worker
nodegroup is converged when exactly ``node_count`` of its servers exist, all ACTIVE, all booted from the group's
image, none of them being deleted; a master group when it has its masters, all ACTIVE. Servers are removed in this order: the ones named in
``nodes_to_remove``, then the highest-numbered ones; new servers take the lowest free numbers. An upgrade replaces
at most ``max_batch_size`` outdated servers at a time, and only once the group is otherwise converged and every
master is rolled (rolling); masters roll first, one at a time (``_plan_masters``, docs/adr/0010). Outdated: another
image, or booted before the group's last roll (an upgrade, even to the same template, or a CA rotation).
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
    roll: int = 0
    """The group's roll generation: a server booted at an older one (``cove_roll`` metadata) is replaced."""

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
    retire: list[model.ServerView] = field(default_factory=list)
    """Masters of a roll to take out of the load balancer's pool and then delete."""
    complete: bool = False


def roll_of(server: model.ServerView) -> int:
    """The roll generation a server was booted at (``cove_roll`` metadata; 0 for servers booted before rolls)."""
    try:
        return int(server.metadata.get("cove_roll") or 0)
    except ValueError:
        return 0


def _outdated(server: model.ServerView, group: GroupSpec) -> bool:
    """Booted from another image than the group's, or before the group's last roll (an upgrade, even to the same
    version, or a CA rotation)."""
    image = server.metadata.get("cove_image")
    if group.image is not None and image is not None and image != group.image:
        return True
    return roll_of(server) < group.roll


def plan_update(
    prefix: str,
    groups: list[GroupSpec],
    servers: list[model.ServerView],
    known: dict[str, model.KnownNode],
    deleting: set[str],
    max_batch_size: int = 1,
    pool: frozenset[str] | None = None,
    reserved: frozenset[str] = frozenset(),
) -> UpdatePlan:
    """Compare the groups' desired state with the cluster's servers. ``deleting`` are server ids whose delete was
    already sent; ``known`` the nodes the provisioner's events recorded (keyed by server id); ``pool`` the ids of
    the masters the load balancer's pool holds ACTIVE (None: the cluster has no load balancer); ``reserved`` names
    no new worker takes (a deleted node's, until its volumes, floating IP and port are released: found by name,
    they would be taken for the new node's, or the new node's for them).

    Masters are rolled first, one at a time, then workers (``max_batch_size`` at a time)."""
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
    masters_rolled = True
    for group in groups:
        if group.is_master and group.present:
            members = by_group.get(group.name, [])
            done = _plan_masters(plan, prefix, group, members, known, deleting, pool)
            masters_rolled = masters_rolled and done
            complete = done and complete
    for group in groups:
        members = by_group.get(group.name, [])
        if group.is_master:
            continue
        alive = [s for s in members if s.id not in deleting and s.status != "DELETED"]
        pending = len(members) - len(alive)
        if not group.present:
            plan.to_delete += alive
            complete = complete and not members
            continue
        _observe(plan, alive, known)
        # a server already reported in ERROR (a failed update) is replaced by the next update: the retry
        broken = [s for s in alive if _broken(s, known)]
        remove = [s for s in alive if s.id in group.nodes_to_remove or s.name in group.nodes_to_remove or s in broken]
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
        if outdated and settled and masters_rolled:
            batch = outdated[: max(1, max_batch_size)]
            remove += batch
            keep = [s for s in keep if s not in batch]
        plan.to_delete += remove
        missing = group.node_count - len(keep)
        if missing > 0:
            taken = {index_of(s.name) for s in members}
            index = 0
            for _ in range(missing):
                while index in taken or group_node_name(prefix, group, index) in reserved:
                    index += 1
                taken.add(index)
                role = model.WORKER
                plan.to_create.append((group, model.DesiredNode(group_node_name(prefix, group, index), role, index)))
        done = settled and not outdated
        complete = complete and done
    plan.complete = complete and not plan.failed and not plan.to_create and not plan.to_delete and not plan.retire
    return plan


def _broken(server: model.ServerView, known: dict[str, model.KnownNode]) -> bool:
    """A node a failed operation reported failed (ERROR, or never ACTIVE by its deadline) and still not ACTIVE: the
    next update (the retry) replaces it."""
    recorded = known.get(server.id)
    return recorded is not None and recorded.status == model.NODE_FAILED and server.status != "ACTIVE"


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
    deleting: set[str], pool: frozenset[str] | None = None,
) -> bool:
    """Masters are created up to the group's count (a create is an update from zero nodes; Magnum fixes
    master_count at create) and rolled one at a time when outdated. Behind a load balancer (``pool``: the masters
    its pool holds ACTIVE) a new master is booted first and joins the pool ACTIVE before the oldest outdated one is
    retired (``plan.retire``: taken out of the pool, then deleted), so the pool never holds fewer than
    master_count ACTIVE members but for the moment one leaves. Without one (a single master whose port carries the
    API) the master is deleted and booted again under its own name, on the kept port. True when the group has its
    masters, all ACTIVE and up to date, none being deleted."""
    alive = [s for s in members if s.id not in deleting and s.status != "DELETED"]
    _observe(plan, alive, known)
    broken = [s for s in alive if _broken(s, known)]
    plan.to_delete += broken  # reported by a failed update: the retry replaces it
    alive = [s for s in alive if s not in broken]
    pending = len(members) - len(alive)
    taken = {index_of(s.name) for s in members}
    active = all(s.status == "ACTIVE" for s in alive)
    outdated = [s for s in alive if _outdated(s, group)]
    wanted = group.node_count
    if outdated and active and not pending and len(alive) >= wanted:
        if pool is None:
            plan.to_delete.append(outdated[0])
            return False
        current = [s for s in alive if s not in outdated]
        if len(alive) == wanted:
            wanted += 1  # surge: a new master first
        elif all(s.id in pool for s in current):
            plan.retire.append(outdated[0])  # the new one serves: the oldest outdated leaves
            return False
        else:
            return False  # the new master joins the pool first
    if pool is None and pending:
        return False  # the replaced master's name and port come free when it is gone
    index = 0
    for _ in range(wanted - len(alive)):
        while index in taken:
            index += 1
        taken.add(index)
        plan.to_create.append((group, model.DesiredNode(group_node_name(prefix, group, index), model.MASTER, index)))
    return len(alive) >= group.node_count and active and not outdated and not pending


def worker_count(groups: list[GroupSpec]) -> int:
    """The cluster's node_count: the sum over its worker groups (Magnum: every non-master nodegroup)."""
    return sum(g.node_count for g in groups if g.present and not g.is_master)
