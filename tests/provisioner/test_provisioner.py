"""The provisioner against real NATS (JetStream), PostgreSQL and the devcloud, run as its own process.

Events are published the way the API and certs services publish them; the provisioner's answers are read back
from its subject. Servers are counted and the ledger read through the devcloud's own APIs.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openstack
import pytest

from deploy.local.stack import LOCAL_SUBNET_CIDR
from proto import subjects
from proto.envelope import Envelope, decode, new_envelope
from proto.events import (
    ClusterAdmitted,
    ClusterCreateRequested,
    ClusterDeleteRequested,
    ClusterTemplate,
    ClusterTrustRotated,
    ClusterUpdateRequested,
    ClusterWithdrawn,
)
from services.runtime.bus import Bus
from tests.conftest import REPO_ROOT, Devcloud, drop_database, free_port, fresh_database, wait_for

pytestmark = pytest.mark.integration


@dataclass
class Provisioner:
    """``python -m services.provisioner`` as a child process (so a test can SIGKILL it)."""

    env: dict[str, str]
    log_file: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        self.starts += 1
        with open(self.log_file, "ab") as handle:
            handle.write(f"\n=== start {self.starts}\n".encode())
            handle.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.provisioner"], cwd=REPO_ROOT, env=self.env,
                stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def database_url(self) -> str:
        return self.env["COVE_DATABASE_URL"]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def tail(self) -> str:
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-40:])


@dataclass
class Cloud:
    devcloud: Devcloud
    demo: openstack.connection.Connection
    admin: openstack.connection.Connection
    cove_user_id: str
    demo_user_id: str
    demo_project_id: str

    def admin_call(self, method: str, path: str, **kw: Any) -> Any:
        resp = self.admin.session.request(
            f"{self.devcloud.url}{path}", method, headers={"X-Auth-Token": self.admin.auth_token}, **kw
        )
        return resp.json()

    def trust(self) -> str:
        trust = self.demo.identity.create_trust(
            trustor_user_id=self.demo_user_id, trustee_user_id=self.cove_user_id, project_id=self.demo_project_id,
            roles=[{"name": "member"}], impersonation=True,
        )
        return str(trust.id)

    def trust_status(self, trust_id: str) -> int:
        """HTTP status of ``GET /identity/v3/OS-TRUST/trusts/{id}`` as the cloud admin (200 exists, 404 gone)."""
        resp = self.admin.session.request(
            f"{self.devcloud.url}/identity/v3/OS-TRUST/trusts/{trust_id}", "GET",
            headers={"X-Auth-Token": self.admin.auth_token}, raise_exc=False,
        )
        return int(resp.status_code)

    def servers(self, prefix: str) -> list[Any]:
        return list(self.demo.compute.servers(details=True, name=f"^{prefix}-"))

    def live_records(self, prefix: str) -> list[dict[str, Any]]:
        records = self.admin_call("GET", f"/admin/ledger?live=true&project_id={self.demo_project_id}")["records"]
        return [r for r in records if str(r.get("name") or "").startswith(prefix)]

    def live_count(self, kind: str) -> int:
        return int(self.admin_call(
            "GET", f"/admin/ledger?live=true&kind={kind}&project_id={self.demo_project_id}")["count"])


@pytest.fixture(scope="module")
def cloud(devcloud: Devcloud) -> Iterator[Cloud]:
    demo = openstack.connect(cloud="cove-demo")
    admin = openstack.connect(cloud="cove-admin")
    cove = admin.identity.find_user("cove", ignore_missing=False)
    yield Cloud(devcloud, demo, admin, cove.id, demo.current_user_id, demo.current_project_id)
    demo.close()
    admin.close()


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    b = await Bus.connect(nats_url, name="test-provisioner")
    await b.ensure_streams()
    yield b
    await b.close()


TRUST_HOLD = 2.0
"""The provisioner's trust hold in these tests (COVE_PROVISIONER_TRUST_HOLD), seconds."""


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
        "COVE_PROVISIONER_TRUST_GRACE": "1", "COVE_PROVISIONER_TRUST_HOLD": str(TRUST_HOLD),
        "COVE_PROVISIONER_SUBNET_CIDR": LOCAL_SUBNET_CIDR,
    })
    p = Provisioner(env, tmp_path / "provisioner.log")
    p.start()
    try:
        yield p
    finally:
        p.stop()
        await drop_database(pg_admin_url, db_url)


