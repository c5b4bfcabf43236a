"""The scheduler's SQL (schema ``scheduler``; connections have it on their search_path)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from services.runtime.projection import Write
from services.scheduler.admission import Demand, GroupSize, Waiting


async def lock_projects(tx: asyncpg.Connection, project_ids: Sequence[str]) -> None:
    """Serialise admissions of these projects across scheduler replicas (held until the transaction ends); one
    statement, locking in sorted order so that two replicas locking overlapping sets cannot deadlock."""
    await tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('cove-scheduler:' || p)) FROM unnest($1::text[]) AS p",
        sorted(set(project_ids)),
    )


@dataclass
class Counted:
    """What a cluster's row adds to its project's usage (``project_usage``, kept by a trigger): its whole
    reservation (``reserved``: one cluster and its nodes, vCPUs, RAM and volume GB) while it is admitted and not
    deleted. A run of events follows it in memory (``Handlers.wide_run``) as the trigger follows the row."""

    project_id: str
    decision: str | None
    delete_completed: bool
    reserved: Demand

    @property
    def counts(self) -> bool:
        return self.decision == "admitted" and not self.delete_completed


@dataclass(frozen=True)
class RunFacts:
    """What admitting requests and confirming decisions needs (``run_facts``)."""

    decisions: dict[str, str | None]
    """Every asked-for cluster the store knows, with its decision (None: known from another event only)."""
    projects: dict[str, tuple[int, int | None]]
    """Per asked-for project: the clusters counted against its quota (admitted and not yet deleted: one row of the
    counter a trigger keeps in step with ``clusters``, migrations 0002 and 0003, not a count over the project's
    clusters), and its own cluster limit if an admin set one."""
    usage: dict[str, Demand] = field(default_factory=dict)
    """Per asked-for project: everything its counted clusters reserve (clusters, nodes, vCPUs, RAM, volume GB)."""
    overrides: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per asked-for project: resource -> the limit an admin set."""
    rows: dict[str, Counted] = field(default_factory=dict)
    """Every asked-for cluster the store knows: what its row adds to its project's usage."""


async def run_facts(
    tx: asyncpg.Connection, cluster_ids: Sequence[str], project_ids: Sequence[str], resource: str = "Cluster"
) -> RunFacts:
    """The facts for these clusters and projects, in one round trip. Run it AFTER ``lock_projects`` (in its own
    statement: a statement's snapshot is taken when it starts, so reads in the locking statement could predate the
    lock)."""
    rows = await tx.fetch(
        "SELECT true AS is_cluster, cluster_id AS key, decision,"
        " ARRAY[nodes, vcpus, ram_mb, volume_gb]::bigint[] AS used, ARRAY[project_id] AS res,"
        " ARRAY[delete_completed::integer] AS lim FROM clusters WHERE cluster_id = ANY($1::text[])"
        " UNION ALL"
        " SELECT false, p, NULL,"
        " (SELECT ARRAY[clusters, nodes, vcpus, ram_mb, volume_gb]::bigint[] FROM project_usage WHERE project_id = p),"
        " (SELECT array_agg(resource ORDER BY resource) FROM quotas WHERE project_id = p),"
        " (SELECT array_agg(hard_limit ORDER BY resource) FROM quotas WHERE project_id = p)"
        " FROM unnest($2::text[]) AS p",
        list(cluster_ids),
        list(set(project_ids)),
    )
    decisions: dict[str, str | None] = {}
    projects: dict[str, tuple[int, int | None]] = {}
    usage: dict[str, Demand] = {}
    overrides: dict[str, dict[str, int]] = {}
    counted: dict[str, Counted] = {}
    for row in rows:
        if row["is_cluster"]:
            decisions[row["key"]] = row["decision"]
            nodes, vcpus, ram_mb, volume_gb = (int(v) for v in row["used"])
            counted[row["key"]] = Counted(row["res"][0], row["decision"], bool(row["lim"][0]),
                                          Demand(1, nodes, vcpus, ram_mb, volume_gb))
            continue
        used = [int(v) for v in row["used"]] if row["used"] is not None else [0, 0, 0, 0, 0]
        limits = dict(zip(row["res"] or [], row["lim"] or [], strict=True))
        usage[row["key"]] = Demand(*used)
        overrides[row["key"]] = {str(k): int(v) for k, v in limits.items()}
        projects[row["key"]] = (used[0], limits.get(resource))
    return RunFacts(decisions, projects, usage, overrides, counted)


