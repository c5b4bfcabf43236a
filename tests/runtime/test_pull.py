"""The standing pull (services/runtime/pull.py) and the consumer settings it came with, against a real nats-server.

What e9a0f23 changed and these tests pin:
* consumers no longer give the server a BackOff: JetStream replaces AckWait with BackOff[0] when one is set, so a
  message queued behind a slow batch was delivered a second time after one second;
* the feed keeps pull requests outstanding and must notice when the server refused them (409: the durable was
  deleted, or the server is shutting down) or forgot them without a word (it crashed: only the client's reconnect
  tells), instead of waiting for them to expire;
* stopping a consumer releases (naks) what the feed had buffered, so another replica gets it at once, not after
  ack_wait.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from deploy.local.nats import NatsServer
from proto import subjects
from proto.envelope import Envelope, new_envelope
from proto.events import ClusterRejected
from proto.streams import ConsumerSettings
from services.runtime.bus import Bus
from services.runtime.consumer import Consumer
from services.runtime.pull import PullFeed
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

RESUME_WITHIN = 3.0
"""Seconds within which delivery must resume after the server forgot or refused the outstanding pulls. Well under
PullFeed's expires + GRACE (5 + 1 s): a feed still counting on the lost requests would only ask again then."""


def _event(cluster: str) -> Envelope:
    return new_envelope(
        ClusterRejected(uuid=cluster, project_id="p", reason="quota"), project_id="p", cluster_id=cluster
    )


class Recorder:
    """A handler that records each delivery's ``num_delivered`` per event id."""

    def __init__(self) -> None:
        self.deliveries: dict[str, list[int]] = {}

    async def __call__(self, env: Envelope, msg: Msg) -> None:
        self.deliveries.setdefault(env.id, []).append(msg.metadata.num_delivered)

    def has(self, *envs: Envelope) -> bool:
        return all(env.id in self.deliveries for env in envs)


def _names() -> tuple[str, str, str]:
    """A producer of our own (its subjects), the durable consuming them, and one cluster's subject."""
    producer = f"t{uuid.uuid4().hex[:8]}"
    return f"c_{producer}", f"cove.evt.{producer}.>", subjects.cluster_events(producer, str(uuid.uuid4()))


@pytest.fixture
async def private_bus(make_nats_server: Callable[..., NatsServer]) -> AsyncIterator[tuple[NatsServer, Bus]]:
    """A nats-server of this test's own (so it may restart it) and a Bus on it that reconnects quickly."""
    server = make_nats_server()
    bus = await Bus.connect(server.url, name="test-pull", reconnect_time_wait=0.1)
    await bus.ensure_streams()
    yield server, bus
    await bus.close()


async def test_consumer_config_keeps_ack_wait_and_gives_the_server_no_backoff(bus: Bus) -> None:
    settings = ConsumerSettings()
    assert settings.backoff and settings.max_deliver > len(settings.backoff)  # what used to become a BackOff
    durable, filter_subject, _ = _names()
    await _ensured_without_backoff(bus, durable, filter_subject, settings)


async def _ensured_without_backoff(bus: Bus, durable: str, filter_subject: str, settings: ConsumerSettings) -> None:
    """``Consumer.ensure()`` leaves the server's consumer with ``ack_wait`` and no BackOff (then deletes it)."""
    c = Consumer(
        bus, durable=durable, filter_subjects=[filter_subject], handler=Recorder(), settings=settings
    )
    try:
        await c.ensure()
        info = await bus.js.consumer_info(subjects.EVENTS_STREAM, durable)
        assert info.config.ack_wait == settings.ack_wait
        assert not info.config.backoff
        assert info.config.max_deliver == settings.max_deliver
    finally:
        await bus.js.delete_consumer(subjects.EVENTS_STREAM, durable)


async def test_ensure_removes_the_backoff_an_older_version_gave_the_server(bus: Bus) -> None:
    """The commit relies on ensure() updating existing consumers in place: BackOff removed, ack_wait restored."""
    settings = ConsumerSettings()
    durable, filter_subject, _ = _names()
    await bus.js.add_consumer(
        subjects.EVENTS_STREAM,
        ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=settings.ack_wait,
            max_deliver=settings.max_deliver,
            backoff=list(settings.backoff),
            max_ack_pending=settings.max_ack_pending,
            filter_subject=filter_subject,
        ),
    )
    old = await bus.js.consumer_info(subjects.EVENTS_STREAM, durable)
    assert old.config.backoff and old.config.ack_wait == settings.backoff[0]  # the server's substitution
    await _ensured_without_backoff(bus, durable, filter_subject, settings)