@dataclass
class ClusterEvents:
    """Every provisioner event about one cluster, collected by an ordered push consumer."""

    received: list[Envelope] = field(default_factory=list)

    def types(self) -> list[str]:
        return [e.type for e in self.received]

    def first(self, type_: str) -> Envelope | None:
        return next((e for e in self.received if e.type == type_), None)


async def watch(bus: Bus, cluster_id: str) -> tuple[ClusterEvents, Any]:
    events = ClusterEvents()

    async def on_msg(msg: Any) -> None:
        events.received.append(decode(msg.data))

    sub = await bus.js.subscribe(subjects.cluster_events("provisioner", cluster_id), cb=on_msg, ordered_consumer=True)
    return events, sub


async def request_cluster(
    bus: Bus, cloud: Cloud, name: str, *, masters: int = 1, workers: int = 2, flavor: str = "m1.small",
    trust_id: str | None = None, admitted: bool = True, docker_volume_size: int | None = None,
) -> ClusterCreateRequested:
    """Publish a create request and, when ``admitted``, the scheduler's admission, from which the certs service
    makes the cluster's CA (the provisioner builds a cluster once it has both); a refused create has its request
    only."""
    now = datetime.datetime.now(datetime.UTC)
    template = ClusterTemplate(
        uuid=str(uuid.uuid4()), name="k8s", project_id=cloud.demo_project_id, user_id=cloud.demo_user_id,
        image_id="fedora-coreos", flavor_id=flavor, master_flavor_id=flavor,
        external_network_id="public", created_at=now, docker_volume_size=docker_volume_size,
    )
    req = ClusterCreateRequested(
        uuid=str(uuid.uuid4()), name=name, project_id=cloud.demo_project_id, user_id=cloud.demo_user_id,
        template=template, master_count=masters, node_count=workers, trust_id=trust_id or cloud.trust(),
        requested_at=now,
    )
    env = new_envelope(req, project_id=req.project_id, cluster_id=req.uuid)
    await bus.publish(subjects.cluster_events("api", req.uuid), env)
    if not admitted:
        return req
    # the scheduler's admission; the certs service (running: the ``certs`` fixture) makes the CA from it
    admitted_event = ClusterAdmitted(uuid=req.uuid, project_id=req.project_id, master_count=masters,
                                     node_count=workers, name=name)
    await bus.publish(subjects.cluster_events("scheduler", req.uuid),
                      new_envelope(admitted_event, project_id=req.project_id, cluster_id=req.uuid, causation=env))
    return req


async def request_delete(bus: Bus, req: ClusterCreateRequested) -> None:
    d = ClusterDeleteRequested(uuid=req.uuid, project_id=req.project_id, user_id=req.user_id)
    await bus.publish(subjects.cluster_events("api", req.uuid),
                      new_envelope(d, project_id=req.project_id, cluster_id=req.uuid))


def prefix_of(req: ClusterCreateRequested) -> str:
    return f"{req.name}-{req.uuid.replace('-', '')[:8]}"


async def until(events: ClusterEvents, type_: str, p: Provisioner, timeout: float = 60.0) -> Envelope:
    try:
        return await wait_for(lambda: events.first(type_), timeout=timeout, message=f"{type_} emitted")
    except TimeoutError:
        raise AssertionError(f"no {type_}; got {events.types()}\nprovisioner log:\n{p.tail()}") from None


