"""Quota admission: plain decisions over plain numbers (no bus, no database).

Which clusters count against a project's quota (Magnum counts every cluster row of the project, whatever its
status, until the row is gone):

* a cluster counts from its admission until ``ClusterDeleteCompleted``;
* a ``CREATE_FAILED`` (or ``DELETE_FAILED``) cluster still counts, as in Magnum: the user must delete it;
* a rejected cluster never counts (Magnum never creates its row: the POST answers 403).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from proto import quotas

MAGNUM_DEFAULT_CLUSTER_QUOTA = 20
"""Magnum's ``[quotas] max_clusters_per_project`` default."""


@dataclass(frozen=True)
class Decision:
    admitted: bool
    limit: int
    in_use: int
    reason: str | None = None


def quota_exceeded_message(limit: int) -> str:
    """Magnum's exact text (``ResourceLimitExceeded`` wrapping the cluster controller's message)."""
    return (
        "Resource limit exceeded: You have reached the maximum clusters per project, "
        f"{limit}. You may delete a cluster to make room for a new one."
    )


def cluster_limit(default_limit: int, override: int | None) -> int:
    """A per-project quota row wins over the configured default."""
    return default_limit if override is None else override


def decide(in_use: int, limit: int) -> Decision:
    """Admit when the project has fewer counted clusters than its limit (Magnum: ``count >= limit`` refuses)."""
    if in_use >= limit:
        return Decision(admitted=False, limit=limit, in_use=in_use, reason=quota_exceeded_message(limit))
    return Decision(admitted=True, limit=limit, in_use=in_use)


def counts_against_quota(decision: str | None, delete_completed: bool) -> bool:
    """Whether a cluster in this state occupies one unit of its project's cluster quota."""
    return decision == "admitted" and not delete_completed


def default_quota_from_env(environ: dict[str, str]) -> int:
    """``COVE_DEFAULT_CLUSTER_QUOTA`` (a non-negative integer), else Magnum's default of 20."""
    raw = environ.get("COVE_DEFAULT_CLUSTER_QUOTA", "").strip()
    if not raw:
        return MAGNUM_DEFAULT_CLUSTER_QUOTA
    value = int(raw)
    if value < 0:
        raise ValueError(f"COVE_DEFAULT_CLUSTER_QUOTA must be >= 0, got {value}")
    return value


# --------------------------------------------------------------------------- resources beyond the cluster count

CLUSTER, NODE, VCPU, RAM, VOLUME_GB = quotas.CLUSTER, quotas.NODE, quotas.VCPU, quotas.RAM, quotas.VOLUME_GB
RESOURCES = quotas.RESOURCES
UNLIMITED = quotas.UNLIMITED


@dataclass(frozen=True)
class Demand:
    """What a cluster (or a change of one) holds of its project's quotas."""

    clusters: int = 0
    nodes: int = 0
    vcpus: int = 0
    ram_mb: int = 0
    volume_gb: int = 0

    def of(self, resource: str) -> int:
        return {CLUSTER: self.clusters, NODE: self.nodes, VCPU: self.vcpus, RAM: self.ram_mb,
                VOLUME_GB: self.volume_gb}[resource]

    def __add__(self, other: Demand) -> Demand:
        return Demand(self.clusters + other.clusters, self.nodes + other.nodes, self.vcpus + other.vcpus,
                      self.ram_mb + other.ram_mb, self.volume_gb + other.volume_gb)

    def __sub__(self, other: Demand) -> Demand:
        return Demand(self.clusters - other.clusters, self.nodes - other.nodes, self.vcpus - other.vcpus,
                      self.ram_mb - other.ram_mb, self.volume_gb - other.volume_gb)


@dataclass(frozen=True)
class GroupSize:
    """One nodegroup's reservation: how many nodes, each of what size (vCPUs, RAM MB, volume GB)."""

    name: str
    count: int
    vcpus: int
    ram_mb: int
    volume_gb: int

    def demand(self, count: int | None = None) -> Demand:
        n = self.count if count is None else count
        return Demand(0, n, n * self.vcpus, n * self.ram_mb, n * self.volume_gb)


