from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from pathlib import Path

import aiohttp
import pytest

from proto import subjects
from proto.envelope import decode, new_envelope
from proto.events import ClusterRejected, ServiceHeartbeat
from proto.requests import ClusterCA, GetClusterCA, SignCertificate
from services.runtime import rpc
from services.runtime.bus import Bus
from services.runtime.health import HealthServer
from services.runtime.heartbeat import Heartbeat
from services.runtime.rpc import RpcError
from services.runtime.service import ServiceConfig
from tests.conftest import wait_for

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.text()


async def test_rpc_request_reply_with_a_queue_group(bus: Bus) -> None:
    subject = subjects.rpc_subject(f"t{uuid.uuid4().hex[:8]}", "get_ca")
    answered: list[str] = []

    def member(name: str) -> rpc.RpcHandler:
        async def handle(req: object) -> ClusterCA:
            assert isinstance(req, GetClusterCA)
            answered.append(name)
            if req.cluster_id == "missing":
                raise RpcError(404, "no such cluster")
            if req.cluster_id == "boom":
                raise ValueError("bug")
            if req.cluster_id == "huge":
                return ClusterCA(pem="x" * (bus.nc.max_payload + 1), cluster_id=req.cluster_id)
            return ClusterCA(pem=f"PEM-{req.cluster_id}", cluster_id=req.cluster_id)

        return handle

    subs = [await rpc.serve(bus.nc, subject, "svc", member(n)) for n in ("a", "b")]
    try:
        for i in range(20):
            reply = await rpc.request(bus.nc, subject, GetClusterCA(cluster_id=f"c{i}"))
            assert reply == ClusterCA(pem=f"PEM-c{i}", cluster_id=f"c{i}")
        assert len(answered) == 20  # each request answered exactly once within the group
        with pytest.raises(RpcError) as err:
            await rpc.request(bus.nc, subject, GetClusterCA(cluster_id="missing"))
        assert err.value.code == 404 and err.value.message == "no such cluster"
        with pytest.raises(RpcError) as err:
            await rpc.request(bus.nc, subject, GetClusterCA(cluster_id="boom"))
        assert err.value.code == 500
        with pytest.raises(RpcError) as err:  # at once, not after the request's timeout
            await rpc.request(bus.nc, subject, GetClusterCA(cluster_id="huge"), timeout=3)
        assert err.value.code == 413 and "larger than a NATS message" in err.value.message
        with pytest.raises(RpcError) as err:
            await rpc.request(
                bus.nc,
                subjects.rpc_subject("nobody", "here"),
                SignCertificate(cluster_id="c", project_id="p", csr_pem="x"),
            )
        assert err.value.code in (503, 504)
    finally:
        for s in subs:
            await s.unsubscribe()


async def test_health_endpoints(tmp_path: Path) -> None:
    state = {"db": True}
    port_file = tmp_path / "svc.port"
    hs = HealthServer("svc", 0, port_file=port_file)

    async def db_ok() -> bool:
        return state["db"]

    hs.add_check("database", db_ok)
    port = await hs.start()
    try:
        assert port_file.read_text() == str(port)
        base = f"http://127.0.0.1:{port}"
        assert (await _get(f"{base}/healthz"))[0] == 200
        status, body = await _get(f"{base}/readyz")
        assert status == 200 and json.loads(body)["checks"] == {"database": True}
        state["db"] = False
        status, body = await _get(f"{base}/readyz")
        assert status == 503 and json.loads(body)["checks"] == {"database": False}
        status, body = await _get(f"{base}/metrics")
        assert status == 200 and "cove_messages_handled_total" in body and "cove_handler_seconds" in body
    finally:
        await hs.stop()


