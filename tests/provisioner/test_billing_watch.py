"""``billing.watch_going`` against the devcloud: a delete task that knows nothing of the cluster's volumes (started
after the build, as every delete is) still sees each one its teardown deletes go, and its end is the ledger's within
the usage bar although the cloud pool is busy with other clusters' calls (make chaos: 100 clusters deleting at once
billed 365 of 400 volumes more than 1 s long, up to 12 s: the task first learnt of them from its teardown's listing,
and its looks queued behind the other teardowns)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import pytest

from proto.events import Event, VolumeDeleted
from services.provisioner import billing
from services.provisioner.cloud import ClusterCloud, Seen
from services.provisioner.state import TaskState
from tests.conftest import Devcloud, wait_for
from tests.provisioner.test_cloud_resources import (
    FAST,
    Ledger,
    admin_connection,
    cluster,
    time_factor,
    user_connection,
)

pytestmark = pytest.mark.integration

BACKLOG = 4.0
"""Seconds of other clusters' calls queued in the cloud pool behind this teardown."""


@dataclass
class Notes:
    """``billing.Notes``' writes, kept: what a copy resuming the delete after a kill would find."""

    written: list[dict[str, tuple[str, datetime]]] = field(default_factory=list)

    async def write_down(self, cluster_id: str, present: dict[str, tuple[str, datetime]]) -> None:
        self.written.append(dict(present))


@dataclass
class Reconciler:
    """What ``watch_going`` and ``gone`` use of a Reconciler: the cloud, the looks' pool, settings, the billing notes,
    ``emit_many``."""

    cloud: Any
    looks: ThreadPoolExecutor
    settings: Any
    notes: Notes = field(default_factory=Notes)
    reported: list[Event] = field(default_factory=list)

    async def emit_many(self, row: Any, events: Sequence[tuple[Event, str]]) -> None:
        self.reported.extend(payload for payload, _ in events)


@dataclass
class Row:
    uuid: str
    trust_id: str = "trust"
    project_id: str = "p"


@dataclass
class BusyCloud:
    """``Cloud.call`` over one connection, its pool of one thread busy with a backlog once the first call is in."""

    cc: ClusterCloud
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1))

    async def call(self, trust: str, fn: Any, *, executor: ThreadPoolExecutor | None = None) -> Any:
        return await asyncio.get_running_loop().run_in_executor(executor or self.pool, fn, self.cc)


@pytest.fixture
def looks() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(2)
    yield pool
    pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class Volumes:
    """Two of a cluster's volumes, available, in the devcloud at a fifth of its timing model's delays."""

    ledger: Ledger
    cc: ClusterCloud
    prefix: str
    cid: str
    ids: list[str]


@contextlib.asynccontextmanager
async def two_volumes(devcloud: Devcloud, name: str) -> AsyncIterator[Volumes]:
    demo, admin = user_connection(devcloud.url), admin_connection(devcloud.url)
    ledger = Ledger(devcloud.url, admin, demo.current_project_id)  # (before the volumes: they are new to it)
    cc = ClusterCloud(demo, retry=FAST)
    prefix, cid = cluster(name)
    with time_factor(devcloud.url, admin, 0.2):
        ids = [cc.ensure_volume(prefix, cid, vol, size_gb=1).id for vol in ("a-docker", "b-docker")]
        await wait_for(lambda: all(demo.block_storage.get_volume(v).status == "available" for v in ids),
                       timeout=30, message="volumes available")
        yield Volumes(ledger, cc, prefix, cid, ids)


def reconciler(cloud: Any, looks: ThreadPoolExecutor) -> Reconciler:
    return Reconciler(cloud, looks, type("S", (), {"poll_interval": 0.25})())


