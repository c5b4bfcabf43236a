"""The cluster-scale benchmark's lower bound and cloud configuration, with hand-computed cases (no stack)."""

from __future__ import annotations

import argparse

import msgspec
import pytest

from benchmarks.cluster_scale import (
    Resources,
    TimingModel,
    benchmark_config,
    lower_bound,
    parse_coes,
    parse_sizes,
    resources_from_ledger,
    server_timeline,
    size_plan,
)
from deploy.devcloud.config import CloudConfig, load_config

# factor 1 so the bounds read in model seconds: boot 60, volume 10, load balancer 60, child 5, 100 slots
MODEL = TimingModel(time_factor=1.0)


@pytest.mark.parametrize(("servers", "waves"), [
    (1, 1), (2, 1), (16, 1), (100, 1), (101, 2), (128, 2), (200, 2), (512, 6), (1000, 10), (1001, 11),
])
def test_servers_boot_in_waves_of_the_build_slots(servers: int, waves: int) -> None:
    assert lower_bound(MODEL, Resources(servers=servers)) == waves * 60


def test_no_servers_take_no_time() -> None:
    assert lower_bound(MODEL, Resources(servers=0)) == 0


def test_the_time_factor_scales_the_delays_but_not_the_slots() -> None:
    fast = TimingModel(time_factor=0.05, max_concurrent_builds=10)
    assert lower_bound(fast, Resources(servers=25)) == pytest.approx(3 * 60 * 0.05)  # 9 s: 3 waves of 3 s


def test_boot_volumes_come_before_the_boot() -> None:
    # every server waits for its volume (10) then boots in 2 waves (120); the attach (5) overlaps the boot
    assert lower_bound(MODEL, Resources(servers=150, boot_volumes=150)) == 10 + 120
    # only 50 of 150 boot from a volume: they fit in one wave after the volume, the slots need 2 waves anyway
    assert lower_bound(MODEL, Resources(servers=150, boot_volumes=50)) == max(120, 10 + 60)


def test_a_volume_slower_than_the_boot_bounds_by_its_attach() -> None:
    slow_volume = TimingModel(time_factor=1.0, boot_seconds=4.0, volume_seconds=20.0)
    # boot volume: 20 + 4 = 24 for the server, 20 + 10 = 30 for the attach that runs alongside the boot
    assert lower_bound(slow_volume, Resources(servers=3, boot_volumes=3)) == 30
    # data volume: available at 20, server ACTIVE at 4, attach 10 after both
    assert lower_bound(slow_volume, Resources(servers=3, data_volumes=3)) == 30


def test_data_volumes_are_attached_after_the_boot() -> None:
    # 1000 servers ACTIVE after 10 waves (600), every one then gets its volume attached (5)
    assert lower_bound(MODEL, Resources(servers=1000, data_volumes=1000)) == 605
    # 100 data volumes can go to the first wave's servers: 60 + 5, below the 600 of the boots
    assert lower_bound(MODEL, Resources(servers=1000, data_volumes=100)) == 600


def test_load_balancer_children_are_sequential_and_parallel_with_the_servers() -> None:
    # 60 for the load balancer, then listener, pool, 3 members, monitor one after another: 6 x 5 = 30
    lb = Resources(servers=3, load_balancers=1, load_balancer_children=6)
    assert lower_bound(MODEL, lb) == 90  # longer than one wave of boots (60)
    # with 200 servers the boots (2 waves, 120) are the longer path
    assert lower_bound(MODEL, Resources(servers=200, load_balancers=1, load_balancer_children=6)) == 120
    # two load balancers with 7 children between them: the busier has at least 4
    assert lower_bound(MODEL, Resources(servers=3, load_balancers=2, load_balancer_children=7)) == 60 + 4 * 5
    # a load balancer without children
    assert lower_bound(MODEL, Resources(servers=1, load_balancers=1)) == 60


def test_resources_are_read_from_the_ledger() -> None:
    records = {
        "server": [{"disk_gb": 1}, {"disk_gb": 0}, {"disk_gb": 1}],
        "volume": [{}, {}],
        "load_balancer": [{}],
        "listener": [{}], "pool": [{}], "member": [{}, {}, {}], "health_monitor": [{}],
    }
    assert resources_from_ledger(records) == Resources(
        servers=3, boot_volumes=1, data_volumes=1, load_balancers=1, load_balancer_children=6)
    assert resources_from_ledger({"server": [{"disk_gb": 1}] * 4}) == Resources(servers=4)


def test_the_server_timeline_is_relative_to_the_202() -> None:
    servers = [
        {"created_at": "2026-12-05T10:00:00.100000Z", "events": [
            {"at": "2026-12-05T10:00:00.100000Z", "status": "BUILD"},
            {"at": "2026-12-05T10:00:03.100000Z", "status": "ACTIVE"}]},
        {"created_at": "2026-12-05T10:00:00.400000Z", "events": [
            {"at": "2026-12-05T10:00:03.500000Z", "status": "ACTIVE"}]},
    ]
    origin = 1796464800.0  # 2026-12-05T10:00:00Z
    assert server_timeline(servers, origin) == {"first_created": 0.1, "last_created": 0.4, "last_active": 3.5}
    assert server_timeline([], origin) == {}


def test_the_benchmark_cloud_is_the_default_with_room_and_the_model() -> None:
    model = TimingModel()
    raw = benchmark_config(model)
    config = load_config()
    cloud = msgspec.convert(raw, CloudConfig)
    assert cloud.timing.boot_seconds.dist == "fixed" and cloud.timing.boot_seconds.value == 60.0
    assert cloud.timing.time_factor == 0.05 and cloud.timing.max_concurrent_builds == 100
    assert sum(h.count * h.vcpus for h in cloud.hypervisors) >= 1000  # m1.tiny: one vCPU each
    assert cloud.quotas.projects["demo"]["compute"]["instances"] == -1
    assert cloud.quotas.projects["demo"]["network"]["port"] == -1
    assert cloud.users == config.users and cloud.flavors == config.flavors  # everything else is the default


def test_sizes() -> None:
    assert parse_sizes("2,16") == [2, 16]
    with pytest.raises(argparse.ArgumentTypeError):
        parse_sizes("0")


def test_every_coe_is_measured_kubernetes_at_every_size() -> None:
    plan = size_plan(["kubernetes", "swarm-mode", "mesos"], None)
    assert [s for c, s in plan if c == "kubernetes"] == [2, 16, 128, 512, 1000]
    assert [c for c, _ in plan if c != "kubernetes"] == ["swarm-mode", "swarm-mode", "mesos", "mesos"]
    assert size_plan(["mesos"], [2]) == [("mesos", 2)]
    assert parse_coes("swarm-mode,mesos") == ["swarm-mode", "mesos"]
    with pytest.raises(argparse.ArgumentTypeError):
        parse_coes("dcos")
