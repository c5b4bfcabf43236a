"""A service starting while its JetStream cluster has lost its quorum (two of three nodes down, as right after a
node's restart when the cluster still moves leaders) waits for it and starts, rather than exiting on the first
unanswered request (services/runtime/service.py ``patiently``; issue 16's chaos run restarted such services)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from deploy.local.nats import NatsCluster
from proto.envelope import Envelope, new_envelope
from proto.events import ClusterRejected
from services.runtime.bus import Bus
from services.runtime.lease import Leases
from services.runtime.service import Service, ServiceConfig
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

OUTAGE = 3.0
"""Seconds the two nodes stay down once the service has made its streams."""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    nats = NatsCluster(tmp_path / "nats", size=3)
    nats.start()
    try:
        yield nats
    finally:
        nats.stop()


async def test_a_service_waits_for_its_jetstream_quorum_while_starting(cluster: NatsCluster) -> None:
    name = f"patient{uuid.uuid4().hex[:6]}"
    svc = Service(ServiceConfig(service=name, nats_url=cluster.url))
    got: list[Envelope] = []

    async def handle(env: Envelope, msg: Msg) -> None:
        got.append(env)

    svc.add_consumer(f"{name}_c", handle, [f"cove.evt.{name}.>"])
    outage: list[asyncio.Task[None]] = []
    opened: list[Leases] = []
    back = asyncio.Event()

    def leaderless() -> bool:
        return not cluster.nodes[0].monitor("jsz").get("meta_cluster", {}).get("leader")

    async def lose_the_quorum(s: Service) -> None:
        # the streams exist; the consumer's creation comes next, with two of three nodes gone and the survivor
        # knowing it has no JetStream leader
        await asyncio.gather(*(asyncio.to_thread(node.stop) for node in cluster.nodes[1:]))
        await wait_for(lambda: asyncio.to_thread(leaderless), timeout=60, interval=0.2, message="no meta leader")

        async def come_back() -> None:
            await asyncio.sleep(OUTAGE)
            back.set()
            for node in cluster.nodes[1:]:
                await asyncio.to_thread(node.start)

        outage.append(asyncio.create_task(come_back()))

    async def open_leases(s: Service) -> None:
        assert s.bus is not None
        opened.append(await Leases.open(s.bus.js, holder=name))  # a key-value bucket made while starting too

    svc.on_startup(lose_the_quorum)
    svc.add_task(open_leases)
    try:
        await asyncio.wait_for(svc.start(), 120)
        assert back.is_set(), "the service started without its JetStream quorum"
        await wait_for(lambda: bool(opened), timeout=60, message="the leases' bucket opened")
        bus = await Bus.connect(cluster.url, name="probe")
        try:
            env = new_envelope(ClusterRejected(uuid="c1", project_id="p", reason="test"), project_id="p",
                               cluster_id="c1")
            await bus.publish(f"cove.evt.{name}.cluster.c1", env)
            await wait_for(lambda: [e.id for e in got] == [env.id], timeout=30, message="the consumer runs")
        finally:
            await bus.close()
        assert await svc.health.readiness() == {k: True for k in svc.health.checks}
    finally:
        if svc.started:
            await svc.stop()
        for task in outage:
            await task
