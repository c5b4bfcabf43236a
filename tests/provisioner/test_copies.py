"""Two provisioner copies on one store and one durable consumer (issue 16, docs/adr/0011), as processes against real
NATS, PostgreSQL and the devcloud: clusters divided between them, each reconciled by one copy at a time (every
event carries its lease's token, and a cluster's tokens never step back to an older holder), none built twice;
a SIGKILLed copy's clusters, and the trust reaper, handed to the other within seconds; a paused holder whose lease
was taken over has its publish refused by the fencing check and stops."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats.errors
import openstack
import pytest

from deploy.local.stack import LOCAL_SUBNET_CIDR
from proto import streams, subjects
from proto.envelope import decode, new_envelope
from proto.events import NodeBecameActive
from services.provisioner.loop import Reconciler, lease_key
from services.provisioner.store import ClusterRow
from services.provisioner.tracking import AppliedTracker
from services.runtime.bus import Bus, ConcurrencyConflict
from services.runtime.lease import LEASE_HEADER, LeaseLost, Leases, LeaseSettings, publish_fenced
from tests.conftest import Devcloud, drop_database, free_port, fresh_database, wait_for
from tests.provisioner.test_provisioner import (
    Cloud,
    Provisioner,
    bus,
    prefix_of,
    request_cluster,
    request_delete,
)

pytestmark = pytest.mark.integration

TTL = 2.0
"""The copies' lease TTL (COVE_LEASE_TTL): a dead copy's work waits at most this long, plus an adoption period."""


@pytest.fixture(scope="module")
def cloud(devcloud: Devcloud) -> Iterator[Cloud]:
    demo = openstack.connect(cloud="cove-demo")
    admin = openstack.connect(cloud="cove-admin")
    cove = admin.identity.find_user("cove", ignore_missing=False)
    yield Cloud(devcloud, demo, admin, cove.id, demo.current_user_id, demo.current_project_id)
    demo.close()
    admin.close()


@pytest.fixture
def roomy_network_quota(cloud: Cloud) -> Iterator[None]:
    """The demo project's Neutron quota without limits for the test (the default allows 10 routers; other tests
    of the session share the project), restored after."""
    keys = ("routers", "networks", "subnets", "ports", "security_groups", "security_group_rules", "floating_ips")
    before = cloud.admin.network.get_quota(cloud.demo_project_id)
    cloud.admin.network.update_quota(cloud.demo_project_id, **dict.fromkeys(keys, -1))
    yield
    cloud.admin.network.update_quota(cloud.demo_project_id, **{k: getattr(before, k) for k in keys})


__all__ = ["bus"]  # test_provisioner's bus on this module's NATS


class Copies:
    def __init__(self, a: Provisioner, b: Provisioner) -> None:
        self.a, self.b = a, b
        self.made: list[Any] = []
        """Every cluster requested through ``create_many``: deleted when the test ends (the project's quota is the
        other tests' too)."""

    @property
    def both(self) -> tuple[Provisioner, Provisioner]:
        return self.a, self.b


@contextlib.asynccontextmanager
async def running_copies(nats_url: str, pg_admin_url: str, devcloud: Devcloud, tmp_path: Path,
                         extra_env: dict[str, str] | None = None) -> AsyncIterator[Copies]:
    """Two provisioner processes, copy-a then copy-b, sharing one store and one durable consumer; at the end the
    clusters the test made are deleted (paused copies continued first) and the store dropped."""
    db_url = await fresh_database(pg_admin_url)
    durable = f"prov_{uuid.uuid4().hex[:8]}"
    made = []
    for name in ("a", "b"):
        env = dict(os.environ)
        env.update({
            "COVE_NATS_URL": nats_url, "COVE_DATABASE_URL": db_url, "COVE_HTTP_PORT": str(free_port()),
            "COVE_AUTH_URL": f"{devcloud.url}/identity", "COVE_PROVISIONER_DURABLE": durable,
            "COVE_PROVISIONER_POLL_INTERVAL": "0.1", "COVE_HEARTBEAT_INTERVAL": "5", "PYTHONUNBUFFERED": "1",
            "COVE_PROVISIONER_TRUST_GRACE": "1", "COVE_PROVISIONER_TRUST_HOLD": "1",
            "COVE_PROVISIONER_SUBNET_CIDR": LOCAL_SUBNET_CIDR, "COVE_LEASE_TTL": str(TTL),
            "COVE_PROVISIONER_COPY_ID": f"copy-{name}", **(extra_env or {}),
        })
        made.append(Provisioner(env, tmp_path / f"provisioner-{name}.log"))
    for p in made:
        p.start()
        await wait_for(lambda: '"reconciler_started"' in p.log_file.read_text(errors="replace"),  # noqa: B023
                       timeout=60, message=f"{p.env['COVE_PROVISIONER_COPY_ID']} started")
    both = Copies(made[0], made[1])
    try:
        yield both
    finally:
        alive = [p for p in made if p.proc is not None and p.proc.poll() is None]
        for p in alive:
            with_signal(p, signal.SIGCONT)
        if both.made and alive:
            await delete_all(nats_url, both.made)
        for p in made:
            p.stop()
        await drop_database(pg_admin_url, db_url)


@pytest.fixture
async def copies(nats_url: str, pg_admin_url: str, devcloud: Devcloud, tmp_path: Path,
                 certs: object, roomy_network_quota: None) -> AsyncIterator[Copies]:
    async with running_copies(nats_url, pg_admin_url, devcloud, tmp_path) as both:
        yield both


async def delete_all(nats_url: str, reqs: list[Any]) -> None:
    """Delete the clusters and wait until every one is gone."""
    b = await Bus.connect(nats_url, name="test-copies-cleanup")
    try:
        ids = {r.uuid for r in reqs}
        deleted = {e.cluster_id for e, _ in await stored_events(b) if e.type == "ClusterDeleteCompleted"}
        for req in reqs:
            if req.uuid not in deleted:
                await request_delete(b, req)

        async def gone() -> bool:
            return ids <= {e.cluster_id for e, _ in await stored_events(b) if e.type == "ClusterDeleteCompleted"}

        await wait_for(gone, timeout=120, interval=1.0, message="the test's clusters deleted")
    finally:
        await b.close()


def with_signal(p: Provisioner, sig: signal.Signals) -> None:
    assert p.proc is not None
    p.proc.send_signal(sig)


def log_lines(p: Provisioner, event: str) -> list[dict[str, Any]]:
    out = []
    for line in p.log_file.read_text(errors="replace").splitlines():
        if f'"{event}"' in line:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


async def stored_events(bus: Bus) -> list[tuple[Any, str | None]]:
    """Every provisioner event in the stream with its Cove-Lease header, in stream order."""
    sub = await bus.js.subscribe(subjects.producer_events("provisioner", "cluster"), ordered_consumer=True)
    found = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except (TimeoutError, nats.errors.TimeoutError):  # nothing more
                return found
            found.append((decode(msg.data), (msg.headers or {}).get(LEASE_HEADER)))
    finally:
        await sub.unsubscribe()


def epoch(token: str | None) -> int:
    assert token is not None, "an event published without a lease token"
    return int(token.rsplit("@", 1)[1])


def one_holder_at_a_time(events: list[tuple[Any, str | None]], clusters: set[str]) -> dict[str, list[int]]:
    """Per cluster, the epochs of the leases its events were published under, in stream order; asserts they never
    step back (an older holder's write after a newer one's) and name the cluster's own lease."""
    epochs: dict[str, list[int]] = defaultdict(list)
    for env, token in events:
        if env.cluster_id not in clusters or env.type == "ClusterTrustDeleted":
            continue
        assert token is not None and token.startswith(lease_key(env.cluster_id) + "@"), (env.type, token)
        epochs[env.cluster_id].append(epoch(token))
    for cid, seen in epochs.items():
        assert seen == sorted(seen), f"{cid}: an older holder wrote after a newer one: {seen}"
    return epochs


async def create_many(bus: Bus, cloud: Cloud, copies: Copies, n: int, name: str, workers: int = 1) -> list[Any]:
    trust = cloud.trust()
    for i in range(n):
        copies.made.append(await request_cluster(bus, cloud, f"{name}{i:02d}", masters=1, workers=workers,
                                                 trust_id=trust))
    return copies.made[-n:]


async def completed(bus: Bus, ids: set[str], timeout: float) -> list[tuple[Any, str | None]]:
    async def done() -> list[tuple[Any, str | None]] | None:
        events = await stored_events(bus)
        finished = {e.cluster_id for e, _ in events if e.type in ("ClusterCreateCompleted", "ClusterCreateFailed")}
        return events if ids <= finished else None

    return await wait_for(done, timeout=timeout, interval=1.0, message="every cluster's create ended")


def no_duplicate_servers(cloud: Cloud, reqs: list[Any], workers: int = 1) -> None:
    admin = cloud.admin_call("GET", f"/admin/ledger?kind=server&project_id={cloud.demo_project_id}")["records"]
    for req in reqs:
        names = [r["name"] for r in admin if str(r["name"]).startswith(prefix_of(req) + "-")]
        assert len(names) == 1 + workers and len(set(names)) == len(names), (req.name, names)


async def test_two_copies_divide_twenty_clusters_each_built_once_by_one_holder_at_a_time(
    bus: Bus, cloud: Cloud, copies: Copies
) -> None:
    reqs = await create_many(bus, cloud, copies, 20, "cp")
    ids = {r.uuid for r in reqs}
    events = await completed(bus, ids, timeout=240)
    ours = [(e, t) for e, t in events if e.cluster_id in ids]
    assert Counter(e.type for e, _ in ours)["ClusterCreateCompleted"] == 20, Counter(e.type for e, _ in ours)
    one_holder_at_a_time(ours, ids)
    no_duplicate_servers(cloud, reqs)
    # both copies built some: each emitted events about clusters the other did not touch in the meantime
    by_copy = {p.env["COVE_PROVISIONER_COPY_ID"]: {d["cluster_id"] for d in log_lines(p, "event_emitted")
                                                    if d.get("cluster_id") in ids} for p in copies.both}
    assert all(by_copy.values()), f"one copy built nothing: { {k: len(v) for k, v in by_copy.items()} }"
    assert by_copy["copy-a"] | by_copy["copy-b"] == ids
    # the trust reaper ran in one copy only: one of them leads it, the other never did
    leaders = [p for p in copies.both if any(d.get("key") == "provisioner.singleton.trust-reaper"
                                              for d in log_lines(p, "singleton_leading"))]
    assert len(leaders) == 1, [p.env["COVE_PROVISIONER_COPY_ID"] for p in leaders]
    # the watch lists the cloud in one copy; every cluster gets its first health, whichever copy holds it
    watchers = [p for p in copies.both if any(d.get("key") == "provisioner.singleton.watch"
                                              for d in log_lines(p, "singleton_leading"))]
    assert len(watchers) == 1, [p.env["COVE_PROVISIONER_COPY_ID"] for p in watchers]

    async def every_health() -> bool:
        found = await stored_events(bus)
        return {e.cluster_id for e, _ in found if e.type == "ClusterHealthChanged"} >= ids

    await wait_for(every_health, timeout=60, interval=1.0, message="every cluster's first health")
    healthy_in = {p.env["COVE_PROVISIONER_COPY_ID"] for p in copies.both
                  if any(d.get("event_type") == "ClusterHealthChanged" for d in log_lines(p, "event_emitted"))}
    print(f"copies: clusters per copy {({k: len(v) for k, v in by_copy.items()})}, watch listed by "
          f"{watchers[0].env['COVE_PROVISIONER_COPY_ID']}, health passes published by {sorted(healthy_in)}")
    # deleting clusters: their shared trust is deleted once, by the leader, after the last of them
    for req in reqs:
        await request_delete(bus, req)

    async def trust_deleted() -> bool:
        found = await stored_events(bus)
        return sum(1 for e, _ in found if e.type == "ClusterTrustDeleted" and e.cluster_id in ids) >= 1

    await wait_for(trust_deleted, timeout=120, interval=1.0, message="the shared trust deleted")
    found = await stored_events(bus)
    gone = Counter(e.type for e, _ in found if e.cluster_id in ids)
    assert gone["ClusterDeleteCompleted"] == 20 and gone["ClusterTrustDeleted"] == 1, gone
    assert cloud.trust_status(reqs[0].trust_id) == 404
    follower = next(p for p in copies.both if p is not leaders[0])
    assert log_lines(follower, "trust_deleted") == [] and len(log_lines(leaders[0], "trust_deleted")) == 1


async def test_a_sigkilled_copys_clusters_and_the_trust_reaper_are_taken_over_within_seconds(
    bus: Bus, cloud: Cloud, copies: Copies
) -> None:
    # boots take ~3-8 s: the kill must come while the killed copy still builds (at 0.3, 1-2.5 s, a loaded machine
    # once saw its clusters complete before the kill)
    cloud.admin_call("PUT", "/admin/timing", json={"time_factor": 1.0})
    try:
        reqs = await create_many(bus, cloud, copies, 8, "ck", workers=2)
        ids = {r.uuid for r in reqs}

        async def both_building() -> bool:
            return all({d.get("cluster_id") for d in log_lines(p, "event_emitted")} & ids for p in copies.both)

        await wait_for(both_building, timeout=60, interval=0.1, message="both copies building")
        # kill the copy leading the trust reaper (so the reaper has to move too)
        victim = next((p for p in copies.both if any(d.get("key") == "provisioner.singleton.trust-reaper"
                                                     for d in log_lines(p, "singleton_leading"))), copies.a)
        survivor = copies.b if victim is copies.a else copies.a
        victim.kill()
        killed_at = time.monotonic()
        held = {d["cluster_id"] for d in log_lines(victim, "event_emitted")} & ids
        at_kill = await stored_events(bus)
        events = await completed(bus, ids, timeout=180)
        finished_at = time.monotonic()
    finally:
        cloud.admin_call("PUT", "/admin/timing", json={"time_factor": 0.01})
    ours = [(e, t) for e, t in events if e.cluster_id in ids]
    assert Counter(e.type for e, _ in ours)["ClusterCreateCompleted"] == 8
    epochs = one_holder_at_a_time(ours, ids)
    no_duplicate_servers(cloud, reqs, workers=2)
    done_at_kill = {e.cluster_id for e, _ in at_kill if e.type == "ClusterCreateCompleted"}
    unfinished = held - done_at_kill
    assert unfinished, "the kill came after the killed copy's clusters were complete"
    adopted = {d["cluster_id"] for d in log_lines(survivor, "event_emitted")} & unfinished
    assert adopted == unfinished, f"the survivor did not finish {unfinished - adopted}"
    for cid in unfinished:
        assert len(set(epochs[cid])) >= 2, f"{cid}: no new lease after the kill: {epochs[cid]}"
    takeover = [d for d in log_lines(survivor, "singleton_leading")
                if d.get("key") == "provisioner.singleton.trust-reaper"]
    assert takeover, "the trust reaper did not move to the survivor"
    print(f"copies: killed the reaper's copy holding {len(unfinished)} unfinished clusters; the survivor finished "
          f"them {finished_at - killed_at:.1f}s after the kill")


async def test_a_paused_holder_whose_lease_was_taken_over_is_refused_and_stops(
    bus: Bus, cloud: Cloud, copies: Copies
) -> None:
    cloud.admin_call("PUT", "/admin/timing", json={"time_factor": 0.5})  # a build long enough to pause in
    try:
        reqs = await create_many(bus, cloud, copies, 4, "cz", workers=2)
        ids = {r.uuid for r in reqs}

        async def building_in_a() -> set[str]:
            return {d.get("cluster_id") for d in log_lines(copies.a, "event_emitted")} & ids

        paused_held = await wait_for(building_in_a, timeout=60, interval=0.05, message="copy a building")
        with_signal(copies.a, signal.SIGSTOP)
        before = len(copies.a.log_file.read_text(errors="replace").splitlines())
        # b adopts a's clusters once their leases expire and builds them to the end
        await completed(bus, ids, timeout=120)
        with_signal(copies.a, signal.SIGCONT)

        def stopped() -> list[dict[str, Any]]:
            lines = copies.a.log_file.read_text(errors="replace").splitlines()[before:]
            return [json.loads(x) for x in lines if '"reconcile_fenced"' in x or '"reconcile_lease_lost"' in x
                    or '"lease_lost"' in x]

        lost = await wait_for(stopped, timeout=20, message="copy a learns its leases are gone")
        assert {d.get("key", "").removeprefix("provisioner.cluster.") for d in lost if d.get("key")} & paused_held
        await asyncio.sleep(2 * TTL)  # what a would do next, it would do now
    finally:
        cloud.admin_call("PUT", "/admin/timing", json={"time_factor": 0.01})
    after = await stored_events(bus)
    ours = [(e, t) for e, t in after if e.cluster_id in ids]
    # b published under newer leases before a resumed: anything a published under its old ones now would step
    # back to an older epoch; a may take a cluster again later, but only under a new lease (a newer epoch)
    epochs = one_holder_at_a_time(ours, ids)
    old = {d["key"].removeprefix("provisioner.cluster."): d["epoch"] for d in lost
           if d.get("event") == "lease_lost" and d.get("key", "").startswith("provisioner.cluster.")}
    for cid, stale in old.items():
        # (a may have held a lease it had published nothing under yet: one adopted just before the pause)
        assert max(epochs[cid]) > stale, (cid, stale, epochs[cid])
    assert len({e.id for e, _ in ours}) == len(ours)
    no_duplicate_servers(cloud, reqs, workers=2)


async def test_the_fencing_check_refuses_a_taken_over_holders_publish_and_the_sequence_a_late_one(
    bus: Bus,
) -> None:
    """The mechanism on its own: holder a's lease expires while it is paused (it renews nothing), b takes it and
    publishes; a's publish is refused by the fencing check. And a publish that passed the check before b wrote
    (the window a pause between check and publish opens) is refused by the subject's expected sequence."""
    config = streams.leases_bucket().evolve(bucket=f"T_FENCE_{uuid.uuid4().hex[:8]}", ttl=1.0, replicas=1)
    settings = LeaseSettings(ttl=1.0)
    a = await Leases.open(bus.js, holder="a", settings=settings, config=config)
    b = await Leases.open(bus.js, holder="b", settings=settings, config=config)
    cid = str(uuid.uuid4())
    subject = subjects.cluster_events("provisioner", cid)

    def event(n: int) -> Any:
        payload = NodeBecameActive(cluster_id=cid, project_id="p", server_id=f"s{n}", node_name=f"n{n}",
                                   role="master", addresses=[])
        return new_envelope(payload, project_id="p", cluster_id=cid)

    try:
        la = await a.acquire(lease_key(cid))
        assert la is not None
        first = await publish_fenced(bus, a, la, subject, event(1), expected_last_subject_seq=0)
        await a.check(la)  # a passes its check ... then pauses past the TTL
        lb = await wait_for(lambda: b.acquire(lease_key(cid)), timeout=5, interval=0.1)
        assert lb.epoch > la.epoch
        second = await publish_fenced(bus, b, lb, subject, event(2), expected_last_subject_seq=first.seq)
        with pytest.raises(ConcurrencyConflict):  # a's late publish, already past its check
            await bus.publish(subject, event(3), expected_last_subject_seq=first.seq)
        with pytest.raises(LeaseLost, match="taken over"):  # a's next publish: the fencing check
            await publish_fenced(bus, a, la, subject, event(4), expected_last_subject_seq=second.seq)
        # the reconcile task's own path: a's emit under the lease it lost is refused the same way
        r = Reconciler(pool=None, bus=bus, cloud=None, tracker=AppliedTracker(), leases=a)  # type: ignore[arg-type]
        r._leases[cid] = la
        row = ClusterRow(uuid=cid, project_id="p", name="n", spec=None, trust_id=None, correlation_id=None,
                         ca_cert_pem=None, desired="present", delete_generation=0, delete_pending=False,
                         status="CREATE_IN_PROGRESS", status_reason=None, create_started_at=None,
                         last_seq=second.seq)
        with pytest.raises(LeaseLost):
            await r.emit(row, event(5).payload, "NodeBecameActive:s5")
        last = await bus.js.get_last_msg(subjects.EVENTS_STREAM, subject)
        assert last.seq == second.seq and (last.headers or {}).get(LEASE_HEADER) == lb.token
    finally:
        await bus.js.delete_key_value(config.bucket)
