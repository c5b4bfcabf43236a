"""The nodegroup planner (services/provisioner/nodeplan.py): pure decisions, no cloud or bus."""

from __future__ import annotations

from services.provisioner import model, nodeplan

P = "c-abcdef12"


def srv(name: str, sid: str, status: str = "ACTIVE", group: str | None = None, image: str | None = "img1",
        role: str = "worker") -> model.ServerView:
    meta = {"cove_cluster_id": "c", "cove_role": role}
    if group:
        meta["cove_nodegroup"] = group
    if image:
        meta["cove_image"] = image
    return model.ServerView(id=sid, name=name, status=status, metadata=meta)


def known(*servers: model.ServerView) -> dict[str, model.KnownNode]:
    return {s.id: model.KnownNode(s.id, s.name, s.role, model.NODE_ACTIVE) for s in servers}


MASTER = nodeplan.GroupSpec(name="default-master", role="master", node_count=1, is_default=True, image="img1")


def worker(count: int, remove: frozenset[str] = frozenset(), image: str = "img1") -> nodeplan.GroupSpec:
    return nodeplan.GroupSpec(name="default-worker", role="worker", node_count=count, is_default=True,
                        nodes_to_remove=remove, image=image)


M0 = srv(f"{P}-master-0", "m0", role="master")


def upd(groups: list[nodeplan.GroupSpec], servers: list[model.ServerView], recorded: dict[str, model.KnownNode],
        deleting: set[str], **kw: int) -> nodeplan.UpdatePlan:
    """plan_update for a cluster whose one master is up (the worker-side tests)."""
    return nodeplan.plan_update(P, groups, [M0, *servers], {**recorded, **known(M0)}, deleting, **kw)


def test_grow_creates_lowest_free_indices() -> None:
    m = srv(f"{P}-master-0", "m0", role="master")
    w0, w2 = srv(f"{P}-node-0", "w0"), srv(f"{P}-node-2", "w2")
    plan = nodeplan.plan_update(P, [MASTER, worker(4)], [m, w0, w2], known(m, w0, w2), set())
    assert [n.name for _, n in plan.to_create] == [f"{P}-node-1", f"{P}-node-3"]
    assert not plan.to_delete and not plan.complete


def test_a_new_worker_skips_the_names_whose_resources_are_still_being_released() -> None:
    """A worker deleted by a resize down keeps its name until its volumes, floating IP and port are released: found
    by name, they would be taken for a new worker's (or its for them)."""
    m = srv(f"{P}-master-0", "m0", role="master")
    w0 = srv(f"{P}-node-0", "w0")
    plan = nodeplan.plan_update(P, [MASTER, worker(3)], [m, w0], known(m, w0), set(),
                                reserved=frozenset({f"{P}-node-1"}))
    assert [n.name for _, n in plan.to_create] == [f"{P}-node-2", f"{P}-node-3"]


def test_shrink_removes_named_nodes_first_then_highest() -> None:
    ws = [srv(f"{P}-node-{i}", f"w{i}") for i in range(4)]
    plan = upd([MASTER, worker(2, frozenset({"w0"}))], ws, known(*ws), set())
    assert sorted(s.id for s in plan.to_delete) == ["w0", "w3"]
    assert not plan.to_create


def test_nodes_to_remove_with_same_count_replaces_them() -> None:
    ws = [srv(f"{P}-node-{i}", f"w{i}") for i in range(2)]
    plan = upd([MASTER, worker(2, frozenset({"w1"}))], ws, known(*ws), set())
    assert [s.id for s in plan.to_delete] == ["w1"]
    assert [n.name for _, n in plan.to_create] == [f"{P}-node-2"]


def test_complete_only_when_deleted_servers_are_gone() -> None:
    ws = [srv(f"{P}-node-{i}", f"w{i}") for i in range(2)]
    plan = upd([MASTER, worker(1)], ws, known(*ws), {"w1"})
    assert not plan.complete and not plan.to_delete and not plan.to_create
    plan = upd([MASTER, worker(1)], ws[:1], known(*ws[:1]), set())
    assert plan.complete


