"""The load balancer and volume watch with two provisioner copies (issues 13/16, docs/adr/0009 and 0011): only the
copy that leads the watch lists Octavia and Cinder, and what it records reaches the copy that runs a cluster's
health pass. Without that, a pass in the other copy judges the cluster by its servers alone, and a load balancer in
ERROR never shows (or shows and is dropped again by the next pass there).

The pure part: what the leader sends is only what changed, and a copy that receives it keeps it and kicks the
cluster once, whatever the number of times it arrives. The processes: two copies against real NATS, PostgreSQL
and the devcloud; the cluster's lease is held in the name of the copy that does NOT lead the watch (as while that
copy's task runs), so the leader's kick is passed there and the pass that must show the fault runs there."""

from __future__ import annotations

import datetime
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats.js.errors
import pytest

from proto import subjects
from proto.envelope import new_envelope
from proto.events import ClusterAdmitted, ClusterCreateRequested, ClusterTemplate
from services.provisioner.cloud import CloudSettings
from services.provisioner.health import ResourceSeen, resource_problems
from services.provisioner.loop import lease_key
from services.provisioner.service import RESOURCES
from services.provisioner.watch import Watched, Watcher
from services.runtime.bus import Bus
from services.runtime.lease import Lease, Leases, LeaseSettings
from tests.conftest import Devcloud, wait_for
from tests.provisioner.test_copies import (
    TTL,
    Copies,
    cloud,
    log_lines,
    roomy_network_quota,
    running_copies,
    stored_events,
)
from tests.provisioner.test_provisioner import Cloud, Provisioner, bus, prefix_of

__all__ = ["bus", "cloud", "roomy_network_quota"]  # the fixtures, on this module's NATS and devcloud


async def _nothing_watched() -> dict[str, Watched]:
    return {}


def watcher(kicks: list[str]) -> Watcher:
    w = Watcher(cloud_settings=CloudSettings(auth_url="http://127.0.0.1:1/identity"), load_watched=_nothing_watched,
                kick=kicks.append)
    w.watched = {"c1": Watched("CREATE_COMPLETE")}
    return w


async def test_the_leader_sends_only_resource_changes_and_a_follower_keeps_them_once() -> None:
    sent: list[list[ResourceSeen]] = []

    async def publish(changes: list[ResourceSeen]) -> None:
        sent.append(changes)

    leader_kicks: list[str] = []
    leader = watcher(leader_kicks)
    leader.publish_resources = publish
    lb = ResourceSeen("load_balancer", "lb1", "k8s-lb", "c1", "ACTIVE", "ONLINE")
    vol = ResourceSeen("volume", "v1", "k8s-node-0-docker", "c1", "in-use", server_id="s1")
    assert leader.record_resources([lb], [vol], full_volumes=True) == 1
    assert await leader.share_resources() == 2
    assert leader.record_resources([lb], [vol], full_volumes=True) == 0  # listed again unchanged: nothing to send
    assert await leader.share_resources() == 0
    broken = ResourceSeen("load_balancer", "lb1", "k8s-lb", "c1", "ERROR", "OFFLINE")
    assert leader.record_resources([broken], [], full_volumes=True) == 1  # and the sweep found the volume gone
    assert await leader.share_resources() == 2
    assert [[(c.resource_id, c.status, c.gone) for c in message] for message in sent] == [
        [("lb1", "ACTIVE", False), ("v1", "in-use", False)], [("lb1", "ERROR", False), ("v1", "in-use", True)]]

    follower_kicks: list[str] = []
    follower = watcher(follower_kicks)
    follower.leading = False
    for message in sent:
        wire = RESOURCES.decode(msgspec.json.encode(message))  # as share_the_watch sends and decodes them
        assert wire == message
        assert follower.receive_resources(wire) == 1
        assert follower.receive_resources(wire) == 0  # the same message again: idempotent, no kick
    assert follower_kicks == ["c1", "c1"]
    assert dict(follower.resources_of("c1")) == dict(leader.resources_of("c1"))
    assert resource_problems(follower.resources_of("c1").values(), ["s1"]) == {
        "k8s-lb.status": "the load balancer is provisioning_status ERROR, operating_status OFFLINE",
        "k8s-node-0-docker.status": "the volume of server s1 is gone from the cloud",
    }
    with pytest.raises(msgspec.ValidationError):  # what share_the_watch logs and drops
        RESOURCES.decode(b'[{"kind": "load_balancer"}]')


# ------------------------------------------------------------------------------------------- two copies


@pytest.fixture
async def copies(nats_url: str, pg_admin_url: str, devcloud: Devcloud, tmp_path: Path,
                 certs: object, roomy_network_quota: None) -> AsyncIterator[Copies]:
    """test_copies' two copies, with the resource watch quick and the COE check off (its kicks, which the leader
    sends every interval, would run a pass in the leader and hide what this test is about)."""
    async with running_copies(nats_url, pg_admin_url, devcloud, tmp_path, {
        "COVE_PROVISIONER_WATCH_RESOURCES_INTERVAL": "0.5", "COVE_PROVISIONER_WATCH_VOLUME_SWEEP": "2",
        "COVE_PROVISIONER_API_CHECK_INTERVAL": "0",
    }) as both:
        yield both