@dataclass(frozen=True)
class Request:
    """A new cluster and the decision taken on it now (the decision event later confirms it)."""

    cluster_id: str
    project_id: str
    name: str | None
    master_count: int
    node_count: int
    requested_at: datetime
    decision: str
    reason: str | None
    demand: Demand = field(default_factory=Demand)
    groups: tuple[GroupSize, ...] = ()
    cloud: str = "default"
    build: str | None = None
    queued_seq: int | None = None
    resource: str | None = None
    """The quota that refused it (not stored: said in the rejection)."""
    trust_id: str | None = None
    """The cluster's Keystone trust: its project's cloud quota is asked through it when the cluster grows."""
    floating_ips: bool = False
    """Whether its nodes get floating IPs (a growth takes one per node from the cloud's quota)."""


def cluster_key(cluster_id: str) -> tuple[str, str]:
    """The key of a planned write to one cluster's rows (``clusters``, ``cluster_groups``; the ``project_usage``
    row its trigger moves is a sum, which writes of different clusters move in any order to the same total)."""
    return ("cluster", cluster_id)


REQUEST_SQL = (
    "INSERT INTO clusters (cluster_id, project_id, name, master_count, node_count, requested_at, decision,"
    " reason, cloud, nodes, vcpus, ram_mb, volume_gb, build, queued_seq, trust_id, floating_ips)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
)
REQUEST_GROUP_SQL = (
    "INSERT INTO cluster_groups (cluster_id, name, node_count, reserved, vcpus, ram_mb, volume_gb)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (cluster_id, name) DO NOTHING"
)


def _request_args(r: Request) -> tuple[object, ...]:
    return (r.cluster_id, r.project_id, r.name, r.master_count, r.node_count, r.requested_at, r.decision, r.reason,
            r.cloud, r.demand.nodes, r.demand.vcpus, r.demand.ram_mb, r.demand.volume_gb, r.build, r.queued_seq,
            r.trust_id, r.floating_ips)


def _group_args(r: Request) -> list[tuple[object, ...]]:
    return [(r.cluster_id, g.name, g.count, g.count, g.vcpus, g.ram_mb, g.volume_gb) for g in r.groups]


def request_writes(r: Request) -> list[Write]:
    """``record_requests`` of one request, as planned writes."""
    key = (cluster_key(r.cluster_id),)
    return [Write(REQUEST_SQL, _request_args(r), key),
            *(Write(REQUEST_GROUP_SQL, args, key) for args in _group_args(r))]


async def record_requests(tx: asyncpg.Connection, requests: Sequence[Request]) -> None:
    """New clusters with the decisions taken on them, and the nodegroups an admitted one reserves, in two round
    trips (asyncpg pipelines executemany)."""
    await tx.executemany(REQUEST_SQL, [_request_args(r) for r in requests])
    groups = [args for r in requests for args in _group_args(r)]
    if groups:
        await tx.executemany(REQUEST_GROUP_SQL, groups)


@dataclass(frozen=True)
class Decided:
    """A published decision (``ClusterAdmitted`` / ``ClusterQueued`` / ``ClusterRejected``)."""

    cluster_id: str
    project_id: str
    decision: str
    reason: str | None
    decided_at: datetime
    master_count: int | None = None
    node_count: int | None = None
    build: str | None = None
    """'building' for ``ClusterAdmitted``, 'queued' for ``ClusterQueued``, None for a rejection."""