def test_new_group_and_removed_group() -> None:
    extra = nodeplan.GroupSpec(name="GPU pool", role="worker", node_count=2, image="img1")
    plan = upd([MASTER, worker(0), extra], [], {}, set())
    assert [n.name for _, n in plan.to_create] == [f"{P}-ng-gpu-pool-0", f"{P}-ng-gpu-pool-1"]
    gone = nodeplan.GroupSpec(name="GPU pool", role="worker", node_count=2, present=False)
    servers = [srv(f"{P}-ng-gpu-pool-0", "g0", group="GPU pool")]
    plan = upd([MASTER, worker(0), gone], servers, known(*servers), set())
    assert [s.id for s in plan.to_delete] == ["g0"] and not plan.complete
    assert nodeplan.worker_count([MASTER, worker(3), extra, gone]) == 5


def test_upgrade_rolls_in_batches_once_settled() -> None:
    ws = [srv(f"{P}-node-{i}", f"w{i}", image="old") for i in range(3)]
    plan = upd([MASTER, worker(3, image="new")], ws, known(*ws), set(), max_batch_size=2)
    assert [s.id for s in plan.to_delete] == ["w0", "w1"]
    assert [n.name for _, n in plan.to_create] == [f"{P}-node-3", f"{P}-node-4"]
    # while a replacement builds, nothing else is rolled
    building = [ws[2], srv(f"{P}-node-3", "w3", "BUILD", image="new"), srv(f"{P}-node-4", "w4", "BUILD", image="new")]
    plan = upd([MASTER, worker(3, image="new")], building, known(*building), set())
    assert not plan.to_delete and not plan.to_create and not plan.complete


def test_error_server_fails_the_update() -> None:
    ws = [srv(f"{P}-node-0", "w0", "ERROR")]
    plan = upd([MASTER, worker(1)], ws, {}, set())
    assert [s.id for s in plan.failed] == ["w0"] and not plan.complete


def test_servers_without_group_metadata_are_default_groups() -> None:
    legacy = model.ServerView(id="x", name=f"{P}-node-0", status="ACTIVE", metadata={"cove_cluster_id": "c"})
    assert nodeplan.group_of(legacy) == "default-worker"
    legacy_m = model.ServerView(id="y", name=f"{P}-master-0", status="ACTIVE", metadata={"cove_cluster_id": "c"})
    assert nodeplan.group_of(legacy_m) == "default-master"


def test_a_create_is_an_update_from_zero_nodes() -> None:
    masters = nodeplan.GroupSpec(name="default-master", role="master", node_count=3, is_default=True, image="img1")
    plan = nodeplan.plan_update(P, [masters, worker(2)], [], {}, set())
    assert [(n.name, n.role) for _, n in plan.to_create] == [
        (f"{P}-master-0", "master"), (f"{P}-master-1", "master"), (f"{P}-master-2", "master"),
        (f"{P}-node-0", "worker"), (f"{P}-node-1", "worker")], "every node at once: masters do not hold workers back"
    assert not plan.complete
    ms = [srv(f"{P}-master-{i}", f"m{i}", role="master") for i in range(3)]
    ws = [srv(f"{P}-node-{i}", f"w{i}") for i in range(2)]
    plan = nodeplan.plan_update(P, [masters, worker(2)], ms + ws, {}, set())
    assert plan.complete and {s.id for s in plan.became_active} == {"m0", "m1", "m2", "w0", "w1"}
    building = [srv(f"{P}-master-1", "m1", "BUILD", role="master"), *ms[::2], *ws]
    assert not nodeplan.plan_update(P, [masters, worker(2)], building, {}, set()).complete


def test_masters_are_created_never_removed_and_their_failure_fails_the_plan() -> None:
    one = nodeplan.GroupSpec(name="default-master", role="master", node_count=1, is_default=True, image="img1")
    ms = [srv(f"{P}-master-{i}", f"m{i}", role="master") for i in range(2)]
    plan = nodeplan.plan_update(P, [one, worker(0)], ms, known(*ms), set())
    assert not plan.to_delete and not plan.to_create and plan.complete
    failed = [srv(f"{P}-master-0", "m0", "ERROR", role="master")]
    plan = nodeplan.plan_update(P, [one, worker(0)], failed, {}, set())
    assert [s.id for s in plan.failed] == ["m0"] and not plan.to_create and not plan.complete


def test_two_servers_of_one_name_never_make_a_third() -> None:
    """A crash between a create call and its record can leave a duplicate name: the plan keeps one, creates none."""
    twins = [srv(f"{P}-node-0", "w0"), srv(f"{P}-node-0", "w0b")]
    plan = upd([MASTER, worker(1)], twins, known(*twins), set())
    assert not plan.to_create and len(plan.to_delete) == 1
