"""Issue 13: deadlines and retries, against real NATS, PostgreSQL, the certs service and the devcloud, with the
provisioner as its own process.

* a create whose servers never become ACTIVE (the devcloud's time factor raised so a boot takes hours) reaches
  CREATE_FAILED at its ``create_timeout``, with a reason naming the servers it waited for; delete works from there;
* a resize whose new server never becomes ACTIVE reaches UPDATE_FAILED at COVE_PROVISIONER_UPDATE_TIMEOUT, also
  when the provisioner is killed and restarted meanwhile (the deadline counts from ClusterUpdateStarted's time);
  a new resize (the retry) then succeeds, and delete works from UPDATE_FAILED;
* a delete whose server deletes the cloud refuses reaches DELETE_FAILED at COVE_PROVISIONER_DELETE_TIMEOUT; a new
  delete (the retry) completes once the cloud accepts them, leaving nothing in the ledger.

``COVE_PROVISIONER_MINUTE_SECONDS`` makes a minute of these deadlines last MINUTE seconds here.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from deploy.local.stack import LOCAL_SUBNET_CIDR
from proto import subjects
from proto.envelope import Envelope, new_envelope
from proto.events import ClusterAdmitted, ClusterCreateRequested, ClusterTemplate, ClusterUpdateRequested
from services.runtime.bus import Bus
from tests.conftest import Devcloud, drop_database, free_port, fresh_database
from tests.provisioner.test_provisioner import (
    Cloud,
    ClusterEvents,
    Provisioner,
    bus,
    cloud,
    prefix_of,
    request_delete,
    until,
    watch,
)

pytestmark = pytest.mark.integration

MINUTE = 3.0
"""Seconds in a minute of the deadlines here (COVE_PROVISIONER_MINUTE_SECONDS)."""
SLOW = 1000.0
"""The devcloud's time factor that makes a boot (3-8 s of model time) take hours: a server that never becomes
ACTIVE while a test runs."""
FAST = 0.01


__all__ = ["bus", "cloud"]  # test_provisioner's fixtures: the session devcloud's users, a bus on this NATS


@pytest.fixture
async def provisioner(
    nats_url: str, pg_admin_url: str, devcloud: Devcloud, tmp_path: Path, certs: object
) -> AsyncIterator[Provisioner]:
    db_url = await fresh_database(pg_admin_url)
    env = dict(os.environ)
    env.update({
        "COVE_NATS_URL": nats_url, "COVE_DATABASE_URL": db_url, "COVE_HTTP_PORT": str(free_port()),
        "COVE_AUTH_URL": f"{devcloud.url}/identity", "COVE_PROVISIONER_DURABLE": f"prov_{uuid.uuid4().hex[:8]}",
        "COVE_PROVISIONER_POLL_INTERVAL": "0.1", "COVE_HEARTBEAT_INTERVAL": "5", "PYTHONUNBUFFERED": "1",
        "COVE_PROVISIONER_SUBNET_CIDR": LOCAL_SUBNET_CIDR,
        "COVE_PROVISIONER_MINUTE_SECONDS": str(MINUTE),
        "COVE_PROVISIONER_UPDATE_TIMEOUT": "1", "COVE_PROVISIONER_DELETE_TIMEOUT": "1",
    })
    p = Provisioner(env, tmp_path / "provisioner.log")
    p.start()
    try:
        yield p
    finally:
        p.stop()
        await drop_database(pg_admin_url, db_url)


@pytest.fixture
def timing(cloud: Cloud) -> Iterator[None]:
    """Leave the devcloud as fast and fault-free as the other tests expect it."""
    yield
    cloud.admin_call("PUT", "/admin/timing", json={"time_factor": FAST})
    cloud.admin.session.request(f"{cloud.devcloud.url}/admin/faults", "DELETE",
                                headers={"X-Auth-Token": cloud.admin.auth_token})


async def request_cluster(bus: Bus, cloud: Cloud, name: str, *, workers: int = 1,
                          create_timeout: int = 60) -> ClusterCreateRequested:
    now = datetime.datetime.now(datetime.UTC)
    template = ClusterTemplate(
        uuid=str(uuid.uuid4()), name="k8s", project_id=cloud.demo_project_id, user_id=cloud.demo_user_id,
        image_id="fedora-coreos", flavor_id="m1.small", master_flavor_id="m1.small", external_network_id="public",
        created_at=now,
    )
    req = ClusterCreateRequested(
        uuid=str(uuid.uuid4()), name=name, project_id=cloud.demo_project_id, user_id=cloud.demo_user_id,
        template=template, master_count=1, node_count=workers, trust_id=cloud.trust(), requested_at=now,
        create_timeout=create_timeout,
    )
    env = new_envelope(req, project_id=req.project_id, cluster_id=req.uuid)
    await bus.publish(subjects.cluster_events("api", req.uuid), env)
    admitted = ClusterAdmitted(uuid=req.uuid, project_id=req.project_id, master_count=1, node_count=workers,
                               name=name)
    await bus.publish(subjects.cluster_events("scheduler", req.uuid),
                      new_envelope(admitted, project_id=req.project_id, cluster_id=req.uuid, causation=env))
    return req


async def resize(bus: Bus, req: ClusterCreateRequested, node_count: int, previous: int) -> None:
    event = ClusterUpdateRequested(uuid=req.uuid, project_id=req.project_id, node_count=node_count,
                                   previous_node_count=previous)
    await bus.publish(subjects.cluster_events("api", req.uuid),
                      new_envelope(event, project_id=req.project_id, cluster_id=req.uuid))


def nth(events: ClusterEvents, type_: str, n: int) -> Envelope | None:
    found = [e for e in events.received if e.type == type_]
    return found[n - 1] if len(found) >= n else None


async def until_nth(events: ClusterEvents, type_: str, n: int, p: Provisioner, timeout: float = 60.0) -> Envelope:
    deadline = asyncio.get_running_loop().time() + timeout
    while (found := nth(events, type_, n)) is None:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no {type_} #{n}; got {events.types()}\nprovisioner log:\n{p.tail()}")
        await asyncio.sleep(0.05)
    return found


def elapsed(a: Envelope, b: Envelope) -> float:
    return (b.occurred_at - a.occurred_at).total_seconds()


async def test_a_create_whose_servers_never_become_active_fails_at_its_deadline_and_is_deleted(
    bus: Bus, cloud: Cloud, provisioner: Provisioner, timing: None
) -> None:
    cloud.admin_call("PUT", "/admin/timing", json={"time_factor": SLOW})
    req = await request_cluster(bus, cloud, "dl-create", workers=1, create_timeout=1)
    events, sub = await watch(bus, req.uuid)
    try:
        failed = await until(events, "ClusterCreateFailed", provisioner, timeout=60)
        started = events.first("ClusterCreateStarted")
        assert started is not None
        prefix = prefix_of(req)
        reason = failed.payload.status_reason
        assert reason.startswith("Timed out after 1 minutes (create_timeout) waiting for servers "), reason
        assert f"{prefix}-master-0" in reason and f"{prefix}-node-0" in reason and "to become ACTIVE" in reason
        assert elapsed(started, failed) >= MINUTE  # not before its deadline
        assert "NodeBecameActive" not in events.types()
        servers = await asyncio.to_thread(cloud.servers, prefix)
        assert servers and all(s.status == "BUILD" for s in servers)  # they really never became ACTIVE

        cloud.admin_call("PUT", "/admin/timing", json={"time_factor": FAST})
        await request_delete(bus, req)  # delete from CREATE_FAILED
        await until(events, "ClusterDeleteCompleted", provisioner)
        assert await asyncio.to_thread(cloud.live_records, prefix) == []
    finally:
        await sub.unsubscribe()


async def test_an_update_past_its_deadline_fails_across_a_restart_then_a_retry_and_a_delete_work(
    bus: Bus, cloud: Cloud, provisioner: Provisioner, timing: None
) -> None:
    req = await request_cluster(bus, cloud, "dl-update", workers=1)
    events, sub = await watch(bus, req.uuid)
    try:
        await until(events, "ClusterCreateCompleted", provisioner)
        prefix = prefix_of(req)
        cloud.admin_call("PUT", "/admin/timing", json={"time_factor": SLOW})
        await resize(bus, req, 2, 1)
        started = await until(events, "ClusterUpdateStarted", provisioner)
        # the new worker boots (for hours): the third NodeCreated (the master's and the first worker's came before)
        await until_nth(events, "NodeCreated", 3, provisioner)
        provisioner.kill()
        provisioner.start()  # a new process: no timer survives, only the event's time
        failed = await until(events, "ClusterUpdateFailed", provisioner, timeout=60)
        reason = failed.payload.status_reason
        assert reason.startswith("Timed out after 1 minutes (COVE_PROVISIONER_UPDATE_TIMEOUT) waiting for "), reason
        assert f"{prefix}-node-1" in reason and "to become ACTIVE" in reason, reason
        assert elapsed(started, failed) >= MINUTE
        assert "ClusterUpdateCompleted" not in events.types()

        # the retry from UPDATE_FAILED: a new resize, with a cloud that boots again
        cloud.admin_call("PUT", "/admin/timing", json={"time_factor": FAST})
        await resize(bus, req, 3, 2)
        done = await until(events, "ClusterUpdateCompleted", provisioner, timeout=60)
        assert done.payload.node_count == 3
        servers = await asyncio.to_thread(cloud.servers, prefix)
        workers = [s for s in servers if "-node-" in s.name]
        assert len(workers) == 3 and all(s.status == "ACTIVE" for s in workers), [(s.name, s.status) for s in servers]

        # UPDATE_FAILED again (a resize that never boots), then delete from there
        cloud.admin_call("PUT", "/admin/timing", json={"time_factor": SLOW})
        await resize(bus, req, 4, 3)
        await until_nth(events, "ClusterUpdateFailed", 2, provisioner)
        cloud.admin_call("PUT", "/admin/timing", json={"time_factor": FAST})
        await request_delete(bus, req)
        await until(events, "ClusterDeleteCompleted", provisioner)
        assert await asyncio.to_thread(cloud.live_records, prefix) == []
    finally:
        await sub.unsubscribe()


async def test_a_delete_past_its_deadline_fails_and_a_new_delete_completes(
    bus: Bus, cloud: Cloud, provisioner: Provisioner, timing: None
) -> None:
    req = await request_cluster(bus, cloud, "dl-delete", workers=1)
    events, sub = await watch(bus, req.uuid)
    try:
        await until(events, "ClusterCreateCompleted", provisioner)
        prefix = prefix_of(req)
        cloud.admin_call("POST", "/admin/faults/api", json={
            "service": "compute", "method": "DELETE", "path": "/servers/", "status": 503, "count": -1})
        await request_delete(bus, req)
        started = await until(events, "ClusterDeleteStarted", provisioner)
        failed = await until(events, "ClusterDeleteFailed", provisioner, timeout=60)
        reason = failed.payload.status_reason
        assert reason.startswith("Timed out after 1 minutes (COVE_PROVISIONER_DELETE_TIMEOUT) waiting for servers "), \
            reason
        assert f"{prefix}-master-0" in reason and reason.endswith("to be deleted"), reason
        assert elapsed(started, failed) >= MINUTE
        assert len(await asyncio.to_thread(cloud.servers, prefix)) == 2  # the cloud refused every delete

        cloud.admin.session.request(f"{cloud.devcloud.url}/admin/faults", "DELETE",
                                    headers={"X-Auth-Token": cloud.admin.auth_token})
        await request_delete(bus, req)  # the retry, from DELETE_FAILED
        await until(events, "ClusterDeleteCompleted", provisioner)
        assert events.types().count("ClusterDeleteStarted") == 2
        assert await asyncio.to_thread(cloud.live_records, prefix) == []
    finally:
        await sub.unsubscribe()