async def test_heartbeat_keeps_last_per_service(bus: Bus) -> None:
    service = f"t{uuid.uuid4().hex[:8]}"
    hb = Heartbeat(bus, service, interval=0.1)
    hb.start()
    subject = subjects.heartbeat_subject(service)

    async def beats() -> int:
        info = await bus.js.stream_info(subjects.HEARTBEATS_STREAM, subjects_filter=subject)
        return info.state.messages if (info.state.subjects or {}).get(subject) else 0

    await wait_for(beats)
    first = (await bus.js.get_last_msg(subjects.HEARTBEATS_STREAM, subject)).seq

    async def several_beats() -> bool:
        return (await bus.js.get_last_msg(subjects.HEARTBEATS_STREAM, subject)).seq > first + 2

    await wait_for(several_beats)  # several beats happened: the stream still keeps one for this subject
    await hb.stop()
    msg = await bus.js.get_last_msg(subjects.HEARTBEATS_STREAM, subject)
    payload = decode(msg.data).payload
    assert (
        isinstance(payload, ServiceHeartbeat) and payload.state == "stopping" and payload.pid == os.getpid()
    )
    info = await bus.js.stream_info(subjects.HEARTBEATS_STREAM, subjects_filter=subject)
    assert (info.state.subjects or {})[subject] == 1


def test_service_config_from_env() -> None:
    cfg = ServiceConfig.from_env(
        "api",
        {"COVE_NATS_URL": "nats://x:1", "COVE_HTTP_PORT": "8080", "COVE_DATABASE_URL": "", "COVE_X": "y"},
    )
    assert cfg.service == "api" and cfg.nats_url == "nats://x:1" and cfg.http_port == 8080
    assert cfg.database_url is None and cfg.extra["COVE_X"] == "y" and cfg.log_level == "INFO"


async def test_service_runs_and_shuts_down_cleanly_on_sigterm(
    nats_url: str, database_url: str, bus: Bus, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    name, producer = f"sample{tag}", f"t{tag}"
    port_file = tmp_path / "port"
    log_file = tmp_path / "service.log"
    env = {
        **os.environ,
        "COVE_SERVICE_NAME": name,
        "COVE_NATS_URL": nats_url,
        "COVE_DATABASE_URL": database_url,
        "COVE_HTTP_PORT": "0",
        "COVE_HTTP_PORT_FILE": str(port_file),
        "COVE_HEARTBEAT_INTERVAL": "0.2",
        "COVE_TEST_SCHEMA": f"rt_{tag}",
        "COVE_TEST_PRODUCER": producer,
    }
    with log_file.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.runtime.sample_service", cwd=REPO, env=env, stdout=out, stderr=out
        )
    try:
        await wait_for(lambda: port_file.exists() or proc.returncode is not None, timeout=30)
        assert proc.returncode is None, log_file.read_text()
        base = f"http://127.0.0.1:{port_file.read_text()}"
        await wait_for(lambda: _ready(base), timeout=15)

        cluster = str(uuid.uuid4())
        ev = new_envelope(
            ClusterRejected(uuid=cluster, project_id="p", reason="quota"), project_id="p", cluster_id=cluster
        )
        await bus.publish(subjects.cluster_events(producer, cluster), ev)

        async def projected() -> ClusterCA | None:
            try:
                r = await rpc.request(
                    bus.nc, f"cove.rpc.{name}.get_ca", GetClusterCA(cluster_id=cluster), timeout=2
                )
            except RpcError as exc:
                if exc.code == 404:
                    return None
                raise
            assert isinstance(r, ClusterCA)
            return r

        reply = await wait_for(projected, timeout=15)
        assert reply.pem == "quota"

        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)
        logs = log_file.read_text()
        assert code == 0, logs
        events = [json.loads(line).get("event") for line in logs.splitlines() if line.startswith("{")]
        for expected in ("service_started", "service_signalled", "consumer_stopped", "service_stopped"):
            assert expected in events, (expected, logs)
        hb = decode(
            (await bus.js.get_last_msg(subjects.HEARTBEATS_STREAM, subjects.heartbeat_subject(name))).data
        )
        assert isinstance(hb.payload, ServiceHeartbeat) and hb.payload.state == "stopping"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _ready(base: str) -> bool:
    try:
        status, _ = await _get(f"{base}/readyz")
    except aiohttp.ClientError:
        return False
    return status == 200


def test_tune_gc_freezes_the_startup_heap_and_raises_the_thresholds() -> None:
    import gc

    from services.runtime.service import GC_THRESHOLDS, tune_gc

    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