async def test_a_message_queued_behind_a_slow_batch_is_delivered_once(bus: Bus) -> None:
    """With the old server BackOff (1, 5, ...) every message still unacked after 1 s was delivered again."""
    settings = ConsumerSettings(fetch_timeout=0.2)  # the defaults: ack_wait 30 s, backoff (1, 5, 15, 30)
    durable, filter_subject, subject = _names()
    recorder = Recorder()
    slow: list[str] = []

    async def handler(env: Envelope, msg: Msg) -> None:
        if not slow:
            slow.append(env.id)
            await asyncio.sleep(1.5)  # longer than the old 1 s first-delivery ack wait
        await recorder(env, msg)

    sent = [_event(str(uuid.uuid4())) for _ in range(5)]
    for env in sent:
        await bus.publish(subject, env)
    c = Consumer(bus, durable=durable, filter_subjects=[filter_subject], handler=handler, settings=settings)
    await c.start()
    try:
        await wait_for(lambda: recorder.has(*sent), timeout=5, message="every message handled")
        await wait_for(lambda: _settled(bus, durable), timeout=5, message="nothing pending or unacked")
        info = await bus.js.consumer_info(subjects.EVENTS_STREAM, durable)
        assert info.delivered.consumer_seq == len(sent), "the server delivered some message more than once"
        assert recorder.deliveries == {env.id: [1] for env in sent}
    finally:
        await c.stop()
        await bus.js.delete_consumer(subjects.EVENTS_STREAM, durable)


async def _running_consumer(bus: Bus) -> tuple[Consumer, Recorder, str]:
    """A started consumer recording what it handles; returns it, the recorder and a subject it reads."""
    durable, filter_subject, subject = _names()
    recorder = Recorder()
    settings = ConsumerSettings(backoff=(0.1,), fetch_timeout=0.2)
    c = Consumer(bus, durable=durable, filter_subjects=[filter_subject], handler=recorder, settings=settings)
    await c.start()
    return c, recorder, subject


async def _resumes(bus: Bus, subject: str, recorder: Recorder, before: Envelope, what: str) -> None:
    """A message published now is handled within RESUME_WITHIN, once, and ``before`` was handled once too."""
    after = _event(str(uuid.uuid4()))
    await bus.publish(subject, after)
    published = time.monotonic()
    await wait_for(lambda: recorder.has(after), timeout=RESUME_WITHIN, message=what)
    assert time.monotonic() - published < RESUME_WITHIN
    assert recorder.deliveries == {before.id: [1], after.id: [1]}


def _crash_and_start(server: NatsServer) -> None:
    server.kill()
    server.start()


@pytest.mark.parametrize("bounce", [NatsServer.restart, _crash_and_start], ids=["restart", "crash"])
async def test_delivery_resumes_after_the_server_restarts(
    private_bus: tuple[NatsServer, Bus], bounce: Callable[[NatsServer], None]
) -> None:
    """The restarted server has forgotten the outstanding pull requests. Stopping, it answers them with 409 (server
    shutdown); killed, it says nothing and the feed can only learn of it through the client's reconnect."""
    server, bus = private_bus
    c, recorder, subject = await _running_consumer(bus)
    try:
        before = _event(str(uuid.uuid4()))
        await bus.publish(subject, before)
        await wait_for(lambda: recorder.has(before), timeout=5)

        reconnects = bus.nc.stats["reconnects"]
        await asyncio.to_thread(bounce, server)
        await wait_for(lambda: bus.connected and bus.nc.stats["reconnects"] > reconnects, timeout=10)

        await _resumes(bus, subject, recorder, before, "the message published after the restart handled")
    finally:
        await c.stop(timeout=5)


async def test_delivery_resumes_after_the_durable_is_deleted_and_recreated(bus: Bus) -> None:
    """The server answers the outstanding pulls with 409 (consumer deleted); the feed must ask again."""
    c, recorder, subject = await _running_consumer(bus)
    try:
        before = _event(str(uuid.uuid4()))
        ack = await bus.publish(subject, before)
        await wait_for(lambda: recorder.has(before), timeout=5)

        await c.recreate(start_seq=ack.seq + 1)  # delete + add while the feed's pull is outstanding

        await _resumes(bus, subject, recorder, before, "the message published after the re-creation handled")
    finally:
        await c.stop()
        await bus.js.delete_consumer(subjects.EVENTS_STREAM, c.durable)


async def test_stopping_a_consumer_releases_what_it_had_buffered(bus: Bus) -> None:
    """A replica stopping while its handler is busy naks the messages its feed had taken: another replica gets them
    at once, not after ack_wait (30 s here)."""
    batch = 8
    settings = ConsumerSettings(ack_wait=30, backoff=(0.1,), fetch_batch=batch, fetch_timeout=0.2)
    durable, filter_subject, subject = _names()
    release = asyncio.Event()
    first_handled = Recorder()

    async def blocking(env: Envelope, msg: Msg) -> None:
        await first_handled(env, msg)
        await release.wait()

    sent = [_event(str(uuid.uuid4())) for _ in range(10)]
    first = Consumer(
        bus, durable=durable, filter_subjects=[filter_subject], handler=blocking, settings=settings
    )
    second_handled = Recorder()
    second = Consumer(
        bus, durable=durable, filter_subjects=[filter_subject], handler=second_handled, settings=settings
    )
    await first.start()
    try:
        await bus.publish(subject, sent[0])
        await wait_for(lambda: first_handled.has(sent[0]), timeout=5)  # the handler now holds the loop
        for env in sent[1:]:
            await bus.publish(subject, env)
        # The feed's one outstanding request (fetch_batch) was filled: the message in hand plus 7 buffered.
        await wait_for(
            lambda: _holding(bus, durable, ack_pending=batch, pending=len(sent) - batch),
            timeout=5,
            message=f"{batch} messages delivered to the first consumer, the rest still on the server",
        )

        # stop() marks the consumer stopping before it waits for the handler; the handler then finishes.
        asyncio.get_running_loop().call_soon(release.set)
        await first.stop(timeout=5)
        assert list(first_handled.deliveries) == [sent[0].id]

        await second.start()
        started = time.monotonic()
        await wait_for(
            lambda: second_handled.has(*sent[1:]),
            timeout=3,
            message="the second consumer handled the remaining messages",
        )
        assert time.monotonic() - started < 3 < settings.ack_wait
        assert (
            second_handled.deliveries
            == {
                **{env.id: [2] for env in sent[1:batch]},  # buffered by the first consumer, released
                **{env.id: [1] for env in sent[batch:]},  # never left the server
            }
        )
    finally:
        release.set()
        await first.stop(timeout=5)
        await second.stop(timeout=5)
        await bus.js.delete_consumer(subjects.EVENTS_STREAM, durable)