async def test_a_fresh_delete_task_ends_the_volumes_its_teardown_deletes_at_the_ledgers_time(
    devcloud: Devcloud, looks: ThreadPoolExecutor
) -> None:
    async with two_volumes(devcloud, "t-going") as v:
        ledger, prefix, cid, ids = v.ledger, v.prefix, v.cid, v.ids
        cloud = BusyCloud(v.cc)
        r, row, st = reconciler(cloud, looks), Row(cid), TaskState()
        seen = Seen()

        def teardown(c: ClusterCloud) -> bool:
            cleared = c.delete_cluster_resources(prefix, cid, seen)
            time.sleep(1.5)  # the ports, router, network and security groups a cluster has besides
            return cleared

        listed_at = billing.now()
        call = asyncio.ensure_future(cloud.call("trust", teardown))
        backlog = asyncio.ensure_future(cloud.call("trust", lambda c: time.sleep(BACKLOG)))
        vanished = await billing.watch_going(r, row, st, call, seen)  # type: ignore[arg-type]
        await call
        await billing.gone(r, row, st, present=seen.present, deleted=seen.deleted, listed_at=listed_at,  # type: ignore[arg-type]
                           vanished=vanished)
        await backlog
    assert set(vanished) == set(ids) and set(seen.deleting) == set(ids)
    # written down while the teardown ran, at its deletes' acceptance: a copy killed before it reported them ends
    # them there (the resuming copy's teardown no longer lists them)
    assert any({v: at for v, (_, at) in note.items()} == {v: seen.deleting[v] for v in ids} for note in r.notes.written)
    ended = {e.volume_id: e.deleted_at for e in r.reported if isinstance(e, VolumeDeleted)}
    assert set(ended) == set(ids), r.reported
    for record in ledger.new("volume"):
        if record["id"] in ids:
            off = (ended[record["id"]] - datetime.fromisoformat(record["deleted_at"])).total_seconds()
            assert abs(off) < 0.5, (record["name"], off)


def test_an_accepted_delete_ends_the_volume_a_moment_after_not_in_the_middle_of_a_long_window() -> None:
    t0 = billing.now()
    b = billing.Billed(billing.VOLUME, "v", "v", t0, seen_at=t0)
    missed = t0 + timedelta(seconds=12)  # the first look that missed it came late
    assert billing._end(b, missed) == t0 + timedelta(seconds=6)  # nothing else known: the window's middle
    accepted = replace(b, deleting_at=t0 + timedelta(seconds=4))
    assert billing._end(accepted, missed) == t0 + timedelta(seconds=4) + billing.SETTLE
    assert billing._end(replace(accepted, seen_at=t0 + timedelta(seconds=5)), missed) == (
        t0 + timedelta(seconds=5) + billing.SETTLE)  # still there after the acceptance
    narrow = t0 + timedelta(seconds=4.2)
    assert billing._end(accepted, narrow) == t0 + timedelta(seconds=4.1)  # a timely look: the middle again


async def test_each_volume_is_written_down_just_before_its_delete_is_sent(
    devcloud: Devcloud, looks: ThreadPoolExecutor
) -> None:
    """A copy killed right after Cinder accepted a delete, before any look (make chaos: the kill came 50 ms after
    the delete was sent, by a task that had never listed the volumes), leaves the copy resuming the delete the note
    written before the send: its time is a fraction of a second before the ledger's end. No watch runs here: only
    the teardown call, as a killed copy's last act."""
    async with two_volumes(devcloud, "t-intent") as v:
        ledger, ids = v.ledger, v.ids
        r, row, st = reconciler(BusyCloud(v.cc), looks), Row(v.cid), TaskState()
        seen = Seen(before_delete=billing.noting_deletes(r, row, st))  # type: ignore[arg-type]
        await asyncio.get_running_loop().run_in_executor(None, v.cc.delete_cluster_resources, v.prefix, v.cid, seen)
        await wait_for(lambda: all(r["id"] not in ids or r.get("deleted_at") for r in ledger.new("volume")),
                       timeout=30, message="volumes deleted")
    assert set(seen.deleting) == set(ids)
    noted = {v: at for note in r.notes.written for v, (_, at) in note.items()}
    assert set(noted) == set(ids), r.notes.written
    for record in ledger.new("volume"):
        if record["id"] in ids:
            assert noted[record["id"]] <= seen.deleting[record["id"]]  # written before the delete was sent
            early = (datetime.fromisoformat(record["deleted_at"]) - noted[record["id"]]).total_seconds()
            assert 0 <= early < 0.5, (record["name"], early)