async def test_create_then_delete_builds_in_the_users_project_and_leaves_nothing(
    bus: Bus, cloud: Cloud, provisioner: Provisioner
) -> None:
    ports_before = cloud.live_count("port")
    req = await request_cluster(bus, cloud, "demo-ok", masters=1, workers=2)
    events, sub = await watch(bus, req.uuid)
    try:
        done = await until(events, "ClusterCreateCompleted", provisioner)
        types = events.types()
        assert types[0] == "ClusterCreateStarted"
        assert types.count("NodeCreated") == 3 and types.count("NodeBecameActive") == 3
        assert "ClusterCreateFailed" not in types
        assert done.correlation_id == req.uuid or done.correlation_id  # inherited chain, never empty
        servers = await asyncio.to_thread(cloud.servers, prefix_of(req))
        names = sorted(s.name for s in servers)
        prefix = prefix_of(req)
        assert names == [f"{prefix}-master-0", f"{prefix}-node-0", f"{prefix}-node-1"]
        assert all(s.status == "ACTIVE" for s in servers)
        assert {s.project_id for s in servers} == {cloud.demo_project_id}
        assert all(s.metadata["cove_cluster_id"] == req.uuid for s in servers)
        payload = done.payload
        assert payload.api_address.startswith("https://") and payload.api_address.endswith(":6443")
        assert len(payload.master_addresses) == 1 and len(payload.node_addresses) == 2
        nets = list(cloud.demo.network.networks(name=f"{prefix}-net"))
        assert len(nets) == 1
        routers = list(cloud.demo.network.routers(name=f"{prefix}-router"))
        assert len(routers) == 1 and routers[0].external_gateway_info
        interfaces = list(cloud.demo.network.ports(device_id=routers[0].id, device_owner="network:router_interface"))
        assert [ip["subnet_id"] for p in interfaces for ip in p.fixed_ips] == [nets[0].subnet_ids[0]]

        await request_delete(bus, req)
        await until(events, "ClusterDeleteCompleted", provisioner)
        types = events.types()
        assert types.count("ClusterDeleteStarted") == 1 and types.count("NodeDeleted") == 3
        assert types.index("ClusterDeleteStarted") < types.index("ClusterDeleteCompleted")
        assert await asyncio.to_thread(cloud.live_records, prefix) == []
        assert await asyncio.to_thread(cloud.servers, prefix) == []
        assert await asyncio.to_thread(cloud.live_count, "port") == ports_before
    finally:
        await sub.unsubscribe()


async def test_boot_failure_ends_in_create_failed_with_the_fault(
    bus: Bus, cloud: Cloud, provisioner: Provisioner
) -> None:
    cloud.admin_call("PUT", "/admin/faults", json={"boot_failure_rate": 1.0})
    try:
        req = await request_cluster(bus, cloud, "demo-fail", masters=1, workers=1)
        events, sub = await watch(bus, req.uuid)
        failed = await until(events, "ClusterCreateFailed", provisioner)
    finally:
        cloud.admin_call("PUT", "/admin/faults", json={"boot_failure_rate": 0.0})
    try:
        prefix = prefix_of(req)
        reason = failed.payload.status_reason
        server = next(s for s in await asyncio.to_thread(cloud.servers, prefix) if s.name == f"{prefix}-master-0")
        fault = server.fault["message"]
        assert reason == f"Node {prefix}-master-0 failed: {fault}", reason
        node_failed = next((e for e in events.received if e.type == "NodeFailed"
                            and e.payload.node_name == f"{prefix}-master-0"), None)
        assert node_failed is not None and node_failed.payload.reason == fault
        assert "ClusterCreateCompleted" not in events.types()
        # a failed cluster is still deleted cleanly
        await request_delete(bus, req)
        await until(events, "ClusterDeleteCompleted", provisioner)
        assert await asyncio.to_thread(cloud.live_records, prefix) == []
    finally:
        await sub.unsubscribe()


