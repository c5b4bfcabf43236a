"""How far the API's projection got, learned from PostgreSQL at commit time instead of by polling.

Migration 0005 makes every commit of the projection's checkpoint ``NOTIFY cove_api_applied '<consumer> <seq>'``
and every admission decision ``NOTIFY cove_api_admission '<cluster uuid> <admitted|rejected>'`` (0006). One ``Freshness`` per API process
LISTENs on a connection of its own and

* wakes writers waiting for their event to be applied (``wait_applied``: read-your-writes with no polling),
* wakes a cluster create waiting for the scheduler's decision (``wait_admission``),
* versions the read cache (``ReadCache``): a cached response is served only while the checkpoint it was built
  at is still the latest one this process heard of; any applied event invalidates it. A writer that waited for
  its sequence has heard of it, so a read after a write never sees a response cached before that write;
* versions the template cache (``TemplateCache``) by ``NOTIFY cove_api_templates`` (migration 0007), sent by the
  transaction that changed a template before the one for its checkpoint: a cluster create after a template
  change this process waited for never uses the template as it was before.

When the LISTEN connection is down (``live`` is False) nothing is cached and waits fall back to polling the
checkpoint table; on reconnection the checkpoint is read again before anything is trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from proto.events import ClusterTemplate
from services.api.store import Scope, find_templates

log = structlog.get_logger(__name__)

APPLIED_CHANNEL = "cove_api_applied"
ADMISSION_CHANNEL = "cove_api_admission"
TEMPLATES_CHANNEL = "cove_api_templates"


@dataclass
class Freshness:
    pool: asyncpg.Pool
    consumer: str
    """The projection whose checkpoint counts (``store.PROJECTION``)."""
    reconnect_interval: float = 1.0
    seq: int = 0
    """The highest checkpoint this process heard of (valid while ``live``)."""
    live: bool = False
    _conn: asyncpg.pool.PoolConnectionProxy | None = None
    _waiters: dict[int, list[asyncio.Future[None]]] = field(default_factory=dict)
    _admission: dict[str, list[asyncio.Future[str | None]]] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    _closing: bool = False
    admission_wakeups: int = 0
    epoch: int = 0
    """Bumped whenever ``live`` is lost, so a cache entry from before an outage is never served after it."""
    template_changes: int = 0
    """Transactions that changed templates this process heard of (``TemplateCache``)."""

    async def start(self) -> None:
        try:
            await self._connect()
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("freshness_listen_failed", error=repr(exc))
            self._schedule_reconnect()

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._drop()

    async def _connect(self) -> None:
        conn = await self.pool.acquire()
        try:
            await conn.add_listener(APPLIED_CHANNEL, self._on_applied)
            await conn.add_listener(ADMISSION_CHANNEL, self._on_admission)
            await conn.add_listener(TEMPLATES_CHANNEL, self._on_templates)
            conn.add_termination_listener(self._on_terminated)
            seq = await conn.fetchval("SELECT stream_seq FROM checkpoint WHERE consumer = $1", self.consumer)
        except BaseException:
            await self.pool.release(conn)
            raise
        self._conn = conn
        self._advance(int(seq or 0))
        self.live = True
        log.info("freshness_listening", checkpoint=self.seq)

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(Exception):
            await conn.remove_listener(APPLIED_CHANNEL, self._on_applied)
            await conn.remove_listener(ADMISSION_CHANNEL, self._on_admission)
            await conn.remove_listener(TEMPLATES_CHANNEL, self._on_templates)
        with contextlib.suppress(Exception):
            await self.pool.release(conn)

    def _on_terminated(self, conn: Any) -> None:
        if self._closing:
            return
        log.warning("freshness_listen_lost")
        self.live = False
        # Creates waiting for a decision will hear no NOTIFY now: wake them to read the row instead.
        for waiting in self._admission.values():
            for fut in waiting:
                if not fut.done():
                    fut.set_result(None)
        self.epoch += 1
        self._conn = None
        self._schedule_reconnect()

    def _schedule_reconnect(self) -> None:
        if self._closing or (self._task is not None and not self._task.done()):
            return
        self._task = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        while not self._closing and not self.live:
            await asyncio.sleep(self.reconnect_interval)
            try:
                await self._connect()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("freshness_listen_failed", error=repr(exc))

    # ------------------------------------------------------------------ notifications

    def _on_applied(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        consumer, _, raw = payload.rpartition(" ")
        if consumer != self.consumer:
            return
        seq = int(raw)
        if seq < self.seq:
            # The checkpoint went back: the read model is being rebuilt (replayed from the stream). Nothing
            # cached before may be served; waiters wait until the replay passes their sequence again.
            log.warning("freshness_checkpoint_rewound", checkpoint=seq, was=self.seq)
            self.epoch += 1
            self.seq = seq
            return
        self._advance(seq)

    def _advance(self, seq: int) -> None:
        if seq <= self.seq:
            return
        self.seq = seq
        if self._waiters:
            for target in [t for t in self._waiters if t <= seq]:
                for fut in self._waiters.pop(target):
                    if not fut.done():
                        fut.set_result(None)

    def _on_admission(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        cluster_uuid, _, decision = payload.partition(" ")
        for fut in self._admission.pop(cluster_uuid, ()):
            if not fut.done():
                fut.set_result(decision or None)
                self.admission_wakeups += 1

    def _on_templates(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self.template_changes += 1

    # ------------------------------------------------------------------ waiting

    async def wait_applied(self, seq: int, timeout: float) -> bool | None:
        """True once the checkpoint reaches ``seq``, False after ``timeout``; None when not listening (the caller
        polls instead)."""
        if not self.live:
            return None
        if self.seq >= seq:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(seq, []).append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return self.seq >= seq
        finally:
            waiting = self._waiters.get(seq)
            if waiting is not None and fut in waiting:
                waiting.remove(fut)
                if not waiting:
                    del self._waiters[seq]

    def admission_waiter(self, cluster_uuid: str) -> asyncio.Future[str | None] | None:
        """A future resolved with the decision (``admitted`` or ``rejected``) when ``cluster_uuid``'s admission is
        recorded (None when not listening). Register it BEFORE the decision can be recorded (before publishing the
        create), then await it."""
        if not self.live:
            return None
        fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._admission.setdefault(cluster_uuid, []).append(fut)
        return fut

    def forget_admission(self, cluster_uuid: str, fut: asyncio.Future[str | None]) -> None:
        waiting = self._admission.get(cluster_uuid)
        if waiting is not None and fut in waiting:
            waiting.remove(fut)
            if not waiting:
                del self._admission[cluster_uuid]


@dataclass
class ReadCache:
    """Ready-to-serve response bodies, valid while the projection has applied nothing since they were built.

    ``get(key)`` returns the body or None; ``version()`` is read BEFORE building a body, and ``put(key, version,
    body)`` stores it under that version (a body built across a commit is then already stale, never wrong)."""

    freshness: Freshness | None
    max_entries: int = 4096
    """Enough for a show of every cluster a busy dashboard polls (a show's body is about 1 KB)."""
    max_bytes: int = 64 * 1024 * 1024
    _entries: OrderedDict[Hashable, tuple[tuple[int, int], bytes]] = field(default_factory=OrderedDict)
    _inflight: dict[Hashable, tuple[tuple[int, int], asyncio.Future[bytes]]] = field(default_factory=dict)
    _bytes: int = 0
    hits: int = 0
    misses: int = 0
    joined: int = 0

    def version(self) -> tuple[int, int] | None:
        f = self.freshness
        if f is None or not f.live:
            return None
        return (f.epoch, f.seq)

    def get(self, key: Hashable) -> bytes | None:
        current = self.version()
        found = self._entries.get(key)
        if current is None or found is None or found[0] != current:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return found[1]

    def put(self, key: Hashable, version: tuple[int, int] | None, body: bytes) -> None:
        if version is None or version != self.version() or len(body) > self.max_bytes // 4:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= len(old[1])
        self._entries[key] = (version, body)
        self._bytes += len(body)
        while self._entries and (len(self._entries) > self.max_entries or self._bytes > self.max_bytes):
            _, (_, dropped) = self._entries.popitem(last=False)
            self._bytes -= len(dropped)

    async def fill(self, key: Hashable, version: tuple[int, int] | None, make: Callable[[], Awaitable[bytes]]
                   ) -> bytes:
        """``make()`` the body and cache it under ``version``. Concurrent misses of the same key at the same
        version share one ``make()`` (after a change, 16 connections asking for the same page build it once);
        a request that knows of a newer checkpoint never joins an older build."""
        if version is not None:
            running = self._inflight.get(key)
            if running is not None and running[0] == version:
                self.joined += 1
                try:
                    return await asyncio.shield(running[1])
                except _LeaderGone:
                    pass  # the first request went away: build our own
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        if version is not None:
            self._inflight[key] = (version, fut)
        try:
            body = await make()
        except Exception as exc:
            fut.set_exception(exc)  # the same key and inputs: the same answer (e.g. a 400 for a bad marker)
            raise
        except BaseException:
            fut.set_exception(_LeaderGone())
            raise
        else:
            fut.set_result(body)
            self.put(key, version, body)
            return body
        finally:
            if fut.done():
                fut.exception()  # mark it retrieved: asyncio must not warn when nobody joined
            current = self._inflight.get(key)
            if current is not None and current[1] is fut:
                del self._inflight[key]


class _LeaderGone(Exception):
    """The request building a shared body was cancelled."""


@dataclass
class TemplateCache:
    """Template lookups (``store.find_templates``) kept until a template changes: a cluster create then costs no
    query for its template. Valid while ``freshness`` is live and has heard of no template change (nor lost its
    connection) since the lookup started; without a live ``freshness`` every lookup queries. The templates handed
    out are shared: callers must not change them."""

    freshness: Freshness | None
    max_entries: int = 1024
    _entries: OrderedDict[Hashable, tuple[tuple[int, int], list[ClusterTemplate]]] = field(
        default_factory=OrderedDict)
    hits: int = 0
    misses: int = 0

    def version(self) -> tuple[int, int] | None:
        f = self.freshness
        if f is None or not f.live:
            return None
        return (f.epoch, f.template_changes)

    async def find(self, pool: asyncpg.Pool, scope: Scope, ident: str, *, include_hidden: bool = False
                   ) -> list[ClusterTemplate]:
        key = (scope, ident, include_hidden)
        version = self.version()  # read BEFORE querying: a change committed meanwhile makes the result stale
        found = self._entries.get(key)
        if version is not None and found is not None and found[0] == version:
            self._entries.move_to_end(key)
            self.hits += 1
            return found[1]
        self.misses += 1
        templates = await find_templates(pool, scope, ident, include_hidden=include_hidden)
        if version is not None and version == self.version():
            self._entries[key] = (version, templates)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        return templates
