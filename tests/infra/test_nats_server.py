"""The local NatsServer: JetStream on, every write fsynced, and messages survive a crash (SIGKILL) + restart."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import nats
import pytest
from nats.js.api import StorageType, StreamConfig

from deploy.local.nats import NatsServer, find_nats_server, nats_server_version, render_config
from tests.conftest import wait_for

pytestmark = pytest.mark.integration


def test_binary_is_found_and_reports_its_version() -> None:
    version = nats_server_version(find_nats_server())
    assert version.startswith("v2."), version


def test_rendered_config_syncs_always(tmp_path) -> None:  # type: ignore[no-untyped-def]
    text = render_config(port=4999, http_port=8999, store_dir=tmp_path)
    assert "sync_interval: always" in text
    assert "listen: 127.0.0.1:4999" in text
    assert "http: 127.0.0.1:8999" in text


async def test_jetstream_enabled_with_sync_always(nats_server: NatsServer) -> None:
    varz = nats_server.monitor("varz")
    js_config = varz["jetstream"]["config"]
    assert js_config["sync_always"] is True
    assert js_config["store_dir"].startswith(str(nats_server.data_dir))
    assert varz["host"] == "127.0.0.1"
    jsz = nats_server.monitor("jsz")
    assert jsz["config"]["sync_always"] is True


async def test_stream_survives_kill_and_restart(make_nats_server: Callable[..., NatsServer]) -> None:
    server = make_nats_server()
    url = server.url
    nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="INFRA", subjects=["infra.>"], storage=StorageType.FILE))
        for i in range(50):
            ack = await js.publish(f"infra.m.{i % 5}", f"message-{i}".encode())
            assert ack.seq == i + 1

        pid_before = server.pid
        await asyncio.to_thread(server.kill)
        assert not server.is_running()
        await asyncio.to_thread(server.restart)
        assert server.is_running() and server.pid != pid_before
        assert server.url == url  # same port after restart

        async def stream_back() -> int:
            info = await js.stream_info("INFRA")
            return int(info.state.messages)

        count = await wait_for(stream_back, timeout=20, message="stream INFRA readable after restart",
                               ignore=(nats.errors.Error, asyncio.TimeoutError))
        assert count == 50
        last = await js.get_msg("INFRA", seq=50)
        assert last.data == b"message-49"
    finally:
        await nc.close()


async def test_shared_server_is_healed_after_a_test_kills_it(nats_server: NatsServer) -> None:
    # The nats_server fixture restarts the shared server after this test; the next test checks it.
    await asyncio.to_thread(nats_server.kill)
    assert not nats_server.is_running()


async def test_shared_server_is_running_again(nats_server: NatsServer, nats_url: str) -> None:
    assert nats_server.is_running()
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().account_info()
        assert info.limits is not None
    finally:
        await nc.close()