async def test_sigkill_mid_create_then_restart_finishes_without_duplicates(
    bus: Bus, cloud: Cloud, provisioner: Provisioner
) -> None:
    cloud.admin_call("PUT", "/admin/timing", json={"time_factor": 0.3})  # boots take ~1-2.5 s
    try:
        req = await request_cluster(bus, cloud, "demo-kill", masters=1, workers=3)
        events, sub = await watch(bus, req.uuid)
        await until(events, "NodeCreated", provisioner)
        provisioner.kill()
        assert "ClusterCreateCompleted" not in events.types()  # it really died mid-create
        prefix = prefix_of(req)
        # every node is created in one pass (nodes.py), so the servers may all exist: what the restart must not
        # do is create any of them again, nor miss recording one a NodeCreated did not announce yet
        provisioner.start()
        await until(events, "ClusterCreateCompleted", provisioner, timeout=90)
    finally:
        cloud.admin_call("PUT", "/admin/timing", json={"time_factor": 0.01})
    try:
        names = [s.name for s in await asyncio.to_thread(cloud.servers, prefix)]
        assert sorted(names) == sorted({*names}) and len(names) == 4, names  # no duplicate by name
        created = [e.payload.server_id for e in events.received if e.type == "NodeCreated"]
        assert len(created) == len(set(created)) == 4
        assert events.types().count("ClusterCreateStarted") == 1
        await request_delete(bus, req)
        await until(events, "ClusterDeleteCompleted", provisioner)
        assert await asyncio.to_thread(cloud.live_records, prefix) == []
    finally:
        await sub.unsubscribe()


async def snapshot(database_url: str, cluster_id: str) -> tuple[Any, ...]:
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        cluster = await conn.fetchrow(
            "SELECT uuid, project_id, name, spec, trust_id, correlation_id, ca_cert_pem, desired, delete_generation,"
            " delete_pending, status, status_reason, create_started_at, last_seq"
            " FROM provisioner.clusters WHERE uuid = $1", cluster_id)
        nodes = await conn.fetch(
            "SELECT server_id, name, role, status, flavor_id, vcpus, ram_mb, disk_gb, addresses, reason"
            " FROM provisioner.nodes WHERE cluster_id = $1 ORDER BY server_id", cluster_id)
        return (dict(cluster) if cluster else None, [dict(n) for n in nodes])
    except asyncpg.UndefinedTableError:
        return (None, [])
    finally:
        await conn.close()


async def test_store_dropped_and_rebuilt_from_the_stream_equals_the_original(
    bus: Bus, cloud: Cloud, provisioner: Provisioner
) -> None:
    req = await request_cluster(bus, cloud, "demo-rebuild", masters=1, workers=1)
    events, sub = await watch(bus, req.uuid)
    try:
        await until(events, "ClusterCreateCompleted", provisioner)
        await until(events, "ClusterHealthChanged", provisioner)  # the watch's first health (HEALTHY) follows
        db = provisioner.database_url()

        async def health_applied() -> bool:
            import asyncpg

            conn = await asyncpg.connect(db)
            try:
                return bool(await conn.fetchval(
                    "SELECT health_status FROM provisioner.clusters WHERE uuid = $1", req.uuid))
            finally:
                await conn.close()

        await wait_for(health_applied, message="the store applied the first health")
        original = await wait_for(
            lambda: _complete_snapshot(db, req.uuid), message="store shows CREATE_COMPLETE"
        )
        assert original[0]["last_seq"] > 0 and len(original[1]) == 2
        provisioner.stop()
        import asyncpg

        conn = await asyncpg.connect(db)
        await conn.execute("DROP SCHEMA provisioner CASCADE")
        await conn.close()
        provisioner.start()
        rebuilt = await wait_for(lambda: _complete_snapshot(db, req.uuid), timeout=30, message="store rebuilt")
        assert rebuilt == original
        assert events.types().count("ClusterCreateCompleted") == 1  # replay re-emits nothing
        await request_delete(bus, req)
        await until(events, "ClusterDeleteCompleted", provisioner)
    finally:
        await sub.unsubscribe()


