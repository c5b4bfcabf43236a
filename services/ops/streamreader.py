"""Read a span of ``COVE_EVENTS`` in stream order, fast: what ``cove replay`` and ``cove verify`` read the stream with.

An ordered push consumer, as nats-py's ``ordered_consumer=True`` makes one (ephemeral, no acks, flow control, idle
heartbeats; made again from the next sequence when a delivery is missed), but its messages are taken off the
connection before nats-py builds a ``Msg`` of each: its header parsing, ``Msg`` and metadata objects, per-message
queue, task switch and callback cost about 9 µs a message here, two thirds of the read (``python -m benchmarks
replay``), and a replay needs none of them. The connection's ``_process_msg`` (nats-py 2.16, pinned in
pyproject.toml) is wrapped once (``_Taps``): a message of a reader's subscription goes to the reader as bytes, any
other to nats-py as before. Each event becomes a ``StreamMessage``: its subject, data and stream sequence, read the
way a projection reads nats-py's ``Msg`` (``msg.metadata.sequence.stream``).

Backpressure: at most ``BUFFER`` messages wait here; past that the server's flow-control requests are answered only
once the buffer has drained to half, and the server stops sending meanwhile.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
from collections.abc import Awaitable, Callable

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.protocol.parser import (
    AWAITING_CONTROL_LINE,
    AWAITING_MSG_PAYLOAD,
    CRLF_SIZE,
    MAX_CONTROL_LINE_SIZE,
    Parser,
)

from proto import subjects
from services.ops.connect import OpsError, nothing_to_read
from services.runtime.bus import Bus
from services.runtime.consumer import covering_subject

log = structlog.get_logger(__name__)

BUFFER = 8_000
"""Messages held ahead of the reader's caller before flow control holds the server."""
IDLE_HEARTBEAT = 2.0
QUIET_CHECK = 10.0
"""Seconds without a message after which the reader asks the server whether its consumer still has anything (a
consumer lost with its server's restart is made again then)."""
GIVE_UP = 60.0
"""Seconds NATS may leave those questions unanswered before the read fails (``OpsError``)."""
_STATUS = b"NATS/1.0 "
_STALLED = "Nats-Consumer-Stalled"
_LAST_CONSUMER = "Nats-Last-Consumer"


class StreamMessage:
    """One event of the stream as the reader hands it out. ``metadata.sequence.stream`` reads its stream sequence as
    on nats-py's ``Msg``, so a projection takes either."""

    __slots__ = ("data", "num_pending", "seq", "subject")

    def __init__(self, subject: str, data: bytes, seq: int, num_pending: int) -> None:
        self.subject = subject
        self.data = data
        self.seq = seq
        self.num_pending = num_pending

    @property
    def metadata(self) -> StreamMessage:
        return self

    @property
    def sequence(self) -> StreamMessage:
        return self

    @property
    def stream(self) -> int:
        return self.seq


Tap = Callable[[bytes, bytes, bytes, bytes | None], Awaitable[None]]
"""Told a message of its subscription: (subject, reply, data, headers), as the wire gave them."""


class _Taps:
    """The subscriptions of one connection whose messages bypass nats-py's ``Msg`` (sid -> tap)."""

    def __init__(self, nc: Client) -> None:
        self.by_sid: dict[int, Tap] = {}
        self._process_msg = nc._process_msg

    async def process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        tap = self.by_sid.get(sid)
        if tap is None:
            await self._process_msg(sid, subject, reply, data, headers)  # type: ignore[arg-type]
        else:
            await tap(subject, reply, data, headers)


class _TappingParser(Parser):
    """nats-py's protocol parser, which first hands the ``HMSG`` operations at the front of what arrived to their
    taps (waiting for the rest of one that is not all here yet), and leaves the rest, from the first other
    operation or another subscription's message on, to nats-py's own parsing. Its per-message regular expressions,
    dictionary and copies were a third of a replay's stream read."""

    def __init__(self, nc: Client, taps: _Taps) -> None:
        super().__init__(nc)
        self.taps = taps

    async def parse(self, data: bytes = b"") -> None:
        buf = self.buf
        buf.extend(data)
        if self.state == AWAITING_MSG_PAYLOAD:  # nats-py's parser stopped inside a message: finish it as it would
            if len(buf) < self.needed + CRLF_SIZE:
                return
            arg = self.msg_arg
            headers = bytes(buf[:self.header_needed]) if self.header_needed else None
            payload = bytes(buf[self.header_needed:self.needed])
            del buf[:self.needed + CRLF_SIZE]
            self.header_needed = 0
            self.state = AWAITING_CONTROL_LINE
            await self.nc._process_msg(arg["sid"], arg["subject"], arg["reply"], payload, headers)
        by_sid = self.taps.by_sid
        pos = 0
        try:
            while buf.startswith(b"HMSG ", pos):
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    if len(buf) - pos > MAX_CONTROL_LINE_SIZE:
                        break  # no control line is that long: nats-py's parser says what is wrong
                    return  # the rest of its control line is still to come
                args = buf[pos + 5:eol].split()  # subject sid [reply] header-bytes total-bytes
                if len(args) == 5:
                    subject, sid, reply, header_size, size = args
                elif len(args) == 4:
                    subject, sid, header_size, size = args
                    reply = bytearray()
                else:
                    break  # nats-py's parser says what is wrong with it
                tap = by_sid.get(int(sid))
                if tap is None:
                    break
                start = eol + CRLF_SIZE
                end = start + int(size)
                if end + CRLF_SIZE > len(buf):
                    return  # the rest of the message is still to come
                split = start + int(header_size)
                pos = end + CRLF_SIZE
                await tap(bytes(subject), bytes(reply), bytes(buf[split:end]), bytes(buf[start:split]) or None)
        finally:
            if pos:
                del buf[:pos]
        if buf:
            await super().parse()


