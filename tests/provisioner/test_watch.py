"""The provisioner's watch and health: the pure rules (node and cluster health, Magnum's reason shape, the label),
and the watcher against the real devcloud: one all-tenants changes-since listing sees a Cove node fail and vanish
in another project, records only what changed, and kicks only the watched cluster it belongs to."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import openstack
import pytest

from services.provisioner import health, model
from services.provisioner.cloud import CloudSettings
from services.provisioner.health import Observed, cluster_health, node_health
from services.provisioner.watch import Watched, Watcher, WatchSettings, observed
from tests.conftest import Devcloud, wait_for

NODE = model.KnownNode("s1", "k8s-abc-node-0", model.WORKER, model.NODE_ACTIVE)


def _seen(status: str, **kw: Any) -> Observed:
    return Observed(server_id="s1", name=NODE.name, status=status, cluster_id="c1", **kw)


def test_node_health_from_the_server_state() -> None:
    assert node_health(NODE, None).healthy
    assert node_health(NODE, _seen("ACTIVE")).healthy
    error = node_health(NODE, _seen("ERROR", fault="Hardware failure"))
    assert not error.healthy and error.reason == "Hardware failure" and error.status == "ERROR"
    assert node_health(NODE, _seen("DELETED")).reason == "the server is gone from the cloud"
    assert "shutoff" in (node_health(NODE, _seen("SHUTOFF")).reason or "")
    assert not node_health(NODE, _seen("ACTIVE", host_status="DOWN")).healthy
    failed = model.KnownNode("s1", NODE.name, model.WORKER, model.NODE_FAILED)
    assert not node_health(failed, None).healthy


def test_cluster_health_in_magnums_shape() -> None:
    ok = node_health(NODE, _seen("ACTIVE"))
    other = model.KnownNode("s2", "k8s-abc-master-0", model.MASTER, model.NODE_ACTIVE)
    bad = node_health(other, Observed(server_id="s2", name=other.name, status="ERROR", cluster_id="c1",
                                      fault="Availability zone nova is down"))
    assert cluster_health([ok]) == ("HEALTHY", {"k8s-abc-node-0.Ready": "True"})
    status, reason = cluster_health([ok, bad])
    assert status == "UNHEALTHY"
    assert reason == {"k8s-abc-node-0.Ready": "True", "k8s-abc-master-0.Ready": "False",
                      "k8s-abc-master-0.reason": "Availability zone nova is down"}
    assert cluster_health([]) == ("UNKNOWN", {})


def test_lost_at_is_the_clouds_time() -> None:
    updated = datetime(2026, 1, 1, 10, 0, 0, tzinfo=UTC)
    terminated = datetime(2026, 1, 1, 10, 0, 0, 654321, tzinfo=UTC)
    assert _seen("ERROR", updated=updated).changed_at == updated
    assert _seen("DELETED", updated=updated, terminated_at=terminated).changed_at == terminated
    assert _seen("DELETED", updated=updated).changed_at == updated


def test_observed_keeps_only_cove_nodes() -> None:
    assert observed({"id": "x", "name": "vm", "status": "ACTIVE", "metadata": {}}) is None
    seen = observed({"id": "x", "name": "n", "status": "error", "updated": "2026-01-01T00:00:00Z",
                     "metadata": {"cove_cluster_id": "c", "cove_nodegroup": "default-worker"},
                     "fault": {"message": "Hardware failure"}, "OS-SRV-USG:terminated_at": None})
    assert seen is not None and seen.status == "ERROR" and seen.nodegroup == "default-worker"
    assert seen.fault == "Hardware failure" and seen.updated == datetime(2026, 1, 1, tzinfo=UTC)


def test_record_kicks_only_changed_watched_clusters() -> None:
    kicks: list[str] = []

    async def load() -> dict[str, Watched]:
        return {}

    w = Watcher(cloud_settings=CloudSettings(auth_url="http://127.0.0.1:1/identity"), load_watched=load,
                kick=kicks.append)
    w.watched = {"c1": Watched("CREATE_COMPLETE")}
    server = {"id": "s1", "name": "n", "status": "ACTIVE", "updated": "2026-01-01T00:00:00Z",
              "metadata": {"cove_cluster_id": "c1"}}
    stranger = dict(server, id="s9", metadata={"cove_cluster_id": "c-building"})
    assert w.record([server, stranger]) == 1 and kicks == ["c1"]
    assert w.record([server]) == 0 and kicks == ["c1"]  # seen again unchanged (the overlap): nothing
    assert w.record([dict(server, status="ERROR", updated="2026-01-01T00:00:01Z")]) == 1
    assert w.views_of("c1")["s1"].status == "ERROR" and "c-building" not in w.views


@pytest.mark.parametrize(("value", "on"), [("true", True), ("True", True), ("false", False), (None, False)])
def test_auto_healing_label(value: str | None, on: bool) -> None:
    class Spec:
        labels = {} if value is None else {"auto_healing_enabled": value}

    class Req:
        spec = Spec()

    class Row:
        spec = Req()
        resolved = Spec()

    assert health.auto_healing(Row()) is on  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- against the devcloud


async def test_watcher_sees_a_node_fail_and_vanish_in_another_project(devcloud: Devcloud) -> None:
    demo = openstack.connect(cloud="cove-demo")
    admin = openstack.connect(cloud="cove-admin")
    image = demo.image.find_image("ubuntu-22.04", ignore_missing=False).id
    tiny = demo.compute.find_flavor("m1.tiny", ignore_missing=False).id
    cluster, other = str(uuid.uuid4()), str(uuid.uuid4())
    tag = uuid.uuid4().hex[:6]

    def boot(name: str, cid: str) -> Any:
        return demo.compute.create_server(name=name, flavor_id=tiny, image_id=image, networks="none",
                                          metadata={"cove_cluster_id": cid, "cove_nodegroup": "default-worker"})

    servers = [boot(f"w-{tag}-node-{i}", cluster) for i in range(3)]
    unwatched = boot(f"w-{tag}-other-0", other)
    for s in [*servers, unwatched]:
        demo.compute.wait_for_server(s, interval=0.05, wait=30)

    kicks: list[str] = []

    async def load() -> dict[str, Watched]:
        return {cluster: Watched("CREATE_COMPLETE")}

    settings = CloudSettings(auth_url=f"{devcloud.url}/identity")
    w = Watcher(cloud_settings=settings, load_watched=load, kick=kicks.append,
                settings=WatchSettings(interval=0.05))
    w.start()
    try:
        await wait_for(lambda: len(w.views_of(cluster)) == 3, timeout=20)
        assert all(v.status == "ACTIVE" for v in w.views_of(cluster).values())
        assert other not in w.views and w.scope == "all"  # one all-tenants listing, as the service user
        kicks.clear()
        failed, vanished = servers[0], servers[1]
        for server, action in ((failed, "error"), (vanished, "vanish")):
            admin.session.post(f"{devcloud.url}/admin/faults/servers",
                               json={"name": server.id, "action": action, "after_seconds": 0})
        await wait_for(lambda: w.views_of(cluster).get(failed.id) is not None
                       and w.views_of(cluster)[failed.id].status == "ERROR"
                       and w.views_of(cluster)[vanished.id].status == "DELETED", timeout=20)
        assert w.views_of(cluster)[failed.id].fault == "Hardware failure"
        gone = w.views_of(cluster)[vanished.id]
        ledger = {r["id"]: r for r in admin.session.get(
            f"{devcloud.url}/admin/ledger?kind=server").json()["records"]}
        assert gone.terminated_at == datetime.fromisoformat(ledger[vanished.id]["deleted_at"])
        assert set(kicks) == {cluster}
        listings = w.stats.listings
        changes = w.stats.changes
        await wait_for(lambda: w.stats.listings >= listings + 5, timeout=20)
        assert w.stats.changes == changes, "quiet servers seen again must not count as changes"
    finally:
        await w.stop()
        for s in [servers[0], servers[2], unwatched]:
            demo.compute.delete_server(s, ignore_missing=True)
    await asyncio.sleep(0)
