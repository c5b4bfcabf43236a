"""A durable JetStream pull consumer loop with decoding, retries with backoff, and dead-lettering."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import nats.errors
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, ConsumerInfo
from opentelemetry import trace

from proto import subjects
from proto.envelope import Envelope, MalformedMessage, decode
from proto.streams import DEFAULT_CONSUMER, ConsumerSettings
from services.runtime import metrics, tracing
from services.runtime.bus import Bus

log = structlog.get_logger(__name__)

Handler = Callable[[Envelope, Msg], Awaitable[None]]
"""Handles one decoded event. Returning acks the message; raising naks it with backoff."""

DLQ_REASON = "Cove-Dlq-Reason"
DLQ_STREAM_SEQ = "Cove-Dlq-Stream-Seq"
DLQ_SUBJECT = "Cove-Dlq-Subject"
DLQ_DELIVERIES = "Cove-Dlq-Deliveries"
DLQ_CONSUMER = "Cove-Dlq-Consumer"


class Consumer:
    """Pulls from a durable consumer on ``stream`` and hands each decoded envelope to ``handler``, in order.

    * bytes that do not decode -> published to ``cove.dlq.<durable>`` with the reason, then ``term``;
    * handler raises -> ``nak(delay=backoff)``; on the ``max_deliver``-th failure -> dead-lettered, ``term``;
    * each message is handled in a consumer span continuing the producer's trace, with the event id,
      correlation id, trace id and cluster id bound into structlog's contextvars.
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
    ) -> None:
        self.bus = bus
        self.on_dead_lettered = on_dead_lettered
        self.durable = durable
        self.filter_subjects = list(filter_subjects)
        self.handler = handler
        self.settings = settings
        self.stream = stream
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._sub: JetStreamContext.PullSubscription | None = None
        self.last_error: str | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # ------------------------------------------------------------------ consumer management

    def config(self, start_seq: int | None = None) -> ConsumerConfig:
        return self.settings.consumer_config(self.durable, self.filter_subjects, start_seq=start_seq)

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
        if _filters(info.config) != sorted(self.filter_subjects):
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
        self._sub = await self.bus.js.pull_subscribe_bind(durable=self.durable, stream=self.stream)
        self._task = asyncio.create_task(self._run(), name=f"consumer:{self.durable}")
        log.info("consumer_started", consumer=self.durable, filter_subjects=self.filter_subjects)

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop fetching; the message in hand is finished, the rest of the batch is released (nak)."""
        self._stopping.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout)
            except TimeoutError:
                self._task.cancel()
            self._task = None
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except (nats.errors.ConnectionClosedError, nats.errors.BadSubscriptionError):
                pass
            self._sub = None
        log.info("consumer_stopped", consumer=self.durable)

    async def _run(self) -> None:
        assert self._sub is not None
        failures = 0
        while not self._stopping.is_set():
            try:
                msgs = await self._sub.fetch(self.settings.fetch_batch, timeout=self.settings.fetch_timeout)
            except (nats.errors.TimeoutError, TimeoutError):
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
            for i, msg in enumerate(msgs):
                if self._stopping.is_set():
                    for rest in msgs[i:]:
                        await _quietly(rest.nak())
                    return
                await self.process(msg)

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
                await self.handler(env, msg)
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

    async def dead_letter(self, msg: Msg, reason: str, *, kind: str = "other") -> None:
        """Publish the original bytes and headers plus the reason to ``cove.dlq.<durable>``, then ``term``."""
        md = msg.metadata
        headers = {k: v for k, v in (msg.headers or {}).items() if k != "Nats-Msg-Id"}
        headers.update(
            {
                DLQ_REASON: reason.replace("\r", " ").replace("\n", " ")[:1000],
                DLQ_STREAM_SEQ: str(md.sequence.stream),
                DLQ_SUBJECT: msg.subject,
                DLQ_DELIVERIES: str(md.num_delivered),
                DLQ_CONSUMER: self.durable,
                "Nats-Msg-Id": f"dlq:{self.durable}:{md.stream}:{md.sequence.stream}",
            }
        )
        try:
            await self.bus.publish_raw(subjects.dlq_subject(self.durable), msg.data, headers)
        except Exception as exc:  # noqa: BLE001 - keep the message: it will be redelivered
            log.error("dead_letter_publish_failed", error=repr(exc), stream_seq=md.sequence.stream)
            await _quietly(msg.nak(delay=self.settings.nak_delay(md.num_delivered)))
            return
        await msg.term()
        if self.on_dead_lettered is not None:
            await _quietly(self.on_dead_lettered(msg))
        metrics.MESSAGES_DEAD_LETTERED.labels(self.durable, kind).inc()
        log.error(
            "message_dead_lettered", consumer=self.durable, stream_seq=md.sequence.stream, reason=reason
        )


def _filters(cfg: ConsumerConfig) -> list[str]:
    if cfg.filter_subjects:
        return sorted(cfg.filter_subjects)
    return [cfg.filter_subject] if cfg.filter_subject else []


async def _quietly(aw: Awaitable[None]) -> None:
    try:
        await aw
    except Exception as exc:  # noqa: BLE001
        log.warning("settle_failed", error=repr(exc))
