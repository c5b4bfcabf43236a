"""Leases in the NATS JetStream key-value store: work that must have one owner among a service's copies.

A lease is a key of the bucket ``COVE_LEASES`` (``proto.streams.leases_bucket``: one revision per key, every
value gone ``ttl`` seconds after it was written). A copy

* acquires it with ``create`` (succeeds only when the key holds no value: never taken, released, or expired);
* renews it with ``update(last=revision)``: every held lease of the copy in one batch per ``renew_every``
  (concurrent publishes, so 10,000 leases cost one round trip's time, not 10,000);
* releases it on shutdown with a conditional delete;
* loses it when a renewal is refused (someone else's revision, or none: the TTL passed) or when no renewal has
  succeeded for ``ttl`` seconds (NATS unreachable). ``Lease.lost`` is set and ``on_lost`` called at once.

Fencing (docs/adr/0011): ``Lease.token`` (``<key>@<revision of the acquisition>``) goes in the ``Cove-Lease``
header of every event the holder publishes, and ``Leases.check`` reads the key's current value before the publish:
a holder whose lease was taken over (another value) or expired (no value) raises ``LeaseLost`` instead of
publishing. The publish itself stays conditional on the subject's last sequence (the single-writer check), which
refuses a stale holder's write once the new holder has written anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import nats.errors
import nats.js.errors
import structlog
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, PubAck
from nats.js.kv import KeyValue

from proto import streams
from proto.envelope import Envelope
from services.runtime.bus import (
    Bus,
)
from services.runtime.keyvalue import open_bucket
from services.runtime.service import patiently

log = structlog.get_logger(__name__)

LEASE_HEADER = "Cove-Lease"
"""The fencing token of the lease under which an event was published (``<key>@<revision>``)."""


class LeaseLost(Exception):
    """The lease is no longer this holder's: it must stop acting on what the lease covers."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"lease {key} lost: {reason}")
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class LeaseSettings:
    ttl: float = streams.LEASE_TTL_S
    """Seconds a lease lives after its last renewal (the bucket's max age)."""
    renew_every: float = 0.0
    """Seconds between two renewal batches (default: a third of ``ttl``)."""

    @property
    def period(self) -> float:
        return self.renew_every or self.ttl / 3


@dataclass(eq=False)
class Lease:
    key: str
    value: bytes
    epoch: int
    """The revision the holder acquired the lease at: grows with every new holder (the fencing token)."""
    revision: int
    """The latest revision this holder wrote (a renewal's ``update`` expects it)."""
    renewed: float
    """``time.monotonic()`` when the latest successful write of it was sent."""
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    on_lost: Callable[[Lease], None] | None = None
    reason: str = ""

    @property
    def token(self) -> str:
        return f"{self.key}@{self.epoch}"

    @property
    def held(self) -> bool:
        return not self.lost.is_set()


