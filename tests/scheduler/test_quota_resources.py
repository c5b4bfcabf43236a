"""Quotas beyond the cluster count and the fair build order, as plain decisions (no bus, no database)."""

from __future__ import annotations

from datetime import UTC, datetime

from proto.clusterspec import resolve_cluster, with_flavor_sizes
from proto.events import ClusterTemplate
from proto.quotas import default_limits, waiting_reason
from services.scheduler import admission
from services.scheduler.admission import Demand, Waiting


def template(**kw: object) -> ClusterTemplate:
    return ClusterTemplate(uuid="t", project_id="p", user_id="u", image_id="img", created_at=datetime.now(UTC),
                           **kw)  # type: ignore[arg-type]


def test_demand_comes_from_the_spec_flavor_sizes_and_volumes() -> None:
    spec = resolve_cluster(template(docker_volume_size=10, labels={"etcd_volume_size": "5"}), master_count=3,
                           node_count=4, flavor_id="big", master_flavor_id="small", master_lb_enabled=True,
                           flavor_sizes={"big": (8, 16384), "small": (2, 4096)})
    demand = admission.cluster_demand(admission.group_sizes(spec))
    assert demand == Demand(clusters=1, nodes=7, vcpus=3 * 2 + 4 * 8, ram_mb=3 * 4096 + 4 * 16384,
                            volume_gb=3 * (10 + 5) + 4 * 10)
    # the same sizes added after resolving (the API's path) give the same spec
    later = with_flavor_sizes(resolve_cluster(template(docker_volume_size=10, labels={"etcd_volume_size": "5"}),
                                              master_count=3, node_count=4, flavor_id="big",
                                              master_flavor_id="small", master_lb_enabled=True),
                              {"big": (8, 16384), "small": (2, 4096)})
    assert later == spec


def test_a_spec_without_sizes_counts_nodes_only() -> None:
    demand = admission.cluster_demand(admission.group_sizes(resolve_cluster(template(), node_count=2)))
    assert demand == Demand(clusters=1, nodes=3)


def test_every_resource_is_checked_and_named_with_what_is_asked_and_left() -> None:
    limits = {"Cluster": 20, "Node": -1, "vCPU": 16, "RAM": -1, "VolumeGB": 100}
    used = Demand(clusters=1, nodes=3, vcpus=12, volume_gb=0)
    assert admission.decide_all(used, Demand(1, 1, 4, 0, 0), limits).admitted  # exactly at the limit
    refused = admission.decide_all(used, Demand(1, 2, 8, 0, 0), limits)
    assert not refused.admitted and refused.resource == "vCPU"
    assert refused.reason == "Quota exceeded for vCPU: requested 8, 4 of 16 left."
    refused = admission.decide_all(Demand(), Demand(1, 1, 1, 0, 101), limits)
    assert refused.resource == "VolumeGB" and refused.reason == (
        "Quota exceeded for VolumeGB: requested 101 GB, 100 GB of 100 GB left.")
    # the cluster count keeps Magnum's exact words
    refused = admission.decide_all(Demand(clusters=20), Demand(clusters=1), limits)
    assert refused.resource == "Cluster" and refused.reason == admission.quota_exceeded_message(20)
    # -1 is unlimited
    assert admission.decide_all(Demand(), Demand(1, 10**6, 10**6, 10**9, 10**6),
                                {r: -1 for r in admission.RESOURCES}).admitted


def test_defaults_from_configuration() -> None:
    assert default_limits({}) == {"Cluster": 20, "Node": -1, "vCPU": -1, "RAM": -1, "VolumeGB": -1}
    assert default_limits({"COVE_DEFAULT_VCPU_QUOTA": "64", "COVE_DEFAULT_CLUSTER_QUOTA": "3"})["vCPU"] == 64


def test_fair_order_is_round_robin_between_projects() -> None:
    waiting = [Waiting(f"a{i}", "A", "default", i) for i in range(1, 31)] + [Waiting("b1", "B", "default", 31)]
    order = [w.cluster_id for w in admission.fair_order(waiting, {"A": 2})]
    assert order[0] == "b1"  # A has two building, B none: B's one goes first
    order = [w.cluster_id for w in admission.fair_order(waiting, {})]
    assert order.index("b1") == 1  # nobody building: A's oldest, then B's, then A's others
    assert [c for c in order if c.startswith("a")] == [f"a{i}" for i in range(1, 31)]  # each project's own FIFO
    three = [Waiting("a1", "A", "c", 1), Waiting("a2", "A", "c", 2), Waiting("b1", "B", "c", 3),
             Waiting("b2", "B", "c", 4), Waiting("c1", "C", "c", 5)]
    assert [w.cluster_id for w in admission.fair_order(three, {})] == ["a1", "b1", "c1", "a2", "b2"]


def test_waiting_reason() -> None:
    assert [waiting_reason(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 101)] == [
        f"Waiting to be built: {s} in line"
        for s in ("1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st")
    ]


def test_cloud_demand_and_check() -> None:
    from services.scheduler import cloudquota

    spec = resolve_cluster(template(docker_volume_size=10, master_lb_enabled=True,
                                    labels={"master_lb_floating_ip_enabled": "true"}),
                           master_count=3, node_count=2, flavor_sizes={"m1.small": (1, 2048)})
    asked = cloudquota.cloud_demand(spec)
    assert asked == {"instances": 5, "cores": 5, "ram": 5 * 2048, "volumes": 5, "gigabytes": 50,
                     "floatingip": 6, "port": 6, "network": 1, "security_group": 2}
    room = cloudquota.Room(left={**dict.fromkeys(cloudquota.CLOUD_RESOURCES), "cores": 8, "floatingip": 10},
                           limits={"cores": 20, "floatingip": 50})
    assert cloudquota.check(room, {}, asked) is None
    assert cloudquota.check(room, {"cores": 4}, asked) == (
        "cores", "Quota exceeded in the cloud for cores: requested 5, 4 of 20 left.")
    assert cloudquota.check(room, {"floatingip": 5}, asked) == (
        "floatingip", "Quota exceeded in the cloud for floatingip: requested 6, 5 of 50 left.")
    assert cloudquota.Room(left=dict.fromkeys(cloudquota.CLOUD_RESOURCES), limits={}).unlimited
