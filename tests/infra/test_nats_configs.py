"""The shipped NATS configs are valid, fsync every write, and the 3-node example forms a JetStream cluster."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import nats
import pytest
from nats.js.api import StreamConfig

from deploy.devcloud.process import http_ok
from deploy.local.nats import find_nats_server
from deploy.local.ports import free_port
from tests.conftest import REPO_ROOT, stop_process, wait_for

pytestmark = pytest.mark.integration

CONFIGS = [
    REPO_ROOT / "deploy/nats/cove-nats.conf",
    *(REPO_ROOT / f"deploy/nats/cluster/n{i}.conf" for i in (1, 2, 3)),
]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_is_valid_and_syncs_always(path: Path) -> None:
    text = path.read_text()
    assert re.search(r"^\s*sync_interval:\s*always\s*$", text, re.MULTILINE), path
    assert "0.0.0.0" not in text
    result = subprocess.run([find_nats_server(), "-c", str(path), "-t"], capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 0, result.stderr


def _spawn_node(conf: Path, log_file: Path) -> subprocess.Popen[bytes]:
    with open(log_file, "wb") as log:
        return subprocess.Popen([find_nats_server(), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


async def test_three_node_example_forms_a_jetstream_cluster(tmp_path: Path) -> None:
    """Start n1..n3 with their ports remapped to free ones; an R3 stream accepts and replicates writes."""
    client, route, monitor = ({i: free_port() for i in (1, 2, 3)} for _ in range(3))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in (1, 2, 3):
            text = (REPO_ROOT / f"deploy/nats/cluster/n{i}.conf").read_text()
            for n in (1, 2, 3):
                text = text.replace(f"127.0.0.1:423{n}", f"127.0.0.1:{client[n]}")
                text = text.replace(f"127.0.0.1:623{n}", f"127.0.0.1:{route[n]}")
                text = text.replace(f"127.0.0.1:823{n}", f"127.0.0.1:{monitor[n]}")
            text = text.replace(f'"/var/lib/cove/nats-n{i}"', f'"{tmp_path / f"n{i}"}"')
            conf = tmp_path / f"n{i}.conf"
            conf.write_text(text)
            procs.append(_spawn_node(conf, tmp_path / f"n{i}.log"))
        healthz = [f"http://127.0.0.1:{monitor[i]}/healthz" for i in (1, 2, 3)]
        await wait_for(lambda: all(http_ok(url) for url in healthz), timeout=60, message="all 3 nodes healthy")
        servers = [f"nats://127.0.0.1:{client[i]}" for i in (1, 2, 3)]
        nc = await nats.connect(servers=servers)
        try:
            js = nc.jetstream()

            async def add_r3_stream() -> bool:
                await js.add_stream(StreamConfig(name="CLUSTERED", subjects=["clustered.>"], num_replicas=3))
                return True

            await wait_for(add_r3_stream, timeout=60, interval=0.5, message="R3 stream created (meta leader elected)",
                           ignore=(nats.errors.Error,))
            async def has_leader() -> bool:
                info = await js.stream_info("CLUSTERED")
                return bool(info.cluster and info.cluster.leader)

            await wait_for(has_leader, timeout=60, interval=0.2, message="the R3 stream has a leader",
                           ignore=(nats.errors.Error,))
            for k in range(10):

                async def publish(k: int = k) -> bool:
                    # a retry after a leader change is deduplicated by the message id
                    await js.publish("clustered.x", str(k).encode(), headers={"Nats-Msg-Id": f"m{k}"})
                    return True

                await wait_for(publish, timeout=30, interval=0.2, message=f"publish {k}", ignore=(nats.errors.Error,))
            info = await js.stream_info("CLUSTERED")
            assert info.state.messages == 10
            assert info.cluster is not None and len(info.cluster.replicas or []) == 2
        finally:
            await nc.close()
    finally:
        for proc in procs:
            stop_process(proc)
