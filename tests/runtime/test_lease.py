"""Leases in NATS JetStream's key-value store (services/runtime/lease.py) against a real nats-server: one holder at a
time, renewals keep a lease, a holder that stops renewing loses it to another after the TTL and learns it at its
next renewal or fencing check, and a singleton's work moves to the other copy."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import nats.js.errors
import pytest

from proto import streams
from services.runtime.bus import Bus
from services.runtime.lease import Lease, LeaseLost, Leases, LeaseSettings, Singleton
from tests.conftest import wait_for

TTL = 1.0


@pytest.fixture
async def two_copies(bus: Bus) -> AsyncIterator[tuple[Leases, Leases]]:
    """Two copies' leases in a bucket of the test's own (the session's NATS keeps buckets across tests)."""
    config = streams.leases_bucket().evolve(bucket=f"T_LEASES_{uuid.uuid4().hex[:8]}", ttl=TTL, replicas=1)
    settings = LeaseSettings(ttl=TTL, renew_every=0.2)
    a = await Leases.open(bus.js, holder="a", settings=settings, config=config)
    b = await Leases.open(bus.js, holder="b", settings=settings, config=config)
    yield a, b
    await a.stop()
    await b.stop()
    await bus.js.delete_key_value(config.bucket)


async def test_one_holder_at_a_time_renewed_past_its_ttl_then_released(two_copies: tuple[Leases, Leases]) -> None:
    a, b = two_copies
    a.start()
    lease = await a.acquire("cluster.c1")
    assert lease is not None and lease.token == f"cluster.c1@{lease.epoch}"
    assert await b.acquire("cluster.c1") is None
    first = lease.revision
    await asyncio.sleep(3 * TTL)  # three TTLs: only the renewals keep it
    assert lease.held and lease.revision > first and a.renewals >= 3
    assert await b.acquire("cluster.c1") is None
    await a.check(lease)  # still ours: the fencing check passes
    assert await a.live_keys("cluster.") == {"cluster.c1"}
    await a.release(lease)
    taken = await b.acquire("cluster.c1")
    assert taken is not None and taken.epoch > lease.epoch
    with pytest.raises(LeaseLost):
        await a.check(lease)


async def test_a_holder_that_stops_renewing_loses_to_another_and_learns_it(two_copies: tuple[Leases, Leases]) -> None:
    a, b = two_copies
    lost: list[Lease] = []
    lease = await a.acquire("cluster.c2", on_lost=lost.append)
    assert lease is not None
    # a never renews (a paused process): the TTL passes and b takes the key
    taken = await wait_for(lambda: b.acquire("cluster.c2"), timeout=5 * TTL, interval=0.1)
    assert taken.epoch > lease.epoch and lease.held  # a has not noticed yet
    b.start()  # b renews what it holds
    with pytest.raises(LeaseLost, match="taken over"):
        await a.check(lease)  # the fencing check before a publish
    assert not lease.held and lost == [lease]
    # a renewal by the old holder is refused too and does not disturb the new one
    other = await a.acquire("cluster.c3")
    assert other is not None
    await wait_for(lambda: b.acquire("cluster.c3"), timeout=5 * TTL, interval=0.1)
    await a.renew([other])
    assert not other.held and "refused" in other.reason
    await b.check(taken)


async def test_a_lease_that_expires_while_another_copy_asks_for_it_is_taken_at_the_next_attempt(
    two_copies: tuple[Leases, Leases], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """nats-py's ``create``, refused because the key holds a value, looks the key up to tell a deleted one; when the
    value expires between the two (the TTL, seen in make test), the look-up raises ``KeyNotFoundError``. Asking for
    the lease then is "not now" (None), never an error, and the next attempt takes it."""
    a, b = two_copies
    held = await a.acquire("cluster.c5")
    assert held is not None
    real_get = b.kv._get

    async def expired_meanwhile(key: str, revision: int | None = None) -> object:
        raise nats.js.errors.KeyNotFoundError

    monkeypatch.setattr(b.kv, "_get", expired_meanwhile)
    assert await b.acquire("cluster.c5") is None  # the refused create's look-up finds nothing
    monkeypatch.setattr(b.kv, "_get", real_get)
    taken = await wait_for(lambda: b.acquire("cluster.c5"), timeout=5 * TTL, interval=0.1)
    assert taken.epoch > held.epoch


async def test_a_copy_started_again_under_its_name_reclaims_its_predecessors_leases_at_once(
    two_copies: tuple[Leases, Leases], bus: Bus,
) -> None:
    a, b = two_copies
    old = await a.acquire("cluster.c4")
    assert old is not None
    successor = Leases(a.kv, holder="a", settings=a.settings)  # the same copy, a new process: a's leases unknown
    new = await successor.acquire("cluster.c4")
    assert new is not None and new.epoch > old.epoch
    assert await b.acquire("cluster.c4") is None  # another copy still may not
    with pytest.raises(LeaseLost):
        await a.check(old)  # and the predecessor, were it alive after all, is fenced off


async def test_a_singletons_work_runs_in_one_copy_and_moves_when_its_holder_dies(
    two_copies: tuple[Leases, Leases],
) -> None:
    a, b = two_copies
    running: set[str] = set()

    def singleton(leases: Leases) -> Singleton:
        return Singleton(leases, "singleton.reaper", start_work=lambda _: running.add(leases.holder),
                         stop_work=lambda: running.discard(leases.holder))

    sa, sb = singleton(a), singleton(b)
    a.start()
    b.start()
    sa.start()
    await wait_for(lambda: sa.leading, timeout=5)
    sb.start()
    await asyncio.sleep(3 * TTL)
    assert running == {"a"} and not sb.leading
    # a dies: no renewal, no release
    assert sa._task is not None
    sa._task.cancel()  # a crash: no stop_work, no release (a clean stop would release at once)
    await a.stop(release=False)
    running.discard("a")
    await wait_for(lambda: sb.leading, timeout=3 * TTL + 2, interval=0.05, message="b takes over the singleton")
    assert running == {"b"} and sb.terms == 1
    await sb.stop()
    assert running == set()
