"""NATS request-reply with proto.requests coding: ``serve`` answers a subject in a queue group, ``request`` asks."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry import trace

from proto.envelope import MalformedMessage
from proto.requests import ErrorReply, Message, decode_request, encode_request
from services.runtime import tracing

log = structlog.get_logger(__name__)

RpcHandler = Callable[[Message], Awaitable[Message]]


class RpcError(Exception):
    """The remote side answered ``ErrorReply`` (or nobody answered: code 503/504)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


CONCURRENCY = 64
"""Requests one subscription answers at the same time (nats-py calls a subscription's callback one message at a
time: a handler that waits, e.g. on a publish that fsyncs, would otherwise hold every request behind it)."""


async def serve(nc: NATS, subject: str, queue: str, handler: RpcHandler, *,
                concurrency: int = CONCURRENCY) -> Subscription:
    """Answer requests on ``subject`` as a member of queue group ``queue`` (one member answers each request), up to
    ``concurrency`` at once; beyond that the subscription waits for a free slot (its pending messages are NATS's
    to bound).

    A handler raising ``RpcError`` answers ``ErrorReply(code, message)``; any other exception answers 500;
    an undecodable request answers 400; an answer larger than the server's max payload answers 413.
    """
    slots = asyncio.Semaphore(concurrency)
    running: set[asyncio.Task[None]] = set()

    def done(task: asyncio.Task[None]) -> None:
        running.discard(task)
        slots.release()

    async def on_msg(msg: Msg) -> None:
        await slots.acquire()
        task = asyncio.create_task(answer(msg))
        running.add(task)
        task.add_done_callback(done)

    async def answer(msg: Msg) -> None:
        parent = tracing.extract(msg.headers)
        with tracing.tracer(__name__).start_as_current_span(
            f"rpc {subject}", context=parent, kind=trace.SpanKind.SERVER
        ):
            try:
                req = decode_request(msg.data)
                reply = await handler(req)
            except MalformedMessage as exc:
                reply = ErrorReply(code=400, message=f"malformed request: {exc}")
            except RpcError as exc:
                reply = ErrorReply(code=exc.code, message=exc.message)
            except Exception as exc:
                log.exception("rpc_handler_failed", subject=subject)
                reply = ErrorReply(code=500, message=f"{type(exc).__name__}: {exc}")
            if msg.reply:
                data = encode_request(reply)
                if len(data) > nc.max_payload:  # NATS would refuse it, and the asker would wait out its timeout
                    log.warning("rpc_reply_too_large", subject=subject, size=len(data), max_payload=nc.max_payload)
                    data = encode_request(ErrorReply(code=413, message=(
                        f"the answer ({len(data):,} bytes) is larger than a NATS message may be "
                        f"({nc.max_payload:,} bytes): ask for less")))
                await msg.respond(data)

    sub = await nc.subscribe(subject, queue=queue, cb=on_msg)
    log.info("rpc_serving", subject=subject, queue=queue)
    return sub


async def request(nc: NATS, subject: str, req: Message, timeout: float = 5.0) -> Message:
    """Send ``req`` and return the decoded reply; ``ErrorReply`` is raised as ``RpcError``."""
    with tracing.tracer(__name__).start_as_current_span(f"rpc {subject}", kind=trace.SpanKind.CLIENT):
        headers = tracing.inject({})
        try:
            msg = await nc.request(subject, encode_request(req), timeout=timeout, headers=headers)
        except nats.errors.NoRespondersError as exc:
            raise RpcError(503, f"no service answers {subject}") from exc
        except (nats.errors.TimeoutError, TimeoutError) as exc:
            raise RpcError(504, f"no answer from {subject} within {timeout}s") from exc
    try:
        reply = decode_request(msg.data)
    except MalformedMessage as exc:
        raise RpcError(502, f"malformed reply from {subject}: {exc}") from exc
    if isinstance(reply, ErrorReply):
        raise RpcError(reply.code, reply.message)
    return reply