async def _complete_snapshot(db: str, cluster_id: str) -> tuple[Any, ...] | None:
    snap = await snapshot(db, cluster_id)
    if snap[0] is None or snap[0]["status"] != "CREATE_COMPLETE" or any(n["status"] != "active" for n in snap[1]):
        return None
    return snap


async def test_a_permanent_cloud_error_fails_the_create_with_a_reason(
    bus: Bus, cloud: Cloud, provisioner: Provisioner
) -> None:
    req = await request_cluster(bus, cloud, "demo-noflavor", flavor="m1.nonexistent")
    events, sub = await watch(bus, req.uuid)
    try:
        failed = await until(events, "ClusterCreateFailed", provisioner)
        assert failed.payload.status_reason.startswith("Flavor m1.nonexistent not found"), failed.payload
        assert "NodeCreated" not in events.types()
        await request_delete(bus, req)
        await until(events, "ClusterDeleteCompleted", provisioner)
        assert await asyncio.to_thread(cloud.live_records, prefix_of(req)) == []
    finally:
        await sub.unsubscribe()


# ------------------------------------------------------------------------------------------------ trusts


async def until_trust_deleted(events: ClusterEvents, trust_id: str, p: Provisioner, timeout: float = 30.0) -> Envelope:
    def found() -> Envelope | None:
        return next((e for e in events.received
                     if e.type == "ClusterTrustDeleted" and e.payload.trust_id == trust_id), None)

    try:
        return await wait_for(found, timeout=timeout, message=f"ClusterTrustDeleted {trust_id}")
    except TimeoutError:
        raise AssertionError(f"trust {trust_id} not deleted; got {events.types()}\nprovisioner log:\n{p.tail()}") \
            from None


async def pending_trusts(database_url: str) -> list[str]:
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        return [r["trust_id"] for r in await conn.fetch("SELECT trust_id FROM provisioner.trusts_to_delete")]
    finally:
        await conn.close()


async def test_delete_removes_the_clusters_trust_from_keystone(
    bus: Bus, cloud: Cloud, provisioner: Provisioner
) -> None:
    req = await request_cluster(bus, cloud, "demo-trust", masters=1, workers=1)
    assert req.trust_id is not None
    events, sub = await watch(bus, req.uuid)
    try:
        await until(events, "ClusterCreateCompleted", provisioner)
        assert await asyncio.to_thread(cloud.trust_status, req.trust_id) == 200
        assert "ClusterTrustDeleted" not in events.types()  # a live cluster keeps its trust
        await request_delete(bus, req)
        await until(events, "ClusterDeleteCompleted", provisioner)
        deleted = await until_trust_deleted(events, req.trust_id, provisioner)
        assert deleted.payload.reason == "cluster_deleted" and deleted.payload.already_gone is False
        assert deleted.payload.uuid == req.uuid and deleted.payload.project_id == req.project_id
        types = events.types()
        assert types.index("ClusterDeleteCompleted") < types.index("ClusterTrustDeleted")
        assert await asyncio.to_thread(cloud.trust_status, req.trust_id) == 404
        await wait_for(lambda: _no_pending(provisioner.database_url()), message="trusts_to_delete emptied")
        assert await asyncio.to_thread(cloud.live_records, prefix_of(req)) == []
    finally:
        await sub.unsubscribe()


async def _no_pending(db: str) -> bool:
    return await pending_trusts(db) == []


