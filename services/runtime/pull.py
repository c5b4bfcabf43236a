"""A standing pull on a durable JetStream consumer: messages arrive while the previous batch is being handled.

nats-py's ``fetch`` sends a pull request per batch (two when the consumer is idle), waits a round trip for the first
message and then awaits every further message through ``asyncio.wait_for``; on the create path that was about a
tenth of a millisecond of client CPU per consumed message, plus a round trip of latency per batch. ``PullFeed``
keeps pull requests outstanding instead (the way nats.go's ``Consume`` does): a request for ``batch`` messages is
sent whenever fewer than half a batch are buffered or still requested, messages land in a buffer from the
subscription's callback, and ``next_batch`` takes what is there without a round trip. At most one and a half batches
are delivered ahead of the handler, so a buffered message's ack wait (``ConsumerSettings.ack_wait``) is spent
mostly in the batch before it, as with ``fetch``.

Bookkeeping follows the server's rules: it serves pull requests in order, so each message counts against the
oldest outstanding request. Each request has a reply subject of its own (``<inbox>.<n>``), on which the server
announces that it ended early (404/408: expired or nothing more to give; 409: refused, e.g. the consumer was
deleted; 503: no JetStream), so the status ends exactly that request; the next request then goes out (after
``RETRY_AFTER`` for a refusal). A request the server forgot without telling (the connection was lost) is dropped
locally once it should have expired, or at once after a reconnect; if the server answers it late after all, its
status ends nothing else (ending the oldest request instead would end a newer one, and the feed would then ask for
more than its handler takes within the ack wait).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
from dataclasses import dataclass

import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

log = structlog.get_logger(__name__)

HEARTBEAT, NO_MESSAGES, REQUEST_TIMEOUT = "100", "404", "408"
RETRY_AFTER = 0.5
"""Seconds before asking again after the server refused a pull request (409, 503)."""
GRACE = 1.0
"""Seconds past its expiry after which an unanswered request is taken as lost."""


@dataclass
class _Request:
    remaining: int
    expires_at: float


class PullFeed:
    """Pull requests kept outstanding on ``durable`` of ``stream``; ``next_batch`` hands out what arrived."""

    def __init__(self, nc: NATS, *, stream: str, durable: str, batch: int, expires: float = 5.0) -> None:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self.nc = nc
        self.batch = batch
        self.expires = expires
        self.durable = durable
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._request_body = json.dumps({"batch": batch, "expires": int(expires * 1e9)}).encode()
        self._inbox = ""
        self._sub: Subscription | None = None
        self._ready: collections.deque[Msg] = collections.deque()
        self._requests: dict[str, _Request] = {}
        """Outstanding pull requests by reply subject, oldest first."""
        self._arrived = asyncio.Event()
        self._retry_at = 0.0
        self._reconnects = 0
        self.requests_sent = 0

    async def start(self) -> None:
        self._inbox = self.nc.new_inbox()
        self._reconnects = self.nc.stats["reconnects"]
        self._sub = await self.nc.subscribe(f"{self._inbox}.*", cb=self._on_msg)

    async def stop(self) -> list[Msg]:
        """Stop listening; returns the messages that arrived but were not handed out (the caller releases them).
        Drains the subscription: a message the server sent before it heard of the unsubscription is still handed
        out here (a plain unsubscribe drops it in the client, and the server redelivers it only after ack_wait)."""
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                await sub.drain()
            except (nats.errors.Error, TimeoutError):
                # Connection closed or draining: what the client had not handed over is lost with it anyway.
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
        left = list(self._ready)
        self._ready.clear()
        self._requests.clear()
        return left

    async def next_batch(self, timeout: float) -> list[Msg]:
        """Up to ``batch`` messages in stream order, waiting at most ``timeout`` seconds for the first one ([] then)."""
        await self._top_up()
        if not self._ready:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), timeout)
            except TimeoutError:
                pass
            await self._top_up()
        taken = [self._ready.popleft() for _ in range(min(self.batch, len(self._ready)))]
        return taken

    def _requested(self) -> int:
        return sum(r.remaining for r in self._requests.values())

    async def _top_up(self) -> None:
        now = time.monotonic()
        reconnects = self.nc.stats["reconnects"]
        if reconnects != self._reconnects:
            # The server forgot our requests with the old connection.
            self._reconnects = reconnects
            self._requests.clear()
        for reply in [reply for reply, r in self._requests.items() if r.expires_at + GRACE < now]:
            del self._requests[reply]
        if self._sub is None or now < self._retry_at or len(self._ready) + self._requested() > self.batch // 2:
            return
        reply = f"{self._inbox}.{self.requests_sent}"
        self._requests[reply] = _Request(self.batch, now + self.expires)
        self.requests_sent += 1
        await self.nc.publish(self._next_subject, self._request_body, reply=reply)

    async def _on_msg(self, msg: Msg) -> None:
        status = JetStreamContext.is_status_msg(msg)
        if status is None:
            self._ready.append(msg)
            # (A message carries its own subject, not the request's: it fills the oldest request, served first.)
            if self._requests:
                oldest = next(iter(self._requests))
                self._requests[oldest].remaining -= 1
                if self._requests[oldest].remaining <= 0:
                    del self._requests[oldest]
            self._arrived.set()
            return
        if status == HEARTBEAT:
            return
        # The request answered on this subject ended: expired or nothing more to give (404/408), or refused.
        self._requests.pop(msg.subject, None)
        if status not in (NO_MESSAGES, REQUEST_TIMEOUT):
            description = (msg.headers or {}).get("Description", "")
            log.warning("pull_request_refused", consumer=self.durable, status=status, description=description)
            self._retry_at = time.monotonic() + RETRY_AFTER
        self._arrived.set()