async def test_a_handler_still_running_when_stop_gives_up_has_its_message_released(bus: Bus) -> None:
    """stop() cancels a handler that outlives its timeout (a hung cloud call, say); the message it held is naked, so
    another replica handles it at once, not after ack_wait (30 s here)."""
    settings = ConsumerSettings(ack_wait=30, backoff=(0.1,), fetch_timeout=0.2)
    durable, filter_subject, subject = _names()
    hung = Recorder()

    async def hangs(env: Envelope, msg: Msg) -> None:
        await hung(env, msg)
        await asyncio.Event().wait()

    first = Consumer(bus, durable=durable, filter_subjects=[filter_subject], handler=hangs, settings=settings)
    handled = Recorder()
    second = Consumer(bus, durable=durable, filter_subjects=[filter_subject], handler=handled, settings=settings)
    await first.start()
    try:
        sent = _event(str(uuid.uuid4()))
        await bus.publish(subject, sent)
        await wait_for(lambda: hung.has(sent), timeout=5, message="the handler holds the message")
        await first.stop(timeout=0.5)
        await second.start()
        started = time.monotonic()
        await wait_for(lambda: handled.has(sent), timeout=3, message="the released message handled by another")
        assert time.monotonic() - started < 3 < settings.ack_wait
        assert handled.deliveries == {sent.id: [2]}
        await wait_for(lambda: _settled(bus, durable), timeout=5, message="settled")
    finally:
        await first.stop(timeout=1)
        await second.stop(timeout=5)
        await bus.js.delete_consumer(subjects.EVENTS_STREAM, durable)


async def _settled(bus: Bus, durable: str) -> bool:
    info = await bus.js.consumer_info(subjects.EVENTS_STREAM, durable)
    return info.num_pending == 0 and info.num_ack_pending == 0


async def _holding(bus: Bus, durable: str, *, ack_pending: int, pending: int) -> bool:
    info = await bus.js.consumer_info(subjects.EVENTS_STREAM, durable)
    return info.num_ack_pending == ack_pending and info.num_pending == pending


async def test_a_late_status_of_a_request_given_up_ends_no_newer_request(bus: Bus) -> None:
    """The feed gave a pull request up (as it does after a reconnect) but the server still had it: that request's
    408 at its expiry must end only itself, not the newer request the feed sent meanwhile, which would make the feed
    ask for more than it counts on and buffer more than one and a half batches."""
    durable, filter_subject, subject = _names()
    await bus.js.add_consumer(subjects.EVENTS_STREAM, ConsumerConfig(
        durable_name=durable, filter_subject=filter_subject, ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
    ))
    feed = PullFeed(bus.nc, stream=subjects.EVENTS_STREAM, durable=durable, batch=4, expires=1.0)
    await feed.start()
    late: asyncio.Queue[Msg] = asyncio.Queue()
    try:
        await feed.next_batch(0)  # sends request 0 (expires after 1 s)
        assert feed.requests_sent == 1
        spy = await bus.nc.subscribe(f"{feed._inbox}.0", cb=late.put)
        feed._requests.clear()  # given up locally; the server keeps it
        await asyncio.sleep(0.5)
        await feed.next_batch(0)  # sends request 1 (expires half a second after request 0)
        assert feed.requests_sent == 2
        feed._arrived.clear()
        status = await asyncio.wait_for(late.get(), 5)
        assert (status.headers or {}).get("Status") == "408"
        # The feed's own subscription hears the same 408 (nothing else reaches it before request 1 expires).
        await wait_for(feed._arrived.is_set, timeout=5, message="the feed heard the 408")
        assert feed._requested() == 4, "request 1 is still counted on"
        await spy.unsubscribe()
        await bus.publish(subject, _event(str(uuid.uuid4())))
        await wait_for(lambda: len(feed._ready) == 1, timeout=5, message="request 1 delivered")
        assert feed._requested() == 3
    finally:
        for msg in await feed.stop():
            await msg.ack()
        await bus.js.delete_consumer(subjects.EVENTS_STREAM, durable)