async def test_a_trust_two_clusters_share_is_deleted_after_the_last_of_them_and_the_hold(
    bus: Bus, cloud: Cloud, provisioner: Provisioner
) -> None:
    """The API hands one trust to a burst of a user's clusters (proto/trusts.py): deleting one of them leaves the
    trust to the other; deleting the last deletes it, once the hold since the newest one was requested is over."""
    shared = await asyncio.to_thread(cloud.trust)
    first = await request_cluster(bus, cloud, "demo-share-a", workers=1, trust_id=shared)
    second = await request_cluster(bus, cloud, "demo-share-b", workers=1, trust_id=shared)
    events_a, sub_a = await watch(bus, first.uuid)
    events_b, sub_b = await watch(bus, second.uuid)
    try:
        await until(events_a, "ClusterCreateCompleted", provisioner)
        await until(events_b, "ClusterCreateCompleted", provisioner)
        await request_delete(bus, first)
        await until(events_a, "ClusterDeleteCompleted", provisioner)
        # Wait out the hold since the newest request (the reaper looks again when it ends), plus a second for that
        # look: from then on only the second cluster keeps the trust.
        assert second.requested_at is not None
        held = TRUST_HOLD + 1.0 - (datetime.datetime.now(datetime.UTC) - second.requested_at).total_seconds()
        await asyncio.sleep(max(0.0, held))
        assert await asyncio.to_thread(cloud.trust_status, shared) == 200
        assert "ClusterTrustDeleted" not in events_a.types() + events_b.types()
        assert await pending_trusts(provisioner.database_url()) == [shared]  # recorded, waiting for its user
        second_servers = await asyncio.to_thread(cloud.live_records, prefix_of(second))
        assert second_servers, "the second cluster's servers are gone"
        await request_delete(bus, second)
        await until(events_b, "ClusterDeleteCompleted", provisioner)
        deleted = await until_trust_deleted(events_a, shared, provisioner)
        assert deleted.payload.uuid == first.uuid  # published on the cluster that recorded it first
        assert await asyncio.to_thread(cloud.trust_status, shared) == 404
        await wait_for(lambda: _no_pending(provisioner.database_url()), message="trusts_to_delete emptied")
    finally:
        await sub_a.unsubscribe()
        await sub_b.unsubscribe()


async def test_a_withdrawn_clusters_trust_is_deleted_unless_a_live_cluster_shares_it(
    bus: Bus, cloud: Cloud, provisioner: Provisioner
) -> None:
    """A refused create answered 403 is withdrawn (ClusterWithdrawn): never built, it lets its trust go at once, but
    a trust the API shared with a live cluster of the same user stays that cluster's."""
    live = await request_cluster(bus, cloud, "demo-wd-live", workers=1)
    assert live.trust_id is not None
    events_live, sub_live = await watch(bus, live.uuid)
    try:
        await until(events_live, "ClusterCreateCompleted", provisioner)
        refused = [await request_cluster(bus, cloud, f"demo-wd-{i}", workers=1, trust_id=trust_id, admitted=False)
                   for i, trust_id in enumerate((await asyncio.to_thread(cloud.trust), live.trust_id))]
        own, sharing = refused
        events_own, sub_own = await watch(bus, own.uuid)
        try:
            for req in refused:
                w = ClusterWithdrawn(uuid=req.uuid, project_id=req.project_id)
                await bus.publish(subjects.cluster_events("api", req.uuid),
                                  new_envelope(w, project_id=req.project_id, cluster_id=req.uuid))
            assert own.trust_id is not None
            deleted = await until_trust_deleted(events_own, own.trust_id, provisioner)
            assert deleted.payload.reason == "cluster_deleted" and deleted.payload.uuid == own.uuid
            assert await asyncio.to_thread(cloud.trust_status, own.trust_id) == 404
            # The shared trust outlives the hold since the sharing request (the reaper looks again when it ends, plus
            # a second for that look) while the live cluster has it.
            assert sharing.requested_at is not None
            since = (datetime.datetime.now(datetime.UTC) - sharing.requested_at).total_seconds()
            await asyncio.sleep(max(0.0, TRUST_HOLD + 1.0 - since))
            assert await asyncio.to_thread(cloud.trust_status, live.trust_id) == 200
            assert await pending_trusts(provisioner.database_url()) == [live.trust_id]
            assert "ClusterCreateStarted" not in events_own.types()
            for req in refused:
                assert await asyncio.to_thread(cloud.live_records, prefix_of(req)) == []
        finally:
            await sub_own.unsubscribe()
        await request_delete(bus, live)
        await until(events_live, "ClusterDeleteCompleted", provisioner)
        # (Its ClusterTrustDeleted names the withdrawn cluster, which recorded the trust first.)
        await wait_for(lambda: _trust_gone(cloud, live.trust_id), timeout=30, message="the shared trust deleted")
        await wait_for(lambda: _no_pending(provisioner.database_url()), message="trusts_to_delete emptied")
    finally:
        await sub_live.unsubscribe()