async def request_lb_cluster(bus: Bus, cloud: Cloud) -> ClusterCreateRequested:
    """A cluster with a load balancer in front of its master (test_provisioner's request, master_lb_enabled)."""
    now = datetime.datetime.now(datetime.UTC)
    template = ClusterTemplate(
        uuid=str(uuid.uuid4()), name="k8s-lb", project_id=cloud.demo_project_id, user_id=cloud.demo_user_id,
        image_id="fedora-coreos", flavor_id="m1.small", master_flavor_id="m1.small", external_network_id="public",
        master_lb_enabled=True, floating_ip_enabled=False, created_at=now,
    )
    req = ClusterCreateRequested(
        uuid=str(uuid.uuid4()), name=f"wl{uuid.uuid4().hex[:4]}", project_id=cloud.demo_project_id,
        user_id=cloud.demo_user_id, template=template, master_count=1, node_count=1, trust_id=cloud.trust(),
        requested_at=now,
    )
    env = new_envelope(req, project_id=req.project_id, cluster_id=req.uuid)
    await bus.publish(subjects.cluster_events("api", req.uuid), env)
    admitted = ClusterAdmitted(uuid=req.uuid, project_id=req.project_id, master_count=1, node_count=1,
                               name=req.name)
    await bus.publish(subjects.cluster_events("scheduler", req.uuid),
                      new_envelope(admitted, project_id=req.project_id, cluster_id=req.uuid, causation=env))
    return req


def copy_name(p: Provisioner) -> str:
    return p.env["COVE_PROVISIONER_COPY_ID"]


async def hold_in_the_name_of(leases: Leases, cluster_id: str) -> Lease:
    """Take the cluster's lease while it is free, written in the name of ``leases.holder`` (another process's copy
    id), and keep renewing it: that copy takes it over at its next kick (as a copy restarted under its name does),
    and every other copy passes its kicks there. Never taken from a running task (``create`` only)."""
    key = lease_key(cluster_id)

    async def free() -> Lease | None:  # None: held (a running task's): asked again
        value = f"{leases.holder}:{uuid.uuid4().hex[:8]}".encode()
        sent = time.monotonic()
        try:
            revision = await leases.kv.create(key, value)
        except nats.js.errors.KeyWrongLastSequenceError:
            return None
        lease = Lease(key, value, revision, revision, sent)
        leases.held[key] = lease
        return lease

    lease: Lease | None = await wait_for(free, timeout=60, interval=0.2, message="the cluster's lease free")
    assert lease is not None
    return lease


async def health_reasons(bus: Bus, cluster_id: str) -> list[dict[str, str]]:
    return [dict(e.payload.health_status_reason) for e, _ in await stored_events(bus)
            if e.cluster_id == cluster_id and e.type == "ClusterHealthChanged"]


def health_emitted(p: Provisioner, cluster_id: str) -> int:
    return sum(1 for d in log_lines(p, "event_emitted")
               if d.get("cluster_id") == cluster_id and d.get("event_type") == "ClusterHealthChanged")


async def test_a_load_balancer_fault_shows_in_the_health_pass_of_the_copy_that_does_not_lead_the_watch(
    bus: Bus, cloud: Cloud, copies: Copies
) -> None:
    def watch_leaders() -> list[Provisioner]:
        return [p for p in copies.both if any(d.get("key") == "provisioner.singleton.watch"
                                              for d in log_lines(p, "singleton_leading"))]

    leaders: list[Provisioner] = await wait_for(watch_leaders, timeout=30, message="a copy leads the watch")
    [leader] = leaders
    follower = copies.b if leader is copies.a else copies.a
    req = await request_lb_cluster(bus, cloud)
    copies.made.append(req)
    cid = req.uuid

    async def first_health() -> list[dict[str, str]] | None:
        return await health_reasons(bus, cid) or None

    await wait_for(first_health, timeout=180, interval=1.0, message="the LB cluster built and its first health")
    lbs = [r for r in cloud.admin_call(
        "GET", f"/admin/ledger?kind=load_balancer&live=true&project_id={cloud.demo_project_id}")["records"]
        if str(r["name"]).startswith(prefix_of(req) + "-")]
    assert len(lbs) == 1, lbs
    lb = lbs[0]
    key = f"{lb['name']}.status"
    assert all(key not in r for r in await health_reasons(bus, cid))

    leases = await Leases.open(bus.js, holder=copy_name(follower), settings=LeaseSettings(ttl=TTL))
    leases.start()
    try:
        async def shown_by_the_follower(expect: bool) -> None:
            """The follower's pass publishes the health with (``expect``) or without the load balancer's entry."""
            before = health_emitted(follower, cid)

            async def shown() -> bool:
                reasons = await health_reasons(bus, cid)
                return bool(reasons) and (key in reasons[-1]) is expect and health_emitted(follower, cid) > before

            await wait_for(shown, timeout=90, interval=0.5,
                           message=f"the follower's health pass {'shows' if expect else 'clears'} the load balancer")

        # the amphora fails while the follower holds the cluster: the leader lists it, the follower shows it
        await hold_in_the_name_of(leases, cid)
        fault = {"name": lb["id"], "provisioning_status": "ERROR", "operating_status": "OFFLINE"}
        assert cloud.admin_call("POST", "/admin/faults/load_balancers", json=fault).get("id"), "no such LB"
        await shown_by_the_follower(True)
        assert (await health_reasons(bus, cid))[-1][key] == (
            "the load balancer is provisioning_status ERROR, operating_status OFFLINE")

        # Octavia repairs it, the follower holding the cluster again: its pass forgets it
        await hold_in_the_name_of(leases, cid)
        repaired = {"name": lb["id"], "provisioning_status": "ACTIVE", "operating_status": "ONLINE"}
        assert cloud.admin_call("POST", "/admin/faults/load_balancers", json=repaired).get("id"), "no such LB"
        await shown_by_the_follower(False)
    finally:
        await leases.stop()
    assert watch_leaders() == [leader], "the watch changed copies: the test proved nothing about the follower"
    assert [d for d in log_lines(follower, "watch_message_malformed")] == []