DECISION_SQL = (
    "INSERT INTO clusters (cluster_id, project_id, decision, reason, decided_at, master_count, node_count, build)"
    " VALUES ($1, $2, $3, $4, $5, COALESCE($6, 1), COALESCE($7, 1), $8)"
    " ON CONFLICT (cluster_id) DO UPDATE SET decision = EXCLUDED.decision, reason = EXCLUDED.reason,"
    " decided_at = EXCLUDED.decided_at, build = CASE"
    "   WHEN EXCLUDED.build IS NULL THEN NULL"
    "   WHEN clusters.build = 'done' OR (clusters.build = 'building' AND EXCLUDED.build = 'queued')"
    "     THEN clusters.build"
    "   ELSE EXCLUDED.build END"
)


def _decision_args(d: Decided) -> tuple[object, ...]:
    return (d.cluster_id, d.project_id, d.decision, d.reason, d.decided_at, d.master_count, d.node_count, d.build)


def decision_write(d: Decided) -> Write:
    """``record_decisions`` of one decision, as a planned write."""
    return Write(DECISION_SQL, _decision_args(d), (cluster_key(d.cluster_id),))


async def record_decisions(tx: asyncpg.Connection, decided: Sequence[Decided]) -> None:
    """The published decision is the fact: it overrides what a replay may have re-decided differently. Several in
    one round trip. A build state only moves forward (queued -> building -> done)."""
    await tx.executemany(DECISION_SQL, [_decision_args(d) for d in decided])


# --------------------------------------------------------------------------- build order


async def lock_builds(tx: asyncpg.Connection) -> None:
    """Serialise the build queue across scheduler replicas (held until the transaction ends). Taken after the
    project locks, always in that order."""
    await tx.execute("SELECT pg_advisory_xact_lock(hashtext('cove-scheduler:builds'))")


async def next_queued_seq(tx: asyncpg.Connection) -> int:
    """The next place in arrival order: deterministic on replay (the same events in the same order)."""
    return int(await tx.fetchval("SELECT COALESCE(max(queued_seq), 0) + 1 FROM clusters") or 1)


@dataclass(frozen=True)
class BuildState:
    waiting: list[Waiting]
    building: dict[tuple[str, str], int]
    """(cloud, project) -> clusters being built."""
    rows: dict[str, tuple[str | None, int, int]]
    """Waiting cluster -> (name, master_count, node_count), for its ``ClusterAdmitted``."""


async def build_state(tx: asyncpg.Connection) -> BuildState:
    rows = await tx.fetch(
        "SELECT build, cluster_id, project_id, cloud, queued_seq, name, master_count, node_count FROM clusters"
        " WHERE build = 'queued'"
        " UNION ALL SELECT 'building', NULL, project_id, cloud, count(*), NULL, NULL, NULL FROM clusters"
        " WHERE build = 'building' GROUP BY project_id, cloud"
    )
    waiting: list[Waiting] = []
    building: dict[tuple[str, str], int] = {}
    info: dict[str, tuple[str | None, int, int]] = {}
    for r in rows:
        if r["build"] == "queued":
            waiting.append(Waiting(r["cluster_id"], r["project_id"], r["cloud"], int(r["queued_seq"] or 0)))
            info[r["cluster_id"]] = (r["name"], int(r["master_count"]), int(r["node_count"]))
        else:
            building[(r["cloud"], r["project_id"])] = int(r["queued_seq"])
    return BuildState(waiting, building, info)


async def set_build(tx: asyncpg.Connection, cluster_ids: Sequence[str], build: str) -> None:
    await tx.execute("UPDATE clusters SET build = $2 WHERE cluster_id = ANY($1::text[])", list(cluster_ids), build)


FINISH_BUILD_SQL = "UPDATE clusters SET build = 'done' WHERE cluster_id = $1 AND build = ANY($2::text[])"