async def _trust_gone(cloud: Cloud, trust_id: str) -> bool:
    return await asyncio.to_thread(cloud.trust_status, trust_id) == 404


async def test_trust_deletion_survives_keystone_failures_and_a_sigkill_after_delete_completed(
    bus: Bus, cloud: Cloud, provisioner: Provisioner
) -> None:
    # Keystone refuses every trust deletion (503) until the fault is lifted.
    cloud.admin_call("POST", "/admin/faults/api", json={
        "service": "identity", "method": "DELETE", "path": "/OS-TRUST/trusts/", "status": 503})
    try:
        req = await request_cluster(bus, cloud, "demo-trustkill", masters=1, workers=1)
        assert req.trust_id is not None
        events, sub = await watch(bus, req.uuid)
        await until(events, "ClusterCreateCompleted", provisioner)
        await request_delete(bus, req)
        await until(events, "ClusterDeleteCompleted", provisioner)
        db = provisioner.database_url()
        assert await wait_for(lambda: _pending_is(db, [req.trust_id]), message="trust recorded as pending")
        await wait_for(lambda: "trust_delete_failed" in provisioner.log_file.read_text(errors="replace"),
                       message="a failed attempt", timeout=20)
        assert await asyncio.to_thread(cloud.trust_status, req.trust_id) == 200  # the fault really held it
        assert "ClusterTrustDeleted" not in events.types()
        provisioner.kill()
    finally:
        cloud.admin_call("PUT", "/admin/faults", json={"api": []})
    try:
        provisioner.start()
        deleted = await until_trust_deleted(events, req.trust_id, provisioner)
        assert deleted.payload.already_gone is False
        assert await asyncio.to_thread(cloud.trust_status, req.trust_id) == 404
        await wait_for(lambda: _no_pending(db), message="trusts_to_delete emptied after restart")
        assert events.types().count("ClusterDeleteCompleted") == 1
    finally:
        await sub.unsubscribe()


async def _pending_is(db: str, want: list[str | None]) -> bool:
    return await pending_trusts(db) == want


async def test_rotated_trust_is_deleted_and_the_new_one_kept_and_used(
    bus: Bus, cloud: Cloud, provisioner: Provisioner
) -> None:
    req = await request_cluster(bus, cloud, "demo-rotate", masters=1, workers=1)
    old = req.trust_id
    assert old is not None
    events, sub = await watch(bus, req.uuid)
    try:
        await until(events, "ClusterCreateCompleted", provisioner)
        new = await asyncio.to_thread(cloud.trust)
        rotated = ClusterTrustRotated(uuid=req.uuid, project_id=req.project_id, trust_id=new,
                                      trustee_user_id=cloud.cove_user_id, user_id=cloud.demo_user_id)
        await bus.publish(subjects.cluster_events("api", req.uuid),
                          new_envelope(rotated, project_id=req.project_id, cluster_id=req.uuid))
        deleted = await until_trust_deleted(events, old, provisioner)
        assert deleted.payload.reason == "rotated" and deleted.payload.already_gone is False
        assert await asyncio.to_thread(cloud.trust_status, old) == 404
        assert await asyncio.to_thread(cloud.trust_status, new) == 200
        assert await pending_trusts(provisioner.database_url()) == []

        # The provisioner acts with the new trust: with the old one gone, a resize still boots a worker.
        resize = ClusterUpdateRequested(uuid=req.uuid, project_id=req.project_id, node_count=2,
                                        previous_node_count=1)
        await bus.publish(subjects.cluster_events("api", req.uuid),
                          new_envelope(resize, project_id=req.project_id, cluster_id=req.uuid))
        await until(events, "ClusterUpdateCompleted", provisioner)
        assert "ClusterUpdateFailed" not in events.types()
        prefix = prefix_of(req)
        servers = await asyncio.to_thread(cloud.servers, prefix)
        assert sorted(s.name for s in servers) == [f"{prefix}-master-0", f"{prefix}-node-0", f"{prefix}-node-1"]
        assert all(s.status == "ACTIVE" for s in servers)
        assert await asyncio.to_thread(cloud.trust_status, new) == 200

        await request_delete(bus, req)
        await until(events, "ClusterDeleteCompleted", provisioner)
        gone = await until_trust_deleted(events, new, provisioner)
        assert gone.payload.reason == "cluster_deleted"
        assert await asyncio.to_thread(cloud.trust_status, new) == 404
        assert await asyncio.to_thread(cloud.live_records, prefix) == []
        assert [e.payload.trust_id for e in events.received if e.type == "ClusterTrustDeleted"] == [old, new]
    finally:
        await sub.unsubscribe()


