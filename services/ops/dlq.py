"""``cove dlq``: the dead letters of ``COVE_DLQ`` (services/runtime/consumer.py writes them), read, retried, dropped.

A dead letter is the original message (bytes and headers) plus ``Cove-Dlq-*`` headers: the reason, the consumer,
the original subject and stream sequence, the deliveries. Its id here is its sequence in ``COVE_DLQ``.

Retry publishes the original bytes again to the original subject, so the event is appended to ``COVE_EVENTS``
once more and reaches the consumer that gave up on it, then removes the dead letter. This is safe because every
consumer is idempotent on the envelope id: a projection records each applied event id in its inbox in the same
transaction as its effect, so the consumers that had applied the event skip the copy, and the one that dead-lettered
it (its inbox has no row: the failed transactions rolled back) applies it once; what the handler publishes in turn
has ids derived from the event id, so JetStream's dedup window and the downstream inboxes drop any repeat. The
retried copy carries a ``Nats-Msg-Id`` of its own (``retry:<consumer>:<dead letter id>``): two retries of one dead
letter within the dedup window append one copy.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import datetime

import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy, RawStreamMsg

from proto import subjects
from proto.envelope import MalformedMessage, decode
from services.ops.connect import OpsError, nothing_to_read
from services.runtime.bus import MSG_ID, Bus
from services.runtime.consumer import DLQ_CONSUMER, DLQ_DELIVERIES, DLQ_REASON, DLQ_STREAM_SEQ, DLQ_SUBJECT

COLUMNS = ("id", "consumer", "type", "cluster", "subject", "stream_seq", "deliveries", "reason", "time")


@dataclass(frozen=True)
class DeadLetter:
    id: int
    consumer: str
    subject: str
    stream_seq: int
    deliveries: int
    reason: str
    time: datetime | None
    data: bytes
    headers: dict[str, str]

    @property
    def event_type(self) -> str:
        try:
            return decode(self.data).type
        except MalformedMessage:
            return "(malformed)"

    @property
    def cluster(self) -> str:
        try:
            return decode(self.data).cluster_id or ""
        except MalformedMessage:
            return ""

    def values(self) -> tuple[object, ...]:
        return (self.id, self.consumer, self.event_type, self.cluster, self.subject, self.stream_seq,
                self.deliveries, self.reason, self.time.isoformat() if self.time else "")

    def original_headers(self) -> dict[str, str]:
        """The headers the event was published with (the dead letter's own removed)."""
        own = {DLQ_REASON, DLQ_STREAM_SEQ, DLQ_SUBJECT, DLQ_DELIVERIES, DLQ_CONSUMER, MSG_ID}
        return {k: v for k, v in self.headers.items() if k not in own and not k.startswith("Nats-")}


def _letter(seq: int, subject: str, data: bytes, headers: dict[str, str] | None, at: datetime | None) -> DeadLetter:
    h = dict(headers or {})
    consumer = h.get(DLQ_CONSUMER) or subject.removeprefix(subjects.DLQ_PREFIX + ".")
    return DeadLetter(
        id=seq, consumer=consumer, subject=h.get(DLQ_SUBJECT, ""), stream_seq=int(h.get(DLQ_STREAM_SEQ, "0") or 0),
        deliveries=int(h.get(DLQ_DELIVERIES, "0") or 0), reason=h.get(DLQ_REASON, ""), time=at, data=data,
        headers=h,
    )


async def list_letters(bus: Bus, consumer: str | None = None) -> list[DeadLetter]:
    """Every dead letter (of ``consumer``), oldest first."""
    subject = subjects.dlq_subject(consumer) if consumer else subjects.DLQ_ALL
    queue: asyncio.Queue[Msg] = asyncio.Queue()

    async def on_msg(msg: Msg) -> None:
        await queue.put(msg)

    try:
        sub = await bus.js.subscribe(
            subject, stream=subjects.DLQ_STREAM, ordered_consumer=True, cb=on_msg,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
    except nats.js.errors.NotFoundError:
        return []
    out: list[DeadLetter] = []
    try:
        if nothing_to_read(await sub.consumer_info(), not queue.empty()):
            return out
        while True:
            try:
                msg = await asyncio.wait_for(queue.get(), 10.0)
            except TimeoutError:
                if (await sub.consumer_info()).num_pending == 0:
                    return out
                continue
            md = msg.metadata
            out.append(_letter(md.sequence.stream, msg.subject, msg.data, msg.headers, md.timestamp))
            if md.num_pending == 0:
                return out
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def get_letter(bus: Bus, letter_id: int) -> DeadLetter:
    try:
        raw: RawStreamMsg = await bus.js.get_msg(subjects.DLQ_STREAM, seq=letter_id)
    except nats.js.errors.NotFoundError as exc:
        raise OpsError(f"no dead letter {letter_id} in {subjects.DLQ_STREAM}") from exc
    return _letter(letter_id, raw.subject or "", raw.data or b"", raw.headers, raw.time)


async def drop(bus: Bus, letter_id: int) -> DeadLetter:
    letter = await get_letter(bus, letter_id)
    await bus.js.delete_msg(subjects.DLQ_STREAM, letter_id)
    return letter


async def retry(bus: Bus, letter_id: int) -> tuple[DeadLetter, int]:
    """Publish the dead letter's original event again to its subject, then remove the dead letter. Returns it and
    the new copy's sequence in ``COVE_EVENTS``."""
    letter = await get_letter(bus, letter_id)
    if not letter.subject:
        raise OpsError(f"dead letter {letter_id} does not say its original subject ({DLQ_SUBJECT})")
    try:
        decode(letter.data)
    except MalformedMessage as exc:
        raise OpsError(f"dead letter {letter_id} is not an event any consumer can read ({exc}): drop it") from exc
    headers = letter.original_headers()
    headers[MSG_ID] = f"retry:{letter.consumer}:{letter.id}"
    ack = await bus.publish_raw(letter.subject, letter.data, headers)
    await bus.js.delete_msg(subjects.DLQ_STREAM, letter_id)
    return letter, ack.seq


async def retry_all(bus: Bus, consumer: str) -> list[tuple[DeadLetter, int]]:
    """Every dead letter of ``consumer``, oldest first (they go back in the order they failed)."""
    return [await retry(bus, letter.id) for letter in await list_letters(bus, consumer)]