class Leases:
    """One copy's leases in one bucket. ``await Leases.open(js, holder=...)``, then ``start()`` the renewals."""

    def __init__(self, kv: KeyValue, *, holder: str, settings: LeaseSettings | None = None) -> None:
        self.kv = kv
        self.holder = holder
        self.settings = settings or LeaseSettings()
        self.held: dict[str, Lease] = {}
        self._task: asyncio.Task[None] | None = None
        self.renewals = 0
        """KV writes spent on renewals (benchmarks, tests)."""

    @classmethod
    async def open(
        cls, js: JetStreamContext, *, holder: str | None = None, settings: LeaseSettings | None = None,
        config: KeyValueConfig | None = None,
    ) -> Leases:
        """Create the bucket (or find it) and return this copy's leases; ``holder`` defaults to a fresh id. A
        copy starting while the JetStream cluster has no leader for the bucket asks again (``patiently``)."""
        config = config or streams.leases_bucket()
        if settings is not None and settings.ttl != config.ttl:
            config = config.evolve(ttl=settings.ttl)
        bucket = config

        async def find() -> tuple[KeyValue, float]:
            kv = await open_bucket(js, bucket)  # read through the leader: a check never sees an older value
            # the bucket's own TTL decides when a lease expires (it may have been made with another setting)
            info = await js.stream_info(f"KV_{bucket.bucket}")
            return kv, info.config.max_age or bucket.ttl or streams.LEASE_TTL_S

        kv, ttl = await patiently(f"JetStream: the key-value bucket {config.bucket}", find)
        return cls(kv, holder=holder or uuid.uuid4().hex[:12],
                   settings=LeaseSettings(ttl=ttl, renew_every=settings.renew_every if settings else 0.0))

    # ------------------------------------------------------------------------------------------- one lease

    async def acquire(self, key: str, on_lost: Callable[[Lease], None] | None = None) -> Lease | None:
        """Take the lease ``key`` if no one holds it, or if a predecessor of this copy does (a value naming this
        copy's ``holder`` that this process did not write: the same copy restarted, so the old process is gone);
        None when someone else holds it."""
        if (mine := self.held.get(key)) is not None and mine.held:
            return mine
        value = f"{self.holder}:{uuid.uuid4().hex[:8]}".encode()
        sent = time.monotonic()
        try:
            revision = await self.kv.create(key, value)
        except nats.js.errors.KeyNotFoundError:
            # nats-py's create, refused because the key holds a value, looks the key up to tell a deleted one; the
            # value expired between the two (seen in make test): as below, the next attempt creates it
            return None
        except nats.js.errors.KeyWrongLastSequenceError:
            try:
                entry = await self.kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                return None  # expired just now: the next attempt creates it
            if self.holder_of(entry.value) != self.holder or entry.revision is None:
                return None
            try:
                revision = await self.kv.update(key, value, last=entry.revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                return None
            log.info("lease_reclaimed", key=key, revision=revision, holder=self.holder)
        lease = Lease(key, value, revision, revision, sent, on_lost=on_lost)
        self.held[key] = lease
        log.debug("lease_acquired", key=key, revision=revision, holder=self.holder)
        return lease

    async def release(self, lease: Lease) -> None:
        """Give the lease up (shutdown, or the work is done): the next ``create`` of the key succeeds at once."""
        if self.held.get(lease.key) is lease:
            del self.held[lease.key]
        if not lease.held:
            return
        lease.lost.set()
        lease.reason = "released"
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, TimeoutError):
            await self.kv.delete(lease.key, last=lease.revision)

    async def check(self, lease: Lease) -> None:
        """The fencing check before a write: raises ``LeaseLost`` unless the key still holds this lease's value."""
        if not lease.held:
            raise LeaseLost(lease.key, lease.reason or "lost")
        try:
            entry = await self.kv.get(lease.key)
        except nats.js.errors.KeyNotFoundError:
            self._lose(lease, "expired")
            raise LeaseLost(lease.key, "expired") from None
        if entry.value != lease.value:
            self._lose(lease, f"taken over at revision {entry.revision}")
            raise LeaseLost(lease.key, lease.reason)

    async def live(self, prefix: str = "", *, timeout: float | None = None) -> dict[str, str]:
        """Every live lease under ``prefix`` (ending in a dot) and the copy holding it: one listing.

        Raises TimeoutError when the listing stalls for ``timeout`` seconds (default: the TTL) between two entries.
        The watch's end marker comes with the entry that leaves nothing pending: a NATS node lost during the
        listing, or the last pending entry expiring before it is delivered (values here live one TTL), can keep it
        from ever coming, and a caller that waited for it for ever would stop adopting (``loop.py``)."""
        watcher = await self.kv.watch(f"{prefix}>", ignore_deletes=True)
        found: dict[str, str] = {}
        wait = timeout if timeout is not None else max(self.settings.ttl, 1.0)
        try:
            while True:
                try:
                    entry = await watcher.updates(timeout=wait)
                except nats.errors.TimeoutError:
                    raise TimeoutError(f"listing the leases under {prefix!r} stalled for {wait:g}s") from None
                if entry is None:  # the end of what the bucket held
                    break
                found[entry.key] = self.holder_of(entry.value)
        finally:
            with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, TimeoutError):
                await watcher.stop()
        return found

    async def live_keys(self, prefix: str = "") -> set[str]:
        return set(await self.live(prefix))

    @staticmethod
    def holder_of(value: bytes | None) -> str:
        """The copy a lease's value names (``<holder>:<nonce>``)."""
        return (value or b"").decode(errors="replace").split(":", 1)[0]

    # ------------------------------------------------------------------------------------------- renewals

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._renew_forever(), name="lease-renewals")

    async def stop(self, *, release: bool = True) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if release:
            await asyncio.gather(*(self.release(lease) for lease in list(self.held.values())))

    async def _renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.period)
            try:
                await self.renew(list(self.held.values()))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed batch is retried; the TTL decides
                log.warning("lease_renewal_failed", error=repr(exc))

    async def renew(self, leases: Iterable[Lease]) -> None:
        """One batch: every lease updated at once, conditional on its last revision."""
        batch = [lease for lease in leases if lease.held]
        await asyncio.gather(*(self._renew(lease) for lease in batch))

    async def _renew(self, lease: Lease) -> None:
        sent = time.monotonic()
        try:
            lease.revision = await self.kv.update(lease.key, lease.value, last=lease.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            self._lose(lease, "renewal refused: taken over or expired")
            return
        except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
            if sent - lease.renewed >= self.settings.ttl:
                self._lose(lease, f"not renewed for {self.settings.ttl}s ({exc!r})")
            return
        if sent - lease.renewed >= self.settings.ttl:
            # The write went through, but after the TTL had passed: someone may have held the key meanwhile.
            self._lose(lease, "renewed too late")
            return
        lease.renewed = sent
        self.renewals += 1

    def _lose(self, lease: Lease, reason: str) -> None:
        if not lease.held:
            return
        lease.reason = reason
        lease.lost.set()
        if self.held.get(lease.key) is lease:
            del self.held[lease.key]
        log.warning("lease_lost", key=lease.key, epoch=lease.epoch, reason=reason, holder=self.holder)
        if lease.on_lost is not None:
            lease.on_lost(lease)


class Singleton:
    """Work that runs in one copy at a time: ``start_work`` once this copy holds ``key``, ``stop_work`` when it
    loses or gives it up; a copy without it tries again every renewal period, so it takes over within about
    ``ttl`` of the holder's death."""

    def __init__(
        self, leases: Leases, key: str, *,
        start_work: Callable[[Lease], object], stop_work: Callable[[], object],
    ) -> None:
        self.leases = leases
        self.key = key
        self._start = start_work
        self._stop = stop_work
        self.lease: Lease | None = None
        self._task: asyncio.Task[None] | None = None
        self.terms = 0
        """How many times this copy took the lease."""

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"singleton:{self.key}")

    @property
    def leading(self) -> bool:
        return self.lease is not None and self.lease.held

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.lease is not None:
            await _maybe_await(self._stop())
            await self.leases.release(self.lease)
            self.lease = None

    async def _run(self) -> None:
        while True:
            try:
                lease = await self.leases.acquire(self.key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - NATS unreachable: try again next period
                log.warning("singleton_acquire_failed", key=self.key, error=repr(exc))
                lease = None
            if lease is None:
                await asyncio.sleep(self.leases.settings.period)
                continue
            self.lease = lease
            self.terms += 1
            log.info("singleton_leading", key=self.key, epoch=lease.epoch, holder=self.leases.holder)
            await _maybe_await(self._start(lease))
            await lease.lost.wait()
            log.warning("singleton_lost", key=self.key, reason=lease.reason)
            await _maybe_await(self._stop())
            self.lease = None


async def _maybe_await(value: object) -> None:
    if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
        await value


async def publish_fenced(
    bus: Bus, leases: Leases, lease: Lease, subject: str, envelope: Envelope, *, msg_id: str | None = None,
    expected_last_subject_seq: int | None = None, timeout: float = 5.0, check: bool = True,
) -> PubAck:
    """``Bus.publish`` under a lease: the fencing check first (``LeaseLost`` when the lease is no longer ours),
    then the publish with the lease's token in ``Cove-Lease`` and, as always, conditional on the subject's last
    sequence (``ConcurrencyConflict``). ``check=False`` skips the read of the key (the next of a run of publishes
    chained by their expected sequences, the first of which was checked) but not a loss already known."""
    if check:
        await leases.check(lease)
    elif not lease.held:
        raise LeaseLost(lease.key, lease.reason or "lost")
    return await bus.publish(subject, envelope, msg_id=msg_id, expected_last_subject_seq=expected_last_subject_seq,
                             timeout=timeout, extra_headers={LEASE_HEADER: lease.token})