def _taps(nc: Client) -> _Taps:
    """The connection's taps, installed the first time: its ``_process_msg`` and its parser wrapped."""
    taps = getattr(nc, "_cove_taps", None)
    if taps is None:
        taps = _Taps(nc)
        nc._cove_taps = taps  # type: ignore[attr-defined]
        nc._process_msg = taps.process_msg  # type: ignore[method-assign]
        parser = _TappingParser(nc, taps)
        # Between reads nats-py's parser waits for a control line, or for a payload it keeps in ``buf``: the new
        # parser takes over both.
        parser.buf, parser.state = nc._ps.buf, nc._ps.state
        parser.needed, parser.header_needed, parser.msg_arg = nc._ps.needed, nc._ps.header_needed, nc._ps.msg_arg
        nc._ps = parser
    return taps


def _positions(reply: bytes) -> tuple[int, int, int]:
    """(stream sequence, delivery sequence, pending) of a JetStream reply subject: ``$JS.ACK.<stream>.<consumer>.
    <delivered>.<sseq>.<dseq>.<time>.<pending>``, or the form with a domain and an account hash, two tokens more
    after ``ACK`` and one (a random token) at the end."""
    t = reply.split(b".")
    if len(t) == 9:
        return int(t[5]), int(t[6]), int(t[8])
    if len(t) >= 11 and t[0] == b"$JS" and t[1] == b"ACK":
        return int(t[7]), int(t[8]), int(t[10])
    raise ValueError(f"not a JetStream delivery: {reply!r}")