async def test_a_copy_killed_before_a_removed_workers_volumes_were_released_leaves_them_to_the_next(
    bus: Bus, cloud: Cloud, provisioner: Provisioner
) -> None:
    """A resize down deletes a worker's server (``NodeDeleted``), then its volume, once detached. A provisioner
    killed in between used to leave the volume (and its billing) until the cluster's delete: the next task knew
    nothing of it. The store now says which deleted nodes are not released yet (``NodeReleased`` clears it)."""
    req = await request_cluster(bus, cloud, "demo-release", masters=1, workers=2, docker_volume_size=1)
    prefix = prefix_of(req)
    removed = f"{prefix}-node-1-docker"
    events, sub = await watch(bus, req.uuid)
    fault: dict[str, Any] = {}
    try:
        await until(events, "ClusterCreateCompleted", provisioner)
        assert removed in {r["name"] for r in await asyncio.to_thread(cloud.live_records, prefix)}
        # Cinder refuses every volume delete: the release cannot finish
        fault = await asyncio.to_thread(cloud.admin_call, "POST", "/admin/faults/api", json={
            "service": "volume", "method": "DELETE", "path": "volumes/", "status": 500})
        resize = ClusterUpdateRequested(uuid=req.uuid, project_id=req.project_id, node_count=1,
                                        previous_node_count=2)
        await bus.publish(subjects.cluster_events("api", req.uuid),
                          new_envelope(resize, project_id=req.project_id, cluster_id=req.uuid))
        deleted = await until(events, "NodeDeleted", provisioner)
        assert deleted.payload.node_name == f"{prefix}-node-1"
        await wait_for(lambda: "volume_release_failed" in provisioner.tail() or "Releasing the resources" in
                       provisioner.tail(), timeout=30, message="a release attempt refused by Cinder")
        provisioner.kill()
        await asyncio.to_thread(cloud.admin_call, "PUT", "/admin/faults", json={"api": []})
        provisioner.start()

        async def volume_gone() -> bool:
            return removed not in {r["name"] for r in await asyncio.to_thread(cloud.live_records, prefix)}

        await wait_for(volume_gone, timeout=60, message=f"{removed} released by the restarted provisioner")
        released = await until(events, "NodeReleased", provisioner)
        assert (released.payload.node_name, released.payload.server_ids) == (
            f"{prefix}-node-1", [deleted.payload.server_id])
        assert any(e.type == "VolumeDeleted" for e in events.received)
        await until(events, "ClusterUpdateCompleted", provisioner)
        assert sorted(s.name for s in await asyncio.to_thread(cloud.servers, prefix)) == [
            f"{prefix}-master-0", f"{prefix}-node-0"]

        await request_delete(bus, req)
        await until(events, "ClusterDeleteCompleted", provisioner)
        assert await asyncio.to_thread(cloud.live_records, prefix) == []
    finally:
        if fault:
            await asyncio.to_thread(cloud.admin_call, "PUT", "/admin/faults", json={"api": []})
        await sub.unsubscribe()
