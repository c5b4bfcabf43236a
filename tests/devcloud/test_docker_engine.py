"""A real Docker engine (Debian's docker.io) with TLS from Cove's CA code, and the real `docker` CLI (issue 12).

`dockerd --tlsverify` on 127.0.0.1 with a server certificate and CA issued by services/certs/ca.py (as the certs
service issues a Swarm node's), its state in a temporary directory (`--iptables=false --bridge=none
--storage-driver=vfs`): `docker version` over TLS with a client certificate of the same CA succeeds, and one of
another CA is refused at the handshake. The same files and environment as `openstack coe cluster config` writes
for Swarm (DOCKER_HOST, DOCKER_CERT_PATH with ca.pem, cert.pem, key.pem, DOCKER_TLS_VERIFY=1).

dockerd is taken from PATH, else from `.venv/tools/docker/bin` (`make venv` fetches Debian's docker.io there with
apt-get download, no root needed to unpack). Starting it needs root (namespaces, cgroups): where it cannot start,
the test skips with the daemon's own error.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.devcloud.test_coe_endpoints import TlsFiles, new_ca

REPO = Path(__file__).resolve().parents[2]
TOOLS_BIN = REPO / ".venv" / "tools" / "docker" / "bin"
DOCKER = shutil.which("docker")
DOCKERD = shutil.which("dockerd") or (str(TOOLS_BIN / "dockerd") if (TOOLS_BIN / "dockerd").exists() else None)
START_TIMEOUT = 60.0

pytestmark = [
    pytest.mark.skipif(DOCKER is None, reason="the docker CLI is not installed (shutil.which('docker'))"),
    pytest.mark.skipif(DOCKERD is None, reason=f"dockerd is neither on PATH nor in {TOOLS_BIN}: `make venv` fetches "
                       "Debian's docker.io there"),
]


@dataclass
class Engine:
    host: str
    port: int
    tls: TlsFiles
    log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_engine(root: Path, ca_pem: str, cert_pem: str, key_pem: str) -> Iterator[tuple[int, Path]]:
    """``dockerd --tlsverify`` on 127.0.0.1 with this CA, server certificate and key, its state under ``root``:
    yields (port, log) once it answers ``/_ping`` to a client of the CA; skips the test with the daemon's own error
    where it cannot start."""
    assert DOCKERD is not None
    root.mkdir(parents=True, exist_ok=True)
    (root / "ca.pem").write_text(ca_pem)
    (root / "server-cert.pem").write_text(cert_pem)
    (root / "server-key.pem").touch(mode=0o600)
    (root / "server-key.pem").write_text(key_pem)
    port = free_port()
    log = root / "dockerd.log"
    env = {**os.environ, "PATH": f"{Path(DOCKERD).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    args = [DOCKERD, "--host", f"tcp://127.0.0.1:{port}", "--tlsverify", "--tlscacert", str(root / "ca.pem"),
            "--tlscert", str(root / "server-cert.pem"), "--tlskey", str(root / "server-key.pem"),
            "--iptables=false", "--bridge=none", "--storage-driver=vfs", "--data-root", str(root / "data"),
            "--exec-root", str(root / "exec"), "--pidfile", str(root / "dockerd.pid")]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.skip(f"dockerd cannot start here (exit {proc.returncode}): {why(log)}")
            try:  # any answer, even the refusal of a client without a certificate, means it listens
                with socket.create_connection(("127.0.0.1", port), timeout=2):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.skip(f"dockerd did not answer within {START_TIMEOUT:.0f}s: {why(log)}")
            time.sleep(0.1)
        yield port, log
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    root = tmp_path_factory.mktemp("dockerd")
    tls = new_ca("swarm-cluster")
    cert, key = tls.server("swarm-master-0", ["127.0.0.1", "localhost"])
    with running_engine(root, tls.ca_pem, cert, key) as (port, log):
        client = tls.client_dir(root / "client")
        requests.get(f"https://127.0.0.1:{port}/_ping", timeout=10, verify=str(client / "ca.pem"),
                     cert=(str(client / "cert.pem"), str(client / "key.pem"))).raise_for_status()
        yield Engine("127.0.0.1", port, tls, log)


def why(log: Path) -> str:
    """The daemon's own last error lines."""
    lines = log.read_text(errors="replace").splitlines()
    errors = [line for line in lines if "level=fatal" in line or "level=error" in line or "failed" in line.lower()]
    return " | ".join((errors or lines)[-3:]) or "no output"


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: dockerd and the containerd it started
            proc.wait(timeout=10)


def docker(e: Engine, cert_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert DOCKER is not None
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(cert_path.parent),
           "DOCKER_CONFIG": str(cert_path.parent / "docker-config"), "DOCKER_HOST": f"tcp://{e.host}:{e.port}",
           "DOCKER_CERT_PATH": str(cert_path), "DOCKER_TLS_VERIFY": "1"}
    return subprocess.run([DOCKER, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


def test_docker_version_over_tls_with_the_cluster_ca(engine: Engine, tmp_path: Path) -> None:
    client = engine.tls.client_dir(tmp_path / "certs")
    out = docker(engine, client, "version", "--format", "{{.Server.Version}}|{{.Server.APIVersion}}")
    assert out.returncode == 0, out.stderr
    version, api = out.stdout.strip().split("|")
    assert version and api.startswith("1.")
    info = docker(engine, client, "info", "--format", "{{.Swarm.LocalNodeState}}")
    assert info.returncode == 0 and info.stdout.strip() == "inactive", info.stderr


def test_a_certificate_of_another_ca_is_refused(engine: Engine, tmp_path: Path) -> None:
    other = new_ca("another-cluster").client_dir(tmp_path / "other")
    (other / "ca.pem").write_text(engine.tls.ca_pem)  # the engine is trusted; the client's certificate is not
    out = docker(engine, other, "version")
    assert out.returncode != 0
    assert "Server:" not in out.stdout and "tls" in out.stderr.lower(), out.stderr
    none = tmp_path / "none"
    none.mkdir()
    (none / "ca.pem").write_text(engine.tls.ca_pem)
    with pytest.raises(requests.exceptions.ConnectionError):  # no client certificate at all
        requests.get(f"https://{engine.host}:{engine.port}/_ping", verify=str(none / "ca.pem"), timeout=10)
