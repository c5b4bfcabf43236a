"""Compute's ``changes-since`` listing shows deleted servers as Nova does: status DELETED, vm_state deleted,
``OS-SRV-USG:terminated_at`` at the ledger's deletion time; a vanished server (fault injection) too; an admin sees
every project's with ``all_tenants``; a listing without ``changes-since`` never shows them."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import openstack
import pytest

from tests.conftest import Devcloud
from tests.devcloud.test_compute import boot, ledger_record, poll

WAIT = 15.0


def _since(conn: openstack.connection.Connection, since: str, **extra: str) -> dict[str, dict]:
    body = conn.compute.get("/servers/detail", params={"changes-since": since, **extra},
                            microversion="2.1").json()
    return {s["id"]: s for s in body["servers"]}


def test_changes_since_returns_deleted_servers(devcloud: Devcloud) -> None:
    demo = openstack.connect(cloud="cove-demo")
    admin = openstack.connect(cloud="cove-admin")
    image = demo.image.find_image("ubuntu-22.04", ignore_missing=False).id
    tiny = demo.compute.find_flavor("m1.tiny", ignore_missing=False).id
    since = (datetime.now(UTC) - timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    kept = demo.compute.wait_for_server(boot(demo, f"cs-kept-{time.time_ns()}", tiny, image), wait=WAIT,
                                        interval=0.05)
    doomed = demo.compute.wait_for_server(boot(demo, f"cs-doomed-{time.time_ns()}", tiny, image), wait=WAIT,
                                          interval=0.05)
    vanished = demo.compute.wait_for_server(boot(demo, f"cs-vanish-{time.time_ns()}", tiny, image), wait=WAIT,
                                            interval=0.05)
    demo.compute.delete_server(doomed)
    demo.compute.wait_for_delete(doomed, wait=WAIT, interval=0.05)
    admin.session.post(f"{devcloud.url}/admin/faults/servers",
                       json={"name": vanished.id, "action": "vanish", "after_seconds": 0})
    demo.compute.wait_for_delete(vanished, wait=WAIT, interval=0.05)

    seen = _since(demo, since)
    assert seen[kept.id]["status"] == "ACTIVE"
    for gone in (doomed, vanished):
        view = seen[gone.id]
        assert view["status"] == "DELETED" and view["OS-EXT-STS:vm_state"] == "deleted"
        ledger = ledger_record(devcloud.url, admin, gone.id)
        assert ledger["deleted_at"] is not None
        terminated = datetime.fromisoformat(view["OS-SRV-USG:terminated_at"]).replace(tzinfo=UTC)
        assert terminated == datetime.fromisoformat(ledger["deleted_at"])  # the ledger's time, to the microsecond

    # a plain listing never shows them; neither does a changes-since after the deletion's second
    plain = {s.id for s in demo.compute.servers()}
    assert kept.id in plain and doomed.id not in plain and vanished.id not in plain
    later = (datetime.now(UTC) + timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert doomed.id not in _since(demo, later)
    # a naive time is UTC (it used to be a 500: naive against aware)
    assert doomed.id in _since(demo, since.rstrip("Z"))

    # the admin sees every project's deleted servers with all_tenants, and deleted=true alone lists only them
    every = _since(admin, since, all_tenants="1")
    assert every[doomed.id]["status"] == "DELETED" and every[kept.id]["status"] == "ACTIVE"
    only = admin.compute.get("/servers/detail", params={"deleted": "true", "all_tenants": "1"}).json()["servers"]
    assert {s["status"] for s in only} == {"DELETED"} and doomed.id in {s["id"] for s in only}
    # another project does not see them
    assert doomed.id not in _since(admin, since)
    demo.compute.delete_server(kept)
    poll(lambda: _since(demo, since).get(kept.id, {}).get("status") == "DELETED", message="kept deleted")


@pytest.mark.parametrize("status", ["DELETED"])
def test_status_filter_deleted_without_changes_since_is_empty(devcloud: Devcloud, status: str) -> None:
    demo = openstack.connect(cloud="cove-demo")
    body = demo.compute.get("/servers/detail", params={"status": status}).json()
    assert body["servers"] == []
