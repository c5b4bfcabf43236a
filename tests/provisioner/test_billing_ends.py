"""When the provisioner says a volume or load balancer ended (``billing.py``), against real NATS (the notes' key-value
bucket): the end is the middle of the window between the last listing that showed it and the first that did not,
even when its report had to be retried, and a task that resumes a delete after the copy watching it was killed ends
what that copy last saw at its last sighting, not at the resumed task's first look (issue 16: accounting billed such
volumes seconds past the devcloud's ledger).

The reports go to a recording stand-in for ``Reconciler.emit_many``: what is under test is which end each resource
gets, not the publish (``tests/provisioner/test_provisioner.py`` covers that path end to end)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import nats.js.errors
import pytest
from nats.js.api import KeyValueConfig, StorageType

from proto.events import Event, VolumeDeleted
from services.provisioner import billing
from services.provisioner.state import TaskState
from services.runtime.bus import Bus

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@dataclass
class Row:
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    project_id: str = "p"


@dataclass
class Reporter:
    """The part of a Reconciler that ``billing.gone`` and ``billing.noting`` use: its notes and ``emit_many``."""

    notes: billing.Notes
    reported: list[Event] = field(default_factory=list)
    failures: int = 0
    """How many of the next reports fail (NATS lost a node under the publish)."""

    async def emit_many(self, row: Any, events: Sequence[tuple[Event, str]]) -> None:
        if self.failures:
            self.failures -= 1
            raise TimeoutError("nats: timeout")
        self.reported.extend(payload for payload, _ in events)


@pytest.fixture
async def notes(nats_url: str) -> AsyncIterator[billing.Notes]:
    bus = await Bus.connect(nats_url, name="test-billing-ends")
    bucket = f"TEST_BILLING_{uuid.uuid4().hex[:8].upper()}"
    yield billing.Notes(bus.js, KeyValueConfig(bucket=bucket, history=1, ttl=600.0, storage=StorageType.MEMORY))
    try:
        await bus.js.delete_key_value(bucket)
    finally:
        await bus.close()


def volume(created: datetime) -> billing.Billed:
    return billing.Billed(billing.VOLUME, str(uuid.uuid4()), "c-node-0-docker", created, size_gb=1)


def ends(reported: list[Event]) -> dict[str, datetime]:
    return {e.volume_id: e.deleted_at for e in reported if isinstance(e, VolumeDeleted)}


async def test_a_report_retried_after_a_failure_keeps_the_window_the_first_listing_without_it_closed(
        notes: billing.Notes) -> None:
    r, row, st = Reporter(notes, failures=1), Row(), TaskState()
    v = volume(T0)
    st.billed[v.id] = v
    await billing.noting(r, row, st, {v.id: billing.VOLUME}, {}, T0 + timedelta(seconds=5))  # deleting
    with pytest.raises(TimeoutError):
        await billing.noting(r, row, st, {}, {}, T0 + timedelta(seconds=6))  # gone; the report fails
    await billing.noting(r, row, st, {}, {}, T0 + timedelta(seconds=13))  # the retry, 7 s later
    assert ends(r.reported) == {v.id: T0 + timedelta(seconds=5.5)}  # between the last sighting and the first miss
    assert st.billed == {}


async def test_a_task_resuming_a_killed_copys_delete_ends_what_it_saw_at_its_last_sighting(
        notes: billing.Notes) -> None:
    row = Row()
    killed, st = Reporter(notes), TaskState()
    a, b, kept = volume(T0), volume(T0), volume(T0)
    # watch_going saw a still there later in the pass than its listing (T0+5.4)
    st.billed.update({a.id: replace(a, seen_at=T0 + timedelta(seconds=5.4)), b.id: b, kept.id: kept})
    # the first copy's last pass saw the three still there (deleting); then it was killed
    await billing.noting(killed, row, st, dict.fromkeys((a.id, b.id, kept.id), billing.VOLUME), {},
                         T0 + timedelta(seconds=5))
    assert killed.reported == []
    # the copy resuming the delete, with none of that memory, first looks 6 s later: two are gone, one is left
    resumed, fresh = Reporter(notes), TaskState()
    await billing.noting(resumed, row, fresh, {kept.id: billing.VOLUME}, {}, T0 + timedelta(seconds=11))
    assert ends(resumed.reported) == {a.id: T0 + timedelta(seconds=5.4), b.id: T0 + timedelta(seconds=5)}
    # the one it sees go itself ends within its own window, and the note goes with the last billed resource
    await billing.noting(resumed, row, fresh, {}, {}, T0 + timedelta(seconds=12))
    assert ends(resumed.reported)[kept.id] == T0 + timedelta(seconds=11.5)
    assert fresh.billed == {}
    with pytest.raises(nats.js.errors.KeyNotFoundError):
        await (await notes._bucket()).get(row.uuid)
    # a later task finds no note, so reports nothing again
    again = Reporter(notes)
    await billing.noting(again, row, TaskState(), {}, {}, T0 + timedelta(seconds=20))
    assert again.reported == []


async def test_a_volume_seen_going_while_the_teardown_went_on_ends_within_that_look_not_the_whole_pass(
        notes: billing.Notes) -> None:
    r, row, st = Reporter(notes), Row(), TaskState()
    v = volume(T0)
    st.billed[v.id] = v
    await billing.noting(r, row, st, {v.id: billing.VOLUME}, {}, T0 + timedelta(seconds=5))
    # the next pass lists it (T0+6) and deletes it, then spends 3 s on ports, router and network; meanwhile
    # watch_going saw it still there at T0+6.5 and gone at T0+7
    st.billed[v.id] = replace(st.billed[v.id], seen_at=T0 + timedelta(seconds=6.5))
    await billing.noting(r, row, st, {v.id: billing.VOLUME}, {}, T0 + timedelta(seconds=6),
                         vanished={v.id: T0 + timedelta(seconds=7)})
    assert ends(r.reported) == {v.id: T0 + timedelta(seconds=6.75)}
    assert st.billed == {}
    with pytest.raises(nats.js.errors.KeyNotFoundError):  # nothing left to note
        await (await notes._bucket()).get(row.uuid)


async def test_a_copy_killed_during_its_first_teardown_call_leaves_the_volumes_it_was_deleting_noted(
        notes: billing.Notes) -> None:
    row, st = Row(), TaskState()
    v = volume(T0)  # reported at its create, never listed by the delete path yet
    st.billed[v.id] = v
    await billing.note_going(Reporter(notes), row, st, T0 + timedelta(seconds=5))  # the pass starts; killed in it
    resumed = Reporter(notes)
    await billing.noting(resumed, row, TaskState(), {}, {}, T0 + timedelta(seconds=15))
    assert ends(resumed.reported) == {v.id: T0 + timedelta(seconds=5)}


async def test_a_note_the_store_refused_is_recalled_by_the_same_copys_next_task_at_its_later_sighting(
        notes: billing.Notes) -> None:
    row, st = Row(), TaskState()
    v = volume(T0)
    st.billed[v.id] = v
    await billing.note_going(Reporter(notes), row, st, T0 + timedelta(seconds=5))  # written: seen at T0+5
    bucket = await notes._bucket()
    info = await notes.js.stream_info(f"KV_{notes.config.bucket}")
    await notes.js.update_stream(info.config.evolve(sealed=True))  # the store takes no more writes; reads go on
    st.billed[v.id] = replace(st.billed[v.id], seen_at=T0 + timedelta(seconds=9))  # about to send its delete
    await billing.note_going(Reporter(notes), row, st, T0 + timedelta(seconds=9))  # refused: a warning
    kept = json.loads((await bucket.get(row.uuid)).value)["present"][v.id]["seen"]
    assert kept == (T0 + timedelta(seconds=5)).isoformat()
    # the lease lost, then taken back by this copy: its new task ends the volume at the note it could not write
    resumed = Reporter(notes)
    await billing.noting(resumed, row, TaskState(), {}, {}, T0 + timedelta(seconds=30))
    assert ends(resumed.reported) == {v.id: T0 + timedelta(seconds=9)}


async def test_a_task_that_only_recalled_a_volume_notes_it_at_the_recalled_sighting_not_at_its_own_pass(
        notes: billing.Notes) -> None:
    row, st = Row(), TaskState()
    v = volume(T0)
    st.billed[v.id] = v
    await billing.note_going(Reporter(notes), row, st, T0 + timedelta(seconds=5))  # deleted just after; killed
    # the next task recalls it, notes what its teardown is about to delete (the volume is gone by now), is killed
    second = TaskState()
    await billing.recall(Reporter(notes), row, second)
    await billing.note_going(Reporter(notes), row, second, T0 + timedelta(seconds=20))
    # the third ends it at the first task's sighting, however many tasks were killed in between
    third = Reporter(notes)
    await billing.noting(third, row, TaskState(), {}, {}, T0 + timedelta(seconds=40))
    assert ends(third.reported) == {v.id: T0 + timedelta(seconds=5)}
