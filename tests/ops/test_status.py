"""`cove services` shows heartbeats and consumer lag; `cove consumers prune` deletes only orphaned companions."""

from __future__ import annotations

import json

import pytest

from benchmarks.replay import lifecycles, publish_all
from proto import subjects
from services.runtime.consumer import Consumer
from services.runtime.heartbeat import Heartbeat
from tests.ops.conftest import Ops

pytestmark = pytest.mark.integration


async def _nothing(*_args: object) -> None:
    return None


async def test_services_shows_heartbeats_and_lag(ops: Ops) -> None:
    last = await publish_all(ops.bus, lifecycles(50))
    stalled = Consumer(ops.bus, durable="accounting", filter_subjects=[subjects.EVENTS_ALL], handler=_nothing)
    await stalled.ensure(start_seq=1)  # created, never consuming: everything is pending
    beat = Heartbeat(ops.bus, "accounting", host="host-a")
    await beat.beat()
    code, out, err = await ops.cove("services", "-f", "json")
    assert code == 0, err
    rows = {r["service"]: r for r in json.loads(out)}
    assert rows["accounting"]["state"] == "up" and rows["accounting"]["host"] == "host-a"
    assert rows["accounting"]["consumer"] == "accounting" and rows["accounting"]["pending"] == last


async def test_consumers_prune_deletes_the_companions_of_deleted_consumers_only(ops: Ops) -> None:
    kept = Consumer(ops.bus, durable="kept", filter_subjects=[subjects.EVENTS_ALL], handler=_nothing)
    gone = Consumer(ops.bus, durable="gone", filter_subjects=[subjects.EVENTS_ALL], handler=_nothing)
    for c in (kept, gone):
        await c.start()
        await c.stop()
    await ops.bus.js.delete_consumer(subjects.EVENTS_STREAM, "gone")

    code, out, err = await ops.cove("consumers", "prune", "--dry-run", "-f", "json")
    assert code == 0, err
    assert [r["name"] for r in json.loads(out)] == ["gone_dropped"]
    code, out, err = await ops.cove("consumers", "prune", "-f", "json")
    assert code == 0, err
    assert json.loads(out) == [{"name": "gone_dropped", "watched_stream": subjects.EVENTS_STREAM,
                                "watched_consumer": "gone", "deleted": True}]
    names = {c.name for c in await ops.bus.js.consumers_info(subjects.ADVISORIES_STREAM)}
    assert "kept_dropped" in names and "gone_dropped" not in names
