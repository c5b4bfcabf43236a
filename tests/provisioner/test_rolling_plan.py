"""The planner's rolls (issue 13), pure: masters first and one at a time through a surge master that must be in
the load balancer's pool before an old one is retired; a single master without a load balancer replaced under its
own name once gone; workers only after the masters; a same-version roll (roll generation) replaces every node; a
node a failed operation reported (ERROR or never ACTIVE) is replaced by the retry."""

from __future__ import annotations

from services.provisioner import model, nodeplan

P = "c-abcdef12"


def srv(name: str, sid: str, status: str = "ACTIVE", role: str = "worker", roll: int = 0) -> model.ServerView:
    meta = {"cove_cluster_id": "c", "cove_role": role, "cove_image": "img1", "cove_roll": str(roll)}
    return model.ServerView(id=sid, name=name, status=status, metadata=meta)


def known(*servers: model.ServerView, status: str = model.NODE_ACTIVE) -> dict[str, model.KnownNode]:
    return {s.id: model.KnownNode(s.id, s.name, s.role, status) for s in servers}


def masters(count: int, roll: int = 0) -> nodeplan.GroupSpec:
    return nodeplan.GroupSpec(name="default-master", role="master", node_count=count, is_default=True, image="img1",
                              roll=roll)


def workers(count: int, roll: int = 0) -> nodeplan.GroupSpec:
    return nodeplan.GroupSpec(name="default-worker", role="worker", node_count=count, is_default=True, image="img1",
                              roll=roll)


M = [srv(f"{P}-master-{i}", f"m{i}", role="master") for i in range(3)]
W = [srv(f"{P}-node-{i}", f"w{i}") for i in range(3)]


def test_a_roll_boots_one_surge_master_first_and_leaves_workers_alone() -> None:
    plan = nodeplan.plan_update(P, [masters(3, roll=1), workers(3, roll=1)], [*M, *W], known(*M, *W), set(),
                                max_batch_size=3, pool=frozenset())
    assert [n.name for _, n in plan.to_create] == [f"{P}-master-3"]
    assert not plan.to_delete and not plan.retire and not plan.complete


def test_the_old_master_is_retired_only_once_the_new_one_is_in_the_pool() -> None:
    new = srv(f"{P}-master-3", "m3", role="master", roll=1)
    servers, recorded = [*M, new, *W], known(*M, new, *W)
    waiting = nodeplan.plan_update(P, [masters(3, roll=1), workers(3, roll=1)], servers, recorded, set(),
                                   pool=frozenset({"m0", "m1", "m2"}))
    assert not waiting.retire and not waiting.to_delete and not waiting.to_create
    ready = nodeplan.plan_update(P, [masters(3, roll=1), workers(3, roll=1)], servers, recorded, set(),
                                 pool=frozenset({"m0", "m1", "m2", "m3"}))
    assert [s.id for s in ready.retire] == ["m0"] and not ready.to_delete and not ready.to_create


def test_no_new_master_while_one_is_still_building_or_going() -> None:
    building = srv(f"{P}-master-3", "m3", status="BUILD", role="master", roll=1)
    plan = nodeplan.plan_update(P, [masters(3, roll=1), workers(3)], [*M, building, *W],
                                known(*M, building, *W), set(), pool=frozenset())
    assert not plan.to_create and not plan.retire
    new = srv(f"{P}-master-3", "m3", role="master", roll=1)
    going = nodeplan.plan_update(P, [masters(3, roll=1), workers(3)], [*M, new, *W], known(*M, new, *W), {"m0"},
                                 pool=frozenset())
    assert not going.to_create and not going.retire and not going.to_delete


def test_workers_roll_in_batches_after_every_master() -> None:
    rolled = [srv(f"{P}-master-{i}", f"n{i}", role="master", roll=1) for i in range(3, 6)]
    plan = nodeplan.plan_update(P, [masters(3, roll=1), workers(3, roll=1)], [*rolled, *W], known(*rolled, *W),
                                set(), max_batch_size=2, pool=frozenset())
    assert [s.id for s in plan.to_delete] == ["w0", "w1"]
    assert len(plan.to_create) == 2 and all(n.role == model.WORKER for _, n in plan.to_create)


def test_a_single_master_without_load_balancer_is_replaced_under_its_own_name() -> None:
    m0 = M[0]
    plan = nodeplan.plan_update(P, [masters(1, roll=1), workers(1)], [m0, W[0]], known(m0, W[0]), set(), pool=None)
    assert [s.id for s in plan.to_delete] == ["m0"] and not plan.to_create
    going = nodeplan.plan_update(P, [masters(1, roll=1), workers(1)], [m0, W[0]], known(m0, W[0]), {"m0"}, pool=None)
    assert not going.to_create  # its name and port come free only when it is gone
    gone = nodeplan.plan_update(P, [masters(1, roll=1), workers(1)], [W[0]], known(W[0]), set(), pool=None)
    assert [n.name for _, n in gone.to_create] == [f"{P}-master-0"]


def test_up_to_date_nodes_complete() -> None:
    ms = [srv(f"{P}-master-{i}", f"m{i}", role="master", roll=2) for i in range(3)]
    ws = [srv(f"{P}-node-{i}", f"w{i}", roll=2) for i in range(3)]
    plan = nodeplan.plan_update(P, [masters(3, roll=2), workers(3, roll=2)], [*ms, *ws], known(*ms, *ws), set(),
                                pool=frozenset())
    assert plan.complete


def test_a_retry_replaces_nodes_a_failed_operation_reported() -> None:
    stuck, errored = srv(f"{P}-node-1", "w1", status="BUILD"), srv(f"{P}-node-2", "w2", status="ERROR")
    recorded = {**known(M[0], W[0]), **known(stuck, errored, status=model.NODE_FAILED)}
    plan = nodeplan.plan_update(P, [masters(1), workers(3)], [M[0], W[0], stuck, errored], recorded, set())
    assert sorted(s.id for s in plan.to_delete) == ["w1", "w2"]
    assert not plan.failed  # already reported: not a new failure of this update
