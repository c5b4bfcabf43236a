"""The stream reader's protocol parser (services/ops/streamreader.py): its own subscriptions' messages go to their
taps, everything else to nats-py as before, whatever the chunks the bytes arrive in."""

from __future__ import annotations

import random
from typing import Any

import pytest
from nats.protocol.parser import Parser

from services.ops.streamreader import _TappingParser, _taps


class Connection:
    """What nats-py's parser calls on its client: records the messages and operations it hands over."""

    def __init__(self) -> None:
        self.messages: list[tuple[Any, ...]] = []
        self.pings = 0
        self._ps = Parser(self)

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        self.messages.append((sid, subject, reply, data, headers))

    async def _process_ping(self) -> None:
        self.pings += 1

    async def _process_pong(self) -> None:
        return None


def hmsg(subject: bytes, sid: int, reply: bytes, headers: bytes, data: bytes) -> bytes:
    head = b"HMSG %s %d %s%d %d\r\n" % (subject, sid, reply + b" " if reply else b"", len(headers),
                                        len(headers) + len(data))
    return head + headers + data + b"\r\n"


@pytest.mark.parametrize("seed", range(8))
async def test_every_message_reaches_its_tap_or_nats_py_in_any_chunks(seed: int) -> None:
    rnd = random.Random(seed)
    nc = Connection()
    taps = _taps(nc)  # type: ignore[arg-type]  # as a reader installs them on its connection
    parser = nc._ps
    assert isinstance(parser, _TappingParser)
    tapped: list[tuple[Any, ...]] = []

    async def tap(subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        tapped.append((subject, reply, data, headers))

    taps.by_sid[7] = tap
    wire, want_tapped, want_other, pings = [], [], [], 0
    for i in range(300):
        kind = rnd.choice(["tapped", "tapped", "tapped", "status", "other-hmsg", "msg", "ping", "ok"])
        data = bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 400))).replace(b"\r\n", b"..")
        if kind == "tapped":
            reply = f"$JS.ACK.COVE_EVENTS.c.1.{i}.{i}.0.{300 - i}".encode()
            headers = b"NATS/1.0\r\nNats-Msg-Id: m%d\r\n\r\n" % i
            wire.append(hmsg(b"cove.evt.api.cluster.x", 7, reply, headers, data))
            want_tapped.append((b"cove.evt.api.cluster.x", reply, data, headers))
        elif kind == "status":  # a flow-control request: no payload, a reply
            headers = b"NATS/1.0 100 FlowControl Request\r\n\r\n"
            wire.append(hmsg(b"_INBOX.x", 7, b"$JS.FC.x", headers, b""))
            want_tapped.append((b"_INBOX.x", b"$JS.FC.x", b"", headers))
        elif kind == "other-hmsg":
            headers = b"NATS/1.0\r\nA: b\r\n\r\n"
            wire.append(hmsg(b"other.subject", 9, b"", headers, data))
            want_other.append((9, b"other.subject", b"", data, headers))
        elif kind == "msg":
            wire.append(b"MSG _INBOX.r 3 %d\r\n%s\r\n" % (len(data), data))
            want_other.append((3, b"_INBOX.r", b"", data, None))
        elif kind == "ping":
            wire.append(b"PING\r\n")
            pings += 1
        else:
            wire.append(b"+OK\r\n")
    stream = b"".join(wire)
    at = 0
    while at < len(stream):
        size = rnd.choice([1, 2, 7, 64, 500, 4096])
        await parser.parse(stream[at:at + size])
        at += size
    assert tapped == want_tapped
    assert [tuple(m) for m in nc.messages] == want_other
    assert nc.pings == pings
    assert not parser.buf


async def test_a_stray_message_on_the_readers_subject_is_passed_over() -> None:
    """A message on the reader's delivery subject that is not a JetStream delivery (no reply subject of one) is
    logged and dropped: raising would end nats-py's reading of the whole connection."""
    from services.ops.streamreader import StreamReader

    reader = StreamReader(None, ["cove.evt.>"], 1, 10)  # type: ignore[arg-type]
    reader._sid = 7
    await reader._take(7, b"_INBOX.x", b"", b"{}", None)
    await reader._take(7, b"_INBOX.x", b"reply.of.someone", b"{}", None)
    assert not reader._buffer and reader.resets == 0
    await reader._take(7, b"cove.evt.api.cluster.c", b"$JS.ACK.COVE_EVENTS.c.1.4.1.0.6", b"{}", None)
    assert [m.seq for m in reader._buffer] == [4]
