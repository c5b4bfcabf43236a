"""``GET /v1/events``: Cove's events as server-sent events (a Cove extension, for those who cannot reach NATS).

One subscription per API process: the ``EventHub`` holds a single ordered push consumer on ``cove.evt.>`` (deliver
new), reads each message's envelope head (type, project, cluster) once, renders the SSE frame once and hands it to
every connected client whose filter matches (a bounded queue each). A client never costs a JetStream consumer.

The event id is the message's ``COVE_EVENTS`` stream sequence. A client that reconnects with ``Last-Event-ID: N``
(or ``?last_event_id=N``) is first registered with the hub (so nothing published from then on is missed), then
replayed from the stream by direct message gets (``STREAM.MSG.GET`` with ``seq`` and ``next_by_subj``: the next
stored message at or after ``N+1`` on its subject filter, one request each, no consumer) up to the end of the stream,
and then served from its queue, skipping what the replay already sent (sequences only grow): no event lost, none
repeated. A client too slow for its queue is disconnected; it resumes the same way.

Filters: ``cluster=<uuid>``, ``type=<EventType>`` (repeatable or comma-separated). Scope: the caller's project;
an admin sees every project, or one with ``project_id=``. A comment (``: keep-alive``) is sent every
``keepalive`` seconds; at each, the token is checked again (cached by Keystone's validation, dropped on revocation
or expiry) and the stream ends cleanly (``event: end``) once it no longer validates or expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec
import nats.errors
import nats.js.errors
import structlog
from aiohttp import web
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from proto import subjects
from services.api import policy
from services.api.errors import ApiError, bad_request
from services.api.keys import KEYSTONE, WRITER
from services.api.middleware import REQUEST_ID, REQUEST_ID_HEADER, context
from services.runtime import metrics
from services.runtime.bus import Bus

log = structlog.get_logger(__name__)

routes = web.RouteTableDef()

DEFAULT_KEEPALIVE = 15.0
DEFAULT_QUEUE = 1024
WRITE_BATCH = 256
"""Frames already queued for a client are written together (one socket write under load, not one per event)."""


class _Head(msgspec.Struct):
    """The envelope fields a filter needs; the payload is not decoded."""

    type: str
    project_id: str | None = None
    cluster_id: str | None = None


_head = msgspec.json.Decoder(_Head)


@dataclass(frozen=True)
class Item:
    seq: int
    head: _Head
    frame: bytes


END = Item(0, _Head(type=""), b"")
"""Put on a client's queue to end its stream (overflow or shutdown)."""


@dataclass(frozen=True)
class Filter:
    project_id: str | None
    """None: every project (admin)."""
    cluster_id: str | None = None
    types: frozenset[str] = frozenset()

    def matches(self, head: _Head) -> bool:
        return (
            (self.project_id is None or head.project_id == self.project_id)
            and (self.cluster_id is None or head.cluster_id == self.cluster_id)
            and (not self.types or head.type in self.types)
        )

    def replay_subject(self) -> str:
        return subjects.any_cluster_events(self.cluster_id) if self.cluster_id else subjects.EVENTS_ALL


@dataclass(eq=False)
class Client:
    filter: Filter
    queue: asyncio.Queue[Item] = field(default_factory=lambda: asyncio.Queue(DEFAULT_QUEUE))
    overflowed: bool = False


def frame(seq: int, event_type: str, data: bytes) -> bytes:
    """One SSE message: ``id`` is the stream sequence, ``event`` the event type, ``data`` the envelope (JSON)."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, event_type.encode(), data)


class EventHub:
    """The API process's one subscription to ``COVE_EVENTS``, fanned out to the SSE clients."""

    def __init__(self, bus: Bus, *, keepalive: float | None = None, queue_size: int = DEFAULT_QUEUE) -> None:
        self.bus = bus
        self.keepalive = keepalive if keepalive is not None else float(
            os.environ.get("COVE_API_SSE_KEEPALIVE", str(DEFAULT_KEEPALIVE)))
        self.queue_size = queue_size
        self.clients: set[Client] = set()
        self.last_seq = 0
        self._sub: object | None = None

    async def start(self) -> None:
        self._sub = await self.bus.js.subscribe(
            subjects.EVENTS_ALL, cb=self._on_msg, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW,
            pending_msgs_limit=-1, pending_bytes_limit=-1,
        )

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()  # type: ignore[attr-defined]
            self._sub = None
        for client in list(self.clients):
            self._end(client)

    def subscribe(self, flt: Filter) -> Client:
        client = Client(flt, asyncio.Queue(self.queue_size + 1))
        self.clients.add(client)
        metrics.SSE_CLIENTS.set(len(self.clients))
        return client

    def unsubscribe(self, client: Client) -> None:
        self.clients.discard(client)
        metrics.SSE_CLIENTS.set(len(self.clients))

    def _end(self, client: Client) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            client.queue.put_nowait(END)

    async def _on_msg(self, msg: Msg) -> None:
        self.publish(msg.metadata.sequence.stream, msg.data)

    def publish(self, seq: int, data: bytes) -> None:
        """Hand the stored event ``seq`` to every client whose filter matches."""
        try:
            head = _head.decode(data)
        except msgspec.DecodeError:
            log.warning("sse_undecodable_event", seq=seq)
            return
        self.last_seq = seq
        item = Item(seq, head, frame(seq, head.type, data))
        for client in self.clients:
            if client.overflowed or not client.filter.matches(head):
                continue
            if client.queue.qsize() >= self.queue_size:
                client.overflowed = True  # it reconnects with Last-Event-ID and resumes from the stream
                metrics.SSE_DISCONNECTED_SLOW.inc()
                self._end(client)
                continue
            client.queue.put_nowait(item)

    async def replay(self, flt: Filter, after: int) -> AsyncIterator[Item]:
        """The stored events after sequence ``after`` that ``flt`` matches, up to the end of the stream."""
        seq = after + 1
        subject = flt.replay_subject()
        while True:
            try:
                raw = await self.bus.js.get_msg(subjects.EVENTS_STREAM, seq=seq, subject=subject, next=True)
            except nats.js.errors.NotFoundError:
                return
            if raw.seq is None or raw.data is None:
                return
            seq = raw.seq + 1
            try:
                head = _head.decode(raw.data)
            except msgspec.DecodeError:
                continue
            if flt.matches(head):
                yield Item(raw.seq, head, frame(raw.seq, head.type, raw.data))


