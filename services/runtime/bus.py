"""The NATS JetStream connection every service shares: streams, publishing with dedup and optimistic locking."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import PubAck, StreamConfig

from proto import streams
from proto.envelope import Envelope, encode
from services.runtime import tracing

log = structlog.get_logger(__name__)

MSG_ID = "Nats-Msg-Id"
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
EVENT_TYPE = "Cove-Event-Type"
WRONG_LAST_SEQUENCE = 10071
STREAM_NAME_IN_USE = 10058


def servers(url: str) -> list[str]:
    """The server addresses of a comma-separated NATS URL (nats-py takes a list, not a comma-separated string)."""
    return [part.strip() for part in url.split(",") if part.strip()]


class ConcurrencyConflict(Exception):
    """A publish with an expected last subject sequence found the subject at another sequence."""

    def __init__(self, subject: str, expected: int, detail: str) -> None:
        super().__init__(f"concurrency conflict on {subject}: expected last sequence {expected} ({detail})")
        self.subject = subject
        self.expected = expected


class Bus:
    """A connected NATS client plus its JetStream context. Create with ``await Bus.connect(url, name=...)``."""

    def __init__(self, nc: NATS, js: JetStreamContext) -> None:
        self.nc = nc
        self.js = js

    @classmethod
    async def connect(
        cls, url: str, *, name: str = "cove", reconnect_time_wait: float = 1.0, connect_timeout: float = 5.0,
        user: str | None = None, password: str | None = None, credentials: str | None = None,
        inbox_prefix: str | None = None,
    ) -> Bus:
        """``url`` may list several servers, comma-separated (a NATS cluster: the client fails over between them).
        ``user``/``password`` or a ``credentials`` file (JWT + nkey) authenticate; ``inbox_prefix`` names the
        inboxes replies come to (a service's NATS permissions allow only its own, deploy/local/natsauth.py)."""
        async def disconnected() -> None:
            log.warning("nats_disconnected", name=name)

        async def reconnected() -> None:
            log.info(
                "nats_reconnected",
                name=name,
                url=str(nc.connected_url.geturl()) if nc.connected_url else None,
            )

        async def error(exc: Exception) -> None:
            log.warning("nats_error", name=name, error=repr(exc))

        auth: dict[str, object] = {}
        if user:
            auth.update(user=user, password=password or "")
        if credentials:
            auth["user_credentials"] = credentials
        if inbox_prefix:
            auth["inbox_prefix"] = inbox_prefix
        nc = await nats.connect(
            servers(url),
            name=name,
            **auth,  # type: ignore[arg-type]
            max_reconnect_attempts=-1,
            reconnect_time_wait=reconnect_time_wait,
            connect_timeout=connect_timeout,
            allow_reconnect=True,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
        )
        log.info("nats_connected", name=name, url=re.sub(r"//[^@/,]*@", "//", url))  # never the password
        return cls(nc, nc.jetstream())

    @property
    def connected(self) -> bool:
        return self.nc.is_connected

    async def ensure_streams(self, configs: Iterable[StreamConfig] | None = None, *, patience: float = 60.0) -> None:
        """Create each stream, or update it to the given configuration when it already exists (its replicas too:
        ``COVE_STREAM_REPLICAS``). A JetStream cluster that is electing its leader, or busy with every copy of every
        service doing the same at once, answers late or "temporarily unavailable": each step is tried again for up
        to ``patience`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience
        for cfg in configs if configs is not None else streams.all_streams():
            assert cfg.name is not None
            while True:
                try:
                    await self._ensure_stream(cfg)
                    break
                except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError) as exc:
                    if loop.time() >= deadline:
                        raise
                    log.warning("stream_not_ready_retrying", stream=cfg.name, error=repr(exc))
                    await asyncio.sleep(0.5)

    async def _ensure_stream(self, cfg: StreamConfig) -> None:
        assert cfg.name is not None
        try:
            await self.js.stream_info(cfg.name)
        except nats.js.errors.NotFoundError:
            try:
                await self.js.add_stream(cfg)
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code != STREAM_NAME_IN_USE:  # another copy created it a moment ago: update below
                    raise
            else:
                log.info("stream_created", stream=cfg.name)
                return
        await self.js.update_stream(cfg)
        log.debug("stream_updated", stream=cfg.name)

    async def publish(
        self,
        subject: str,
        envelope: Envelope,
        *,
        msg_id: str | None = None,
        expected_last_subject_seq: int | None = None,
        timeout: float = 5.0,
        extra_headers: dict[str, str] | None = None,
    ) -> PubAck:
        """Publish an event; ``Nats-Msg-Id`` (default ``envelope.id``) deduplicates within the stream window.

        ``expected_last_subject_seq`` makes the write conditional on the subject's last sequence (0 = the
        subject must be empty); a mismatch raises ``ConcurrencyConflict``. ``ack.duplicate`` tells a
        deduplicated publish apart. ``extra_headers`` travel with it (a lease's fencing token).
        """
        headers = tracing.inject({MSG_ID: msg_id or envelope.id, EVENT_TYPE: envelope.type, **(extra_headers or {})})
        if expected_last_subject_seq is not None:
            headers[EXPECTED_LAST_SUBJECT_SEQ] = str(expected_last_subject_seq)
        try:
            ack = await self.js.publish(subject, encode(envelope), timeout=timeout, headers=headers)
        except nats.js.errors.APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE and expected_last_subject_seq is not None:
                raise ConcurrencyConflict(subject, expected_last_subject_seq, exc.description or "") from exc
            raise
        log.debug(
            "event_published",
            subject=subject,
            event_id=envelope.id,
            type=envelope.type,
            seq=ack.seq,
            duplicate=ack.duplicate,
        )
        return ack

    async def publish_raw(
        self, subject: str, data: bytes, headers: dict[str, str] | None = None, *, timeout: float = 5.0
    ) -> PubAck:
        """Publish bytes as they are (dead letters keep the original data)."""
        return await self.js.publish(subject, data, timeout=timeout, headers=headers)

    async def drain(self) -> None:
        if not self.nc.is_closed:
            try:
                await self.nc.drain()
            except (nats.errors.ConnectionClosedError, nats.errors.FlushTimeoutError):
                await self.nc.close()

    async def close(self) -> None:
        if not self.nc.is_closed:
            await self.nc.close()
