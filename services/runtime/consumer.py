"""A durable JetStream pull consumer loop with decoding, retries with backoff, and dead-lettering.

A consumer of several filter subjects asks the server for ONE subject covering them all (``covering_subject``,
e.g. ``cove.evt.*.cluster.*`` for the API's, the certs service's and the provisioner's cluster events): the server
delivers a consumer with more than one filter subject about 1,300 messages a second, one with a single filter 20 to
30 times as many (``python -m benchmarks replay``, the "live consumer" rows). A delivered message none of the
consumer's own subjects match is acknowledged without being decoded or handled, after ``on_skipped`` (a projection
moves its checkpoint past it, so the checkpoint stays at or above what the server counts as acknowledged).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import math
import re
import time
from collections.abc import Awaitable, Callable

import nats.errors
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import ConsumerConfig, ConsumerInfo, RawStreamMsg
from opentelemetry import trace

from proto import subjects
from proto.envelope import Envelope, MalformedMessage, decode
from proto.streams import DEFAULT_CONSUMER, ConsumerSettings, dropped_consumer_config
from services.runtime import metrics, tracing
from services.runtime.bus import Bus
from services.runtime.pull import PullFeed

log = structlog.get_logger(__name__)

Handler = Callable[[Envelope, Msg], Awaitable[None]]
"""Handles one decoded event. Returning acks the message; raising naks it with backoff."""

BatchHandler = Callable[[list[tuple[Envelope, Msg]]], Awaitable[None]]
"""Handles a fetched batch of decoded events, in order, all or nothing. Returning acks every message; raising
makes the consumer handle the batch again one message at a time with ``Handler`` (which retries, naks and
dead-letters each message on its own)."""


def covering_subject(filters: list[str]) -> str:
    """One subject filter that matches every subject any of ``filters`` matches (and possibly more): tokens all
    filters share stay, differing ones become ``*``, and from where one filter has ``>`` or ends before another,
    ``>``."""
    if not filters:
        raise ValueError("no filter subject")
    split = [f.split(".") for f in sorted(set(filters))]
    if len(split) == 1:
        return ".".join(split[0])
    out: list[str] = []
    for i in range(max(len(tokens) for tokens in split)):
        if any(i >= len(tokens) for tokens in split):  # one ends here, another goes on: '>' from the last token on
            return ".".join([*out[:-1], ">"]) if out else ">"
        at = {tokens[i] for tokens in split}
        if ">" in at:
            return ".".join([*out, ">"])
        out.append(at.pop() if len(at) == 1 else "*")
    return ".".join(out)


def matches(subject: str, pattern: str) -> bool:
    """NATS subject matching: ``*`` one token, ``>`` the rest."""
    return _matches(subject.split("."), pattern.split("."))


def subject_matcher(filters: list[str]) -> Callable[[str], bool]:
    """``matches`` against any of ``filters``, compiled once: one regular expression (``*`` one token, ``>`` the
    rest), for a reader that tests every message it is delivered (a consumer under a covering subject, the replay)."""
    if ">" in filters:
        return lambda _subject: True
    parts = []
    for f in sorted(set(filters)):
        tokens = [("[^.]+" if t == "*" else ".+" if t == ">" else re.escape(t)) for t in f.split(".")]
        parts.append(r"\.".join(tokens))
    pattern = re.compile("|".join(f"(?:{p})" for p in parts))
    return lambda subject: pattern.fullmatch(subject) is not None


def _matches(s: list[str], p: list[str]) -> bool:
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(s) == len(p)


class HandlerDeadlineExceeded(Exception):
    """A handler ran past ``ConsumerSettings.deadline`` and was cancelled (a failure like any other)."""


DLQ_REASON = "Cove-Dlq-Reason"
DLQ_STREAM_SEQ = "Cove-Dlq-Stream-Seq"
DLQ_SUBJECT = "Cove-Dlq-Subject"
DLQ_DELIVERIES = "Cove-Dlq-Deliveries"
DLQ_CONSUMER = "Cove-Dlq-Consumer"

ACK_TIMEOUT_REASON = "max deliveries exceeded (ack timeouts)"


def dlq_msg_id(durable: str, stream: str, stream_seq: int) -> str:
    """``Nats-Msg-Id`` of a dead letter: one per consumer and stream message, whichever path or replica sends it."""
    return f"dlq:{durable}:{stream}:{stream_seq}"


class Consumer:
    """Pulls from a durable consumer on ``stream`` and hands each decoded envelope to ``handler``, in order.

    * bytes that do not decode -> published to ``cove.dlq.<durable>`` with the reason, then ``term``;
    * handler raises -> ``nak(delay=backoff)``; on the ``max_deliver``-th failure -> dead-lettered, ``term``;
    * the server gives up on a message after ``max_deliver`` ack timeouts (the process crashed or hung while
      handling it) -> its ``MAX_DELIVERIES`` advisory is heard, the message is read back from the stream by
      its sequence and dead-lettered with ``ACK_TIMEOUT_REASON`` (every replica hears the advisory; the
      dead letter's ``Nats-Msg-Id`` makes it one);
    * each message is handled in a consumer span continuing the producer's trace, with the event id,
      correlation id, trace id and cluster id bound into structlog's contextvars;
    * with a ``batch_handler``, a fetched batch of more than one message that all decode is handed over in one
      call (one "consume batch" span) and acked after it returns; if it raises, the batch is handled again one
      message at a time by ``handler`` as above.
    """

    def __init__(
        self,
        bus: Bus,
        *,
        durable: str,
        filter_subjects: list[str],
        handler: Handler,
        settings: ConsumerSettings = DEFAULT_CONSUMER,
        stream: str = subjects.EVENTS_STREAM,
        on_dead_lettered: Callable[[Msg], Awaitable[None]] | None = None,
        batch_handler: BatchHandler | None = None,
        on_skipped: Callable[[int], Awaitable[None]] | None = None,
        widen: bool = True,
    ) -> None:
        self.bus = bus
        self.on_skipped = on_skipped
        """Called with the stream sequence of the last message of a fetch that none of ``filter_subjects``
        matched (when it comes after every one they matched), before those messages are acknowledged."""
        self.batch_handler = batch_handler
        self.batches_applied = 0
        """Batches ``batch_handler`` applied as a whole."""
        self.batches_split = 0
        """Batches ``batch_handler`` raised on, handled again one message at a time."""
        self.on_dead_lettered = on_dead_lettered
        """Called after each dead letter. On the ack-timeout path the ``Msg`` is rebuilt from the stream: its
        ``metadata`` (stream sequence, deliveries) is set, but it has no reply subject and cannot be settled."""
        self.durable = durable
        self.filter_subjects = list(filter_subjects)
        self.subject = covering_subject(self.filter_subjects) if widen else None
        """The one filter subject the server is given (None: ``filter_subjects`` themselves, ``widen=False``)."""
        self._own = None if self.subject is None or len(set(self.filter_subjects)) == 1 else subject_matcher(
            self.filter_subjects)
        """Whether a delivered message is one of ``filter_subjects``, to be handled (None: every one is)."""
        self.skipped = 0
        """Messages delivered under ``subject`` that none of ``filter_subjects`` matched (acknowledged unhandled)."""
        self.handler = handler
        self.settings = settings
        self.stream = stream
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._feed: PullFeed | None = None
        self._advisories: Subscription | None = None
        self.last_error: str | None = None
        self.advisories_handled = 0
        """MAX_DELIVERIES advisories this instance acted on (whether or not its dead letter was the first)."""

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # ------------------------------------------------------------------ consumer management

    @property
    def server_filters(self) -> list[str]:
        """The filter subjects the durable consumer has on the server."""
        return [self.subject] if self.subject is not None else sorted(set(self.filter_subjects))

    def config(self, start_seq: int | None = None) -> ConsumerConfig:
        return self.settings.consumer_config(self.durable, self.server_filters, start_seq=start_seq)

    async def info(self) -> ConsumerInfo | None:
        try:
            return await self.bus.js.consumer_info(self.stream, self.durable)
        except nats.js.errors.NotFoundError:
            return None

    async def ensure(self, start_seq: int | None = None) -> ConsumerInfo:
        """Create the durable consumer if missing (starting at ``start_seq``), or update its settings."""
        info = await self.info()
        cfg = self.config(start_seq)
        if info is None:
            info = await self.bus.js.add_consumer(self.stream, cfg)
            log.info("consumer_created", consumer=self.durable, stream=self.stream, start_seq=start_seq)
            return info
        if _filters(info.config) != self.server_filters:
            # The filter cannot be changed in place on every server version: recreate from the same point.
            return await self.recreate(info.ack_floor.stream_seq + 1 if info.ack_floor else start_seq)
        # Keep the original start position; update the delivery settings.
        cfg.deliver_policy = info.config.deliver_policy
        cfg.opt_start_seq = info.config.opt_start_seq
        return await self.bus.js.add_consumer(self.stream, cfg)

    async def recreate(self, start_seq: int | None) -> ConsumerInfo:
        """Delete the durable consumer and create it again delivering from ``start_seq``."""
        try:
            await self.bus.js.delete_consumer(self.stream, self.durable)
        except nats.js.errors.NotFoundError:
            pass
        info = await self.bus.js.add_consumer(self.stream, self.config(start_seq))
        log.info("consumer_recreated", consumer=self.durable, stream=self.stream, start_seq=start_seq)
        return info

    # ------------------------------------------------------------------ loop

    async def start(self, *, ensure: bool = True) -> None:
        if ensure:
            await self.ensure()
        self._stopping.clear()
        # Listen before fetching. The advisories are kept in a stream and reach one replica each through a durable
        # queue group, so a drop while every replica was down is acted on when one comes back.
        self._advisories = await self._subscribe_dropped()
        self._feed = PullFeed(self.bus.nc, stream=self.stream, durable=self.durable, batch=self.settings.fetch_batch)
        await self._feed.start()
        self._task = asyncio.create_task(self._run(), name=f"consumer:{self.durable}")
        log.info("consumer_started", consumer=self.durable, filter_subjects=self.filter_subjects,
                 server_filters=self.server_filters)

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop fetching; the message in hand is finished, the rest of the batch is released (nak). A handler still
        running after ``timeout`` is cancelled and its messages are released too."""
        self._stopping.set()
        arrived: list[Msg] = []
        if self._task is not None:
            task, self._task = self._task, None
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout)
            except TimeoutError:
                # stop pulling before the cancelled handler releases its messages, so that their redelivery goes to
                # another replica rather than back into this one's buffer
                if self._feed is not None:
                    feed, self._feed = self._feed, None
                    arrived = await feed.stop()
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._feed is not None:
            feed, self._feed = self._feed, None
            arrived = await feed.stop()
        for msg in arrived:  # arrived but not handed out: release them to the other replicas
            await _quietly(msg.nak())
        if self._advisories is not None:
            try:
                await self._advisories.unsubscribe()
            except (nats.errors.ConnectionClosedError, nats.errors.BadSubscriptionError):
                pass
            self._advisories = None
        log.info("consumer_stopped", consumer=self.durable)

    async def _run(self) -> None:
        assert self._feed is not None
        failures = 0
        while not self._stopping.is_set():
            try:
                msgs = await self._feed.next_batch(self.settings.fetch_timeout)
                if not msgs:
                    continue
            except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
                if self._stopping.is_set():
                    return
                await asyncio.sleep(0.5)
                continue
            except Exception as exc:  # noqa: BLE001 - the loop must survive server restarts
                failures += 1
                self.last_error = repr(exc)
                log.warning("consumer_fetch_failed", consumer=self.durable, error=repr(exc))
                await asyncio.sleep(min(0.2 * 2**failures, 5.0))
                continue
            failures = 0
            try:
                if not await self._handle(msgs):
                    return
            except asyncio.CancelledError:
                # stop() stopped waiting for a handler that did not finish: release what is in hand, so that another
                # replica (or this one restarted) gets it at once rather than after ack_wait.
                for msg in msgs:
                    await _release(msg)
                raise

    async def _handle(self, fetched: list[Msg]) -> bool:
        """Handle and settle one fetched batch; False when the consumer is stopping (the unhandled rest released)."""
        if self._own is None:
            return await self._handle_own(fetched)
        msgs: list[Msg] = []
        others: list[Msg] = []
        for m in fetched:
            (msgs if self._own(m.subject) else others).append(m)
        if not others:
            return await self._handle_own(msgs)
        if msgs and not await self._handle_own(msgs):
            return False
        last = others[-1].metadata.sequence.stream
        if self.on_skipped is not None and (not msgs or last > msgs[-1].metadata.sequence.stream):
            try:
                await self.on_skipped(last)
            except Exception as exc:  # noqa: BLE001 - not acknowledged: delivered again, skipped again
                log.warning("skip_failed", consumer=self.durable, stream_seq=last, error=repr(exc))
                return True
        for msg in others:
            await _quietly(msg.ack())
        self.skipped += len(others)
        return True

    async def _handle_own(self, msgs: list[Msg]) -> bool:
        batchable = self.batch_handler is not None and len(msgs) > 1 and not self._stopping.is_set()
        if batchable and await self.process_batch(msgs):
            return True
        for i, msg in enumerate(msgs):
            if self._stopping.is_set():
                for rest in msgs[i:]:
                    await _quietly(rest.nak())
                return False
            await self.process(msg)
        return True

    async def process_batch(self, msgs: list[Msg]) -> bool:
        """Hand ``msgs`` to ``batch_handler`` in one call and ack them all. False (nothing settled) when a message
        does not decode or the batch handler raised: the caller then processes them one at a time."""
        assert self.batch_handler is not None
        items: list[tuple[Envelope, Msg]] = []
        for msg in msgs:
            try:
                items.append((decode(msg.data), msg))
            except MalformedMessage:
                return False
        metrics.CONSUMER_LAG.labels(self.durable).set(msgs[-1].metadata.num_pending)
        first, last = msgs[0].metadata.sequence.stream, msgs[-1].metadata.sequence.stream
        with (
            tracing.tracer(__name__).start_as_current_span(
                "consume batch",
                kind=trace.SpanKind.CONSUMER,
                attributes={
                    "messaging.system": "nats",
                    "messaging.consumer.group.name": self.durable,
                    "messaging.batch.message_count": len(items),
                    "cove.stream_seq.first": first,
                    "cove.stream_seq.last": last,
                },
            ),
            structlog.contextvars.bound_contextvars(consumer=self.durable, batch_first_seq=first),
        ):
            started = time.perf_counter()
            try:
                await self._within_deadline(self.batch_handler(items))
            except Exception as exc:  # noqa: BLE001 - the per-message path retries and dead-letters
                self.batches_split += 1
                trace.get_current_span().record_exception(exc)
                log.warning(
                    "batch_failed_applying_one_by_one",
                    first_seq=first,
                    last_seq=last,
                    size=len(items),
                    error=repr(exc),
                )
                return False
            finally:
                metrics.HANDLER_SECONDS.labels(self.durable).observe(time.perf_counter() - started)
            self.batches_applied += 1
            for env, msg in items:
                await _quietly(msg.ack())
                metrics.MESSAGES_HANDLED.labels(self.durable, env.type).inc()
        return True

    async def process(self, msg: Msg) -> None:
        """Decode, handle and settle one message (ack, nak with delay, or dead-letter)."""
        md = msg.metadata
        metrics.CONSUMER_LAG.labels(self.durable).set(md.num_pending)
        try:
            env = decode(msg.data)
        except MalformedMessage as exc:
            await self.dead_letter(msg, f"malformed: {exc}", kind="malformed")
            return
        headers = dict(msg.headers or {})
        parent = tracing.extract(headers if "traceparent" in headers else env.trace)
        span_name = f"consume {env.type}"
        with (
            tracing.tracer(__name__).start_as_current_span(
                span_name,
                context=parent,
                kind=trace.SpanKind.CONSUMER,
                attributes={
                    "messaging.system": "nats",
                    "messaging.destination.name": msg.subject,
                    "messaging.consumer.group.name": self.durable,
                    "messaging.message.id": env.id,
                    "cove.stream_seq": md.sequence.stream,
                },
            ),
            structlog.contextvars.bound_contextvars(
                event_id=env.id,
                event_type=env.type,
                correlation_id=env.correlation_id,
                cluster_id=env.cluster_id,
                trace_id=tracing.current_ids()[0],
                consumer=self.durable,
            ),
        ):
            started = time.perf_counter()
            try:
                await self._within_deadline(self.handler(env, msg))
            except Exception as exc:  # noqa: BLE001 - any handler error is retried then dead-lettered
                metrics.MESSAGES_FAILED.labels(self.durable, env.type).inc()
                trace.get_current_span().record_exception(exc)
                deliveries = md.num_delivered
                if deliveries >= self.settings.max_deliver:
                    log.error("handler_failed_giving_up", deliveries=deliveries, error=repr(exc))
                    await self.dead_letter(
                        msg, f"handler failed {deliveries} times: {exc!r}", kind="max_deliver"
                    )
                else:
                    delay = self.settings.nak_delay(deliveries)
                    log.warning("handler_failed", deliveries=deliveries, retry_in=delay, error=repr(exc))
                    await _quietly(msg.nak(delay=delay))
                return
            finally:
                metrics.HANDLER_SECONDS.labels(self.durable).observe(time.perf_counter() - started)
            await msg.ack()
            metrics.MESSAGES_HANDLED.labels(self.durable, env.type).inc()

    async def _within_deadline(self, work: Awaitable[None]) -> None:
        """Await ``work``, cancelling it after ``settings.deadline`` seconds (raises HandlerDeadlineExceeded)."""
        deadline = self.settings.deadline
        if math.isinf(deadline):
            await work
            return
        try:
            await asyncio.wait_for(work, deadline)
        except TimeoutError:
            metrics.HANDLER_DEADLINE_EXCEEDED.labels(self.durable).inc()
            raise HandlerDeadlineExceeded(f"handler still running after {deadline:g} s: cancelled") from None

    async def dead_letter(self, msg: Msg, reason: str, *, kind: str = "other") -> None:
        """Publish the original bytes and headers plus the reason to ``cove.dlq.<durable>``, then ``term``."""
        md = msg.metadata
        try:
            await self._publish_dead_letter(
                subject=msg.subject,
                data=msg.data,
                headers=msg.headers,
                stream_seq=md.sequence.stream,
                deliveries=md.num_delivered,
                reason=reason,
                kind=kind,
            )
        except Exception as exc:  # noqa: BLE001 - keep the message: it will be redelivered
            log.error("dead_letter_publish_failed", error=repr(exc), stream_seq=md.sequence.stream)
            await _quietly(msg.nak(delay=self.settings.nak_delay(md.num_delivered)))
            return
        await msg.term()
        if self.on_dead_lettered is not None:
            await _quietly(self.on_dead_lettered(msg))

    async def dead_letter_dropped(self, stream_seq: int, deliveries: int) -> bool:
        """Dead-letter the message the server dropped after ``deliveries`` ack timeouts: read it back from the
        stream by ``stream_seq`` and publish it as ``dead_letter`` would. True when settled: a dead letter exists (this
        call's or an earlier identical one) or the message is gone from the stream (logged); False when publishing
        kept failing (logged; the caller gets the advisory again later)."""
        raw = None
        gone = False
        for attempt in range(1, 6):
            try:
                raw = await self.bus.js.get_msg(self.stream, seq=stream_seq)
                await self._publish_dead_letter(
                    subject=raw.subject or "",
                    data=raw.data or b"",
                    headers=raw.headers,
                    stream_seq=stream_seq,
                    deliveries=deliveries,
                    reason=ACK_TIMEOUT_REASON,
                    kind="ack_timeouts",
                )
                break
            except nats.js.errors.NotFoundError:
                # Removed by the stream's limits (or purged) since: nothing left to keep.
                log.error("dropped_message_gone", consumer=self.durable, stream_seq=stream_seq)
                raw, gone = None, True
                break
            except Exception as exc:  # noqa: BLE001 - retried a few times, then logged as lost
                log.warning(
                    "dead_letter_publish_failed", stream_seq=stream_seq, attempt=attempt, error=repr(exc)
                )
                raw = None
                await asyncio.sleep(min(0.2 * 2**attempt, 5.0))
        else:
            log.error("dead_letter_lost", consumer=self.durable, stream_seq=stream_seq, deliveries=deliveries)
        # The server has settled the message either way: tell the owner (a projection moves its checkpoint).
        if self.on_dead_lettered is not None:
            await _quietly(self.on_dead_lettered(self._dropped_msg(raw, stream_seq, deliveries)))
        return raw is not None or gone

    async def _subscribe_dropped(self) -> Subscription:
        cfg = dropped_consumer_config(self.durable, self.stream)
        name = cfg.durable_name
        assert name is not None
        try:
            await self.bus.js.consumer_info(subjects.ADVISORIES_STREAM, name)
        except nats.js.errors.NotFoundError:
            try:
                await self.bus.js.add_consumer(subjects.ADVISORIES_STREAM, cfg)
            except nats.js.errors.BadRequestError:
                pass  # another replica created it first
        return await self.bus.js.subscribe(
            cfg.filter_subject or "", queue=name, durable=name, stream=subjects.ADVISORIES_STREAM,
            cb=self._on_max_deliveries, manual_ack=True,
        )

    async def _on_max_deliveries(self, advisory: Msg) -> None:
        try:
            body = json.loads(advisory.data)
            stream, durable = body["stream"], body["consumer"]
            stream_seq, deliveries = int(body["stream_seq"]), int(body.get("deliveries", 0))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("advisory_unreadable", subject=advisory.subject, error=repr(exc))
            await _quietly(advisory.term())
            return
        if stream != self.stream or durable != self.durable:
            await _quietly(advisory.ack())
            return
        log.warning(
            "message_dropped_by_server", consumer=self.durable, stream_seq=stream_seq, deliveries=deliveries
        )
        settled = await self.dead_letter_dropped(stream_seq, deliveries)
        self.advisories_handled += 1
        # Not settled (publishing the dead letter kept failing): the advisory comes back later.
        await _quietly(advisory.ack() if settled else advisory.nak(delay=5.0))

    def _dropped_msg(self, raw: RawStreamMsg | None, stream_seq: int, deliveries: int) -> Msg:
        """A ``Msg`` standing for a dropped message: metadata set, no reply subject (nothing to settle)."""
        return Msg(
            _client=self.bus.nc,
            subject=(raw.subject or "") if raw is not None else "",
            data=(raw.data or b"") if raw is not None else b"",
            headers=raw.headers if raw is not None else None,
            _metadata=Msg.Metadata(
                sequence=Msg.Metadata.SequencePair(stream=stream_seq, consumer=0),
                num_pending=0,
                num_delivered=deliveries,
                timestamp=datetime.datetime.now(datetime.UTC),
                stream=self.stream,
                consumer=self.durable,
            ),
        )

    async def _publish_dead_letter(
        self,
        *,
        subject: str,
        data: bytes,
        headers: dict[str, str] | None,
        stream_seq: int,
        deliveries: int,
        reason: str,
        kind: str,
    ) -> None:
        """Publish to ``cove.dlq.<durable>`` (raises when the publish fails); deduplicated per stream message."""
        out = {k: v for k, v in (headers or {}).items() if k != "Nats-Msg-Id"}
        out.update(
            {
                DLQ_REASON: reason.replace("\r", " ").replace("\n", " ")[:1000],
                DLQ_STREAM_SEQ: str(stream_seq),
                DLQ_SUBJECT: subject,
                DLQ_DELIVERIES: str(deliveries),
                DLQ_CONSUMER: self.durable,
                "Nats-Msg-Id": dlq_msg_id(self.durable, self.stream, stream_seq),
            }
        )
        ack = await self.bus.publish_raw(subjects.dlq_subject(self.durable), data, out)
        if ack.duplicate:
            log.info("dead_letter_already_sent", consumer=self.durable, stream_seq=stream_seq)
            return
        metrics.MESSAGES_DEAD_LETTERED.labels(self.durable, kind).inc()
        log.error("message_dead_lettered", consumer=self.durable, stream_seq=stream_seq, reason=reason)


def _filters(cfg: ConsumerConfig) -> list[str]:
    if cfg.filter_subjects:
        return sorted(cfg.filter_subjects)
    return [cfg.filter_subject] if cfg.filter_subject else []


async def _release(msg: Msg) -> None:
    """Nak ``msg`` unless it was settled already."""
    try:
        await msg.nak()
    except nats.errors.MsgAlreadyAckdError:
        pass
    except Exception as exc:  # noqa: BLE001
        log.warning("settle_failed", error=repr(exc))


async def _quietly(aw: Awaitable[None]) -> None:
    try:
        await aw
    except Exception as exc:  # noqa: BLE001
        log.warning("settle_failed", error=repr(exc))