async def finish_build(tx: asyncpg.Connection, cluster_id: str, *, queued_too: bool = False) -> bool:
    """A build slot (or a place in the queue, with ``queued_too``) is no longer held: True when one was."""
    states = ["building", "queued"] if queued_too else ["building"]
    done = await tx.fetchval(FINISH_BUILD_SQL + " RETURNING true", cluster_id, states)
    return bool(done)


def finish_build_write(cluster_id: str) -> Write:
    """``finish_build`` of a build slot (not of a place in the queue), as a planned write."""
    return Write(FINISH_BUILD_SQL, (cluster_id, ["building"]), (cluster_key(cluster_id),))


# --------------------------------------------------------------------------- nodegroups (resize reservations)


async def groups_of(tx: asyncpg.Connection, cluster_id: str) -> dict[str, GroupSize]:
    rows = await tx.fetch(
        "SELECT name, node_count, reserved, vcpus, ram_mb, volume_gb FROM cluster_groups WHERE cluster_id = $1",
        cluster_id,
    )
    return {r["name"]: GroupSize(r["name"], int(r["reserved"]), int(r["vcpus"]), int(r["ram_mb"]),
                                 int(r["volume_gb"])) for r in rows}


async def cluster_row(tx: asyncpg.Connection, cluster_id: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await tx.fetchrow(
        "SELECT project_id, decision, delete_completed, master_count, node_count FROM clusters WHERE cluster_id = $1",
        cluster_id,
    )
    return row


async def put_group(tx: asyncpg.Connection, cluster_id: str, group: GroupSize, node_count: int, reserved: int) -> None:
    await tx.execute(
        "INSERT INTO cluster_groups (cluster_id, name, node_count, reserved, vcpus, ram_mb, volume_gb)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (cluster_id, name) DO UPDATE SET"
        " node_count = EXCLUDED.node_count, reserved = EXCLUDED.reserved",
        cluster_id, group.name, node_count, reserved, group.vcpus, group.ram_mb, group.volume_gb,
    )


async def settle_groups(tx: asyncpg.Connection, cluster_id: str, counts: dict[str, int]) -> None:
    """An update completed: each group now holds what it has (``counts``, else its requested count); a shrink's
    nodes are freed here, not when it was asked for."""
    if counts:
        await tx.execute(
            "UPDATE cluster_groups g SET node_count = c.n FROM unnest($2::text[], $3::integer[]) AS c (name, n)"
            " WHERE g.cluster_id = $1 AND g.name = c.name",
            cluster_id, list(counts), list(counts.values()),
        )
    await tx.execute("UPDATE cluster_groups SET reserved = node_count, growing = 0 WHERE cluster_id = $1", cluster_id)


async def update_ended(tx: asyncpg.Connection, cluster_id: str) -> None:
    """An update failed: whatever it built (servers in ERROR too) the cloud's usage now holds, so its growth is no
    longer counted as unbuilt; the reservation stays until an update completes or the cluster is deleted."""
    await tx.execute("UPDATE cluster_groups SET growing = 0 WHERE cluster_id = $1 AND growing <> 0", cluster_id)


async def grow_group(tx: asyncpg.Connection, cluster_id: str, group: GroupSize, node_count: int, delta: int) -> None:
    """A group's new node count, reserving ``delta`` more nodes (0 for a shrink: freed when the update completes)
    that the cloud does not count until they are built (``growing``); a group not stored yet is created with its
    sizes from ``group``."""
    await tx.execute(
        "INSERT INTO cluster_groups (cluster_id, name, node_count, reserved, vcpus, ram_mb, volume_gb, growing)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $4) ON CONFLICT (cluster_id, name) DO UPDATE SET"
        " node_count = EXCLUDED.node_count, reserved = cluster_groups.reserved + EXCLUDED.reserved,"
        " growing = cluster_groups.growing + EXCLUDED.reserved",
        cluster_id, group.name, node_count, delta, group.vcpus, group.ram_mb, group.volume_gb,
    )


async def group_node_count(tx: asyncpg.Connection, cluster_id: str, name: str) -> int | None:
    count = await tx.fetchval("SELECT node_count FROM cluster_groups WHERE cluster_id = $1 AND name = $2",
                              cluster_id, name)
    return None if count is None else int(count)


# --------------------------------------------------------------------------- decided growths (the cloud's quota)


async def cloud_identity(tx: asyncpg.Connection, cluster_id: str) -> tuple[str | None, bool]:
    """The cluster's trust (None: unknown, e.g. created before trusts were kept) and whether its nodes get
    floating IPs."""
    row = await tx.fetchrow("SELECT trust_id, floating_ips FROM clusters WHERE cluster_id = $1", cluster_id)
    return (None, False) if row is None else (row["trust_id"], bool(row["floating_ips"]))


@dataclass(frozen=True)
class Change:
    """A decided growth waiting for its published decision (migration 0004's ``pending_changes``)."""

    request_id: str
    cluster_id: str
    group: GroupSize
    """The group's sizes (``count`` unused)."""
    applied: bool
    before_count: int | None
    node_count: int
    delta: int


async def record_change(tx: asyncpg.Connection, change: Change) -> None:
    g = change.group
    await tx.execute(
        "INSERT INTO pending_changes (request_id, cluster_id, name, applied, before_count, node_count, delta, vcpus,"
        " ram_mb, volume_gb) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (request_id) DO NOTHING",
        change.request_id, change.cluster_id, g.name, change.applied, change.before_count, change.node_count,
        change.delta, g.vcpus, g.ram_mb, g.volume_gb,
    )


async def take_change(tx: asyncpg.Connection, request_id: str | None) -> Change | None:
    """The growth the decision caused by ``request_id`` settles (removed: a decision is read once)."""
    if request_id is None:
        return None
    row = await tx.fetchrow("DELETE FROM pending_changes WHERE request_id = $1 RETURNING *", request_id)
    if row is None:
        return None
    return Change(row["request_id"], row["cluster_id"],
                  GroupSize(row["name"], 0, int(row["vcpus"]), int(row["ram_mb"]), int(row["volume_gb"])),
                  bool(row["applied"]), row["before_count"], int(row["node_count"]), int(row["delta"]))


async def undo_growth(tx: asyncpg.Connection, change: Change) -> None:
    """Take back an applied growth that the published decision refused: a new group goes; an existing one gives
    back the nodes it reserved and its count (unless another change set the count since)."""
    if change.before_count is None:
        await tx.execute("DELETE FROM cluster_groups WHERE cluster_id = $1 AND name = $2", change.cluster_id,
                         change.group.name)
        return
    await tx.execute(
        "UPDATE cluster_groups SET node_count = CASE WHEN node_count = $4 THEN $5 ELSE node_count END,"
        " reserved = greatest(reserved - $3, CASE WHEN node_count = $4 THEN $5 ELSE node_count END),"
        " growing = greatest(growing - $3, 0) WHERE cluster_id = $1 AND name = $2",
        change.cluster_id, change.group.name, change.delta, change.node_count, change.before_count,
    )


async def sum_groups(tx: asyncpg.Connection, cluster_id: str) -> None:
    """The cluster's reservation = the sum over its nodegroups (the project_usage trigger follows)."""
    await tx.execute(
        "UPDATE clusters c SET nodes = s.n, vcpus = s.v, ram_mb = s.r, volume_gb = s.g FROM ("
        " SELECT sum(reserved) AS n, sum(reserved * vcpus) AS v, sum(reserved::bigint * ram_mb) AS r,"
        " sum(reserved * volume_gb) AS g FROM cluster_groups WHERE cluster_id = $1) s"
        " WHERE c.cluster_id = $1 AND s.n IS NOT NULL",
        cluster_id,
    )


async def unbuilt(tx: asyncpg.Connection, project_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per project, what Cove reserved for clusters not yet built (waiting or building) and for the growth of built
    ones (resizes and new nodegroups until their update ends), in the cloud's quota terms
    (services/scheduler/cloudquota.py): the cloud's own usage does not hold them yet. Ports and floating IPs are
    counted one per node (an upper bound), volumes one per node with volume GB."""
    rows = await tx.fetch(
        "SELECT project_id, sum(clusters) AS clusters, sum(nodes) AS nodes, sum(vcpus) AS vcpus, sum(ram) AS ram,"
        " sum(gb) AS gb, sum(volumes) AS volumes FROM ("
        " SELECT project_id, 1 AS clusters, nodes, vcpus, ram_mb AS ram, volume_gb AS gb,"
        " CASE WHEN volume_gb > 0 THEN nodes ELSE 0 END AS volumes FROM clusters"
        " WHERE project_id = ANY($1::text[]) AND decision = 'admitted' AND NOT delete_completed"
        " AND build IN ('queued', 'building')"
        " UNION ALL"
        " SELECT c.project_id, 0, g.growing, g.growing * g.vcpus, g.growing::bigint * g.ram_mb,"
        " g.growing * g.volume_gb, CASE WHEN g.volume_gb > 0 THEN g.growing ELSE 0 END"
        " FROM cluster_groups g JOIN clusters c USING (cluster_id)"
        " WHERE c.project_id = ANY($1::text[]) AND g.growing > 0 AND c.decision = 'admitted'"
        " AND NOT c.delete_completed AND c.build IS DISTINCT FROM 'queued' AND c.build IS DISTINCT FROM 'building'"
        ") u GROUP BY project_id",
        list(project_ids),
    )
    return {r["project_id"]: {
        "instances": int(r["nodes"]), "cores": int(r["vcpus"]), "ram": int(r["ram"]), "gigabytes": int(r["gb"]),
        "volumes": int(r["volumes"]), "port": int(r["nodes"]), "floatingip": int(r["nodes"]),
        "network": int(r["clusters"]), "security_group": 2 * int(r["clusters"]),
    } for r in rows}


async def usage_of(tx: asyncpg.Connection, project_id: str) -> tuple[Demand, dict[str, int]]:
    facts = await run_facts(tx, [], [project_id])
    return facts.usage[project_id], facts.overrides[project_id]


def mark_write(cluster_id: str, project_id: str, column: str, at: datetime) -> Write:
    """Set one lifecycle flag (create_failed, delete_requested, delete_completed), creating the row if unknown."""
    if column not in ("create_failed", "delete_requested", "delete_completed"):
        raise ValueError(column)
    ended = (
        ", ended_at = COALESCE(clusters.ended_at, EXCLUDED.ended_at)" if column == "delete_completed" else ""
    )
    return Write(
        f"INSERT INTO clusters (cluster_id, project_id, {column}, ended_at) VALUES ($1, $2, true, $3)"
        f" ON CONFLICT (cluster_id) DO UPDATE SET {column} = true{ended}",
        (cluster_id, project_id, at if column == "delete_completed" else None),
        (cluster_key(cluster_id),),
    )


async def mark(tx: asyncpg.Connection, cluster_id: str, project_id: str, column: str, at: datetime) -> None:
    """Set one lifecycle flag (create_failed, delete_requested, delete_completed), creating the row if unknown."""
    w = mark_write(cluster_id, project_id, column, at)
    await tx.execute(w.sql, *w.args)


async def set_quota(
    tx: asyncpg.Connection, project_id: str, hard_limit: int, at: datetime, resource: str = "Cluster"
) -> None:
    """Create or change a per-project limit (for the quota events of issue 4)."""
    await tx.execute(
        "INSERT INTO quotas (project_id, resource, hard_limit, created_at) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (project_id, resource) DO UPDATE SET hard_limit = EXCLUDED.hard_limit,"
        " updated_at = EXCLUDED.created_at",
        project_id,
        resource,
        hard_limit,
        at,
    )


async def delete_quota(tx: asyncpg.Connection, project_id: str, resource: str = "Cluster") -> None:
    await tx.execute("DELETE FROM quotas WHERE project_id = $1 AND resource = $2", project_id, resource)