def group_sizes(spec: object) -> list[GroupSize]:
    """Each nodegroup of a resolved ``ClusterSpec``: its node count, flavor sizes (0 when the spec carries none:
    resolved before sizes were carried, or the flavor was not found) and volumes per node (the container-storage
    volume, plus the etcd volume on masters)."""
    out: list[GroupSize] = []
    etcd = getattr(spec, "etcd_volume_size", None) or 0
    for g in getattr(spec, "nodegroups", []):
        volume = (g.docker_volume_size or 0) + (etcd if g.role == "master" else 0)
        out.append(GroupSize(g.name, g.node_count, g.vcpus or 0, g.ram_mb or 0, volume))
    return out


def cluster_demand(groups: list[GroupSize]) -> Demand:
    total = Demand(clusters=1)
    for g in groups:
        total = total + g.demand()
    return total


def limits_from_env(environ: dict[str, str]) -> dict[str, int]:
    """Defaults for projects without a quota row: ``COVE_DEFAULT_CLUSTER_QUOTA`` (Magnum's 20), and
    ``COVE_DEFAULT_{NODE,VCPU,RAM,VOLUMEGB}_QUOTA`` (unlimited, -1, unless set)."""
    return quotas.default_limits(environ)


def over_quota_message(resource: str, requested: int, left: int, limit: int) -> str:
    unit = " MB" if resource == RAM else (" GB" if resource == VOLUME_GB else "")
    return f"Quota exceeded for {resource}: requested {requested}{unit}, {max(left, 0)}{unit} of {limit}{unit} left."


@dataclass(frozen=True)
class Verdict:
    admitted: bool
    resource: str | None = None
    reason: str | None = None


def decide_all(used: Demand, asked: Demand, limits: dict[str, int]) -> Verdict:
    """Admit when every resource the request asks for fits its limit (-1: unlimited). The cluster count keeps
    Magnum's exact refusal; the others name the resource, what was asked and what is left."""
    for resource in RESOURCES:
        want = asked.of(resource)
        limit = limits.get(resource, UNLIMITED)
        if want <= 0 or limit < 0:
            continue
        have = used.of(resource)
        if have + want > limit:
            if resource == CLUSTER:
                return Verdict(False, CLUSTER, quota_exceeded_message(limit))
            return Verdict(False, resource, over_quota_message(resource, want, limit - have, limit))
    return Verdict(True)


# --------------------------------------------------------------------------- fair build order


@dataclass(frozen=True)
class Waiting:
    cluster_id: str
    project_id: str
    cloud: str
    queued_seq: int


def fair_order(waiting: list[Waiting], building: dict[str, int]) -> list[Waiting]:
    """The order the waiting clusters will be built in: round-robin between projects, each time the project with
    the fewest clusters building (counting those ordered before it here), ties to the longest waiting head. One
    project's 100 creates therefore do not starve another's one."""
    queues: dict[str, list[Waiting]] = {}
    for w in sorted(waiting, key=lambda w: w.queued_seq):
        queues.setdefault(w.project_id, []).append(w)
    heads = [(building.get(p, 0), q[0].queued_seq, p) for p, q in queues.items()]
    heapq.heapify(heads)
    index = dict.fromkeys(queues, 0)
    out: list[Waiting] = []
    while heads:
        count, _, project = heapq.heappop(heads)
        q = queues[project]
        out.append(q[index[project]])
        index[project] += 1
        if index[project] < len(q):
            heapq.heappush(heads, (count + 1, q[index[project]].queued_seq, project))
    return out


def build_limits_from_env(environ: dict[str, str]) -> tuple[int, dict[str, int]]:
    """``COVE_MAX_BUILDS`` (clusters being built at once, all clouds; unset or -1: no limit) and
    ``COVE_MAX_BUILDS_PER_CLOUD`` (``name=N,name2=M``)."""
    raw = environ.get("COVE_MAX_BUILDS", "").strip()
    total = int(raw) if raw else UNLIMITED
    per_cloud: dict[str, int] = {}
    for item in environ.get("COVE_MAX_BUILDS_PER_CLOUD", "").split(","):
        if "=" in item:
            name, _, value = item.partition("=")
            per_cloud[name.strip()] = int(value)
    return total, per_cloud


ordinal = quotas.ordinal
waiting_reason = quotas.waiting_reason