HUB = web.AppKey("event_hub", EventHub)


async def hub_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the hub lives as long as the application; its clients' streams end when it stops."""
    hub = EventHub(app[WRITER].bus)
    await hub.start()
    app[HUB] = hub
    yield
    await hub.stop()


def _filter(request: web.Request) -> Filter:
    ctx = context(request)
    query = request.query
    project = query.get("project_id")
    if project is not None and project != ctx.project_id:
        policy.require(request, "event:get_all_all_projects")
    elif project is None and policy.allowed(request, "event:get_all_all_projects"):
        project = None
    else:
        policy.require(request, "event:get_all")
        project = ctx.project_id
    types = frozenset(t for value in query.getall("type", []) for t in value.split(",") if t)
    return Filter(project_id=project, cluster_id=query.get("cluster") or None, types=types)


def _last_event_id(request: web.Request) -> int | None:
    value = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    if value is None or value == "":
        return None
    try:
        seq = int(value)
    except ValueError:
        raise bad_request(f"Invalid Last-Event-ID {value!r}: a stream sequence (an integer) is expected.") from None
    if seq < 0:
        raise bad_request(f"Invalid Last-Event-ID {value!r}: a stream sequence (an integer) is expected.")
    return seq


def _until_check(request: web.Request, keepalive: float) -> float:
    """Seconds to the next keep-alive and token check: the keep-alive interval, or less when the token expires
    sooner (the stream then ends at its expiry, not up to an interval later)."""
    left = (context(request).expires_at - datetime.now(UTC)).total_seconds()
    return max(0.0, min(keepalive, left))


async def _still_valid(request: web.Request) -> bool:
    ctx = context(request)
    if ctx.expires_at <= datetime.now(UTC):
        return False
    try:
        await request.app[KEYSTONE].validate(ctx.token)
    except ApiError:
        return False
    return True


@routes.get("/v1/events")
async def stream_events(request: web.Request) -> web.StreamResponse:
    flt = _filter(request)
    after = _last_event_id(request)
    hub = request.app[HUB]
    client = hub.subscribe(flt)
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
        REQUEST_ID_HEADER: request.get(REQUEST_ID, ""),
    })
    try:
        await response.prepare(request)
        await response.write(b"retry: 1000\n\n")
        sent = after or 0
        if after is not None:
            async for item in hub.replay(flt, after):
                await response.write(item.frame)
                metrics.SSE_EVENTS_SENT.inc()
                sent = item.seq
        reason = "closed"
        loop = asyncio.get_running_loop()
        next_check = loop.time() + _until_check(request, hub.keepalive)
        while True:
            timeout = next_check - loop.time()
            if timeout <= 0:
                if not await _still_valid(request):
                    reason = "token expired or revoked"
                    break
                await response.write(b": keep-alive\n\n")
                next_check = loop.time() + _until_check(request, hub.keepalive)
                continue
            try:
                item = await asyncio.wait_for(client.queue.get(), timeout)
            except TimeoutError:
                continue
            batch = [item]  # and whatever else is queued already: one write for all of it
            while not client.queue.empty() and len(batch) < WRITE_BATCH:
                batch.append(client.queue.get_nowait())
            frames = []
            for queued in batch:
                if queued is END:
                    break
                if queued.seq > sent:
                    frames.append(queued.frame)
                    sent = queued.seq
            if frames:
                await response.write(b"".join(frames))
                metrics.SSE_EVENTS_SENT.inc(len(frames))
            if any(queued is END for queued in batch):
                reason = "too slow: reconnect with Last-Event-ID" if client.overflowed else "server stopping"
                break
        await response.write(b"event: end\ndata: %s\n\n" % msgspec.json.encode({"reason": reason}))
        await response.write_eof()
    except (ConnectionResetError, nats.errors.Error) as exc:
        log.info("sse_client_gone", error=repr(exc))
    finally:
        hub.unsubscribe(client)
    return response