class StreamReader:
    """Messages of ``COVE_EVENTS`` from ``start_seq`` through ``until_seq``, in order: those matching ``filters``
    when it is one subject, else every message (the caller matches each against its own filters)."""

    def __init__(self, bus: Bus, filters: list[str], start_seq: int, until_seq: int) -> None:
        self.bus = bus
        self.filters = sorted(set(filters))
        self.start_seq = max(start_seq, 1)
        self.until_seq = until_seq
        self._buffer: collections.deque[StreamMessage] = collections.deque()
        self._arrived = asyncio.Event()
        self._held_flow: str | None = None
        """A flow-control request not answered yet: the buffer was full."""
        self._sid: int | None = None
        self._consumer: str | None = None
        self._expected = 1
        """The delivery sequence the next message must have; another one means one was missed."""
        self._resetting: asyncio.Task[None] | None = None
        self.resets = 0
        self._unanswered = 0
        self.done = False
        self.last_seq = 0
        """The stream sequence of the last message taken from the server (handed out or buffered)."""

    async def start(self) -> None:
        if self.until_seq < self.start_seq:
            self.done = True
            return
        await self._subscribe(self.start_seq)
        info = await self._consumer_info()
        # (What comes after ``done`` is dropped: a verify's catch-up of a few events, all pushed before this answer,
        # once lost them so, and found their rows as differences.)
        if info is not None and nothing_to_read(info, bool(self._buffer)):
            self.done = True

    async def _subscribe(self, from_seq: int) -> None:
        """A new delivery subject and consumer from ``from_seq``."""
        nc = self.bus.nc
        taps = _taps(nc)
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)  # no callback: its messages never reach nats-py's queue (the tap takes them)
        self._sid = sub._id
        self._expected = 1
        taps.by_sid[sub._id] = functools.partial(self._take, sub._id)
        # Several filters are not given to the server: a consumer with more than one filter subject is delivered
        # about 1,000 messages a second (measured: benchmarks/replay.py), one with a single filter 20 to 30 times
        # as many. One subject covering them is read instead, as the live consumers do, and the caller keeps what
        # matches (``Replayer.run``).
        cfg = ConsumerConfig(
            deliver_subject=inbox,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE if from_seq > 1 else DeliverPolicy.ALL,
            opt_start_seq=from_seq if from_seq > 1 else None,
            filter_subject=covering_subject(self.filters),
            ack_policy=AckPolicy.NONE,
            max_deliver=1,
            flow_control=True,
            idle_heartbeat=IDLE_HEARTBEAT,
            mem_storage=True,
            num_replicas=1,
            inactive_threshold=60.0,
        )
        info = await self.bus.js.add_consumer(subjects.EVENTS_STREAM, cfg)
        self._consumer = info.name

    async def _unsubscribe(self, sid: int | None, consumer: str | None) -> None:
        nc = self.bus.nc
        if sid is not None:
            _taps(nc).by_sid.pop(sid, None)
            sub = nc._subs.get(sid)
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
        if consumer is not None:
            with contextlib.suppress(Exception):
                await self.bus.js.delete_consumer(subjects.EVENTS_STREAM, consumer)

    async def _consumer_info(self) -> nats.js.api.ConsumerInfo | None:
        if self._consumer is None:
            return None
        try:
            return await self.bus.js.consumer_info(subjects.EVENTS_STREAM, self._consumer)
        except nats.js.errors.NotFoundError:
            return None

    async def _take(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        if self.done or sid != self._sid:
            return  # the end was reached, or a consumer given up (``_reset``) still sending
        if not data and headers is not None and headers.startswith(_STATUS):
            await self._status(reply, headers)
            return
        try:
            seq, delivered, pending = _positions(reply)
        except ValueError:  # not the consumer's (raising here would stop nats-py's reading of the connection)
            log.warning("stream_read_stray_message", subject=subject.decode(errors="replace"), reply=repr(reply))
            return
        if delivered != self._expected:
            self._reset(f"delivery {delivered} came where {self._expected} was due")
            return
        self._expected = delivered + 1
        self.last_seq = seq
        self._buffer.append(StreamMessage(subject.decode(), data, seq, pending))
        self._arrived.set()

    async def _status(self, reply: bytes, headers: bytes) -> None:
        """A flow-control request (answered now, or once the buffer has room) or an idle heartbeat (which says
        what was last delivered, and whether the server waits for a flow-control answer it never got)."""
        if reply:
            await self._flow(reply.decode())
            return
        hdr = await self.bus.nc._process_headers(headers) or {}
        stalled = hdr.get(_STALLED)
        if stalled:
            await self._flow(stalled)
        last = hdr.get(_LAST_CONSUMER)
        if last is not None and last.isdigit() and int(last) >= self._expected:
            self._reset(f"the server delivered up to {last}, {self._expected - 1} arrived")

    async def _flow(self, reply: str) -> None:
        """Let the server go on (answer its flow-control request) now, or once the buffer has drained to half."""
        if len(self._buffer) >= BUFFER:
            self._held_flow = reply
        else:
            await self.bus.nc.publish(reply, b"")

    def _reset(self, why: str) -> None:
        """A delivery was missed: a new consumer from the message after the last one taken (nats-py's ordered
        consumer does the same)."""
        if self._resetting is not None or self.done:
            return
        self.resets += 1
        log.info("stream_read_restarted", reason=why, from_seq=self.last_seq + 1)
        old = (self._sid, self._consumer)
        self._sid, self._consumer = None, None  # what the old consumer still sends is dropped from now on
        self._held_flow = None  # its flow control too
        self._resetting = asyncio.create_task(self._restart(*old))

    async def _restart(self, sid: int | None, consumer: str | None) -> None:
        try:
            await self._unsubscribe(sid, consumer)
            await self._subscribe(max(self.last_seq + 1, self.start_seq))
        except (nats.errors.Error, TimeoutError) as exc:  # (NATS reconnecting): ``next_batch`` tries again
            log.warning("stream_read_restart_failed", from_seq=self.last_seq + 1, error=repr(exc))
        finally:
            self._resetting = None
            self._arrived.set()  # a waiting ``next_batch`` looks again

    async def stop(self) -> None:
        self.done = True
        if self._resetting is not None:
            with contextlib.suppress(BaseException):
                await self._resetting
        sid, consumer, self._sid, self._consumer = self._sid, self._consumer, None, None
        await self._unsubscribe(sid, consumer)

    async def next_batch(self, size: int) -> list[StreamMessage]:
        """Up to ``size`` messages at or below ``until_seq``; [] once every one was handed out."""
        while not self._buffer and not self.done:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), QUIET_CHECK)
            except TimeoutError:
                if self._resetting is not None:
                    continue
                try:
                    info = await self._consumer_info()
                except (nats.errors.Error, TimeoutError) as exc:
                    self._unanswered += 1
                    if self._unanswered * QUIET_CHECK >= GIVE_UP:
                        raise OpsError(f"NATS has not answered for {GIVE_UP:g} s while reading the stream "
                                       f"(after sequence {self.last_seq}): {exc!r}") from exc
                    log.warning("stream_read_unanswered", after_seq=self.last_seq, error=repr(exc))
                    continue
                self._unanswered = 0
                if info is None:
                    self._reset("its consumer is gone")
                elif info.num_pending == 0 and not self._buffer:
                    self.done = True
        out: list[StreamMessage] = []
        buffer = self._buffer
        until = self.until_seq
        while buffer and len(out) < size:
            msg = buffer.popleft()
            if msg.seq > until:
                self._finish()
                break
            out.append(msg)
            if msg.seq >= until or msg.num_pending == 0:
                self._finish()
                break
        if self._held_flow is not None and len(buffer) < BUFFER // 2:
            reply, self._held_flow = self._held_flow, None
            await self._flow(reply)
        return out

    def _finish(self) -> None:
        self.done = True
        self._buffer.clear()
