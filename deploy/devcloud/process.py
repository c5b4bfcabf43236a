"""Start and stop the devcloud as a child process: for tests, benchmarks and the local stack alike."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from deploy.devcloud.config import DEFAULT_CONFIG
from deploy.local.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Devcloud:
    url: str  # e.g. http://127.0.0.1:40123 ; admin endpoints (ledger, faults) under {url}/admin
    clouds_yaml: Path  # entries cove-demo, cove-demo2, cove-viewer, cove-alt, cove-admin
    log_file: Path
    process: subprocess.Popen[bytes]


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_devcloud(
    workdir: Path,
    *,
    time_factor: float = 0.01,
    config: Path = DEFAULT_CONFIG,
    port: int | None = None,
    extra_args: tuple[str, ...] = (),
    timeout: float = 30.0,
) -> Devcloud:
    """Start `python -m deploy.devcloud` on a free port (or `port`) and wait for /healthz."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    clouds_yaml = workdir / "clouds.yaml"
    log_file = workdir / "devcloud.log"
    args = [sys.executable, "-m", "deploy.devcloud", "--host", "127.0.0.1", "--port", str(port),
            "--public-url", url, "--clouds-yaml", str(clouds_yaml), "--time-factor", str(time_factor),
            "--config", str(config), *extra_args]
    with open(log_file, "ab") as log_handle:
        proc = subprocess.Popen(args, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log_handle,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"devcloud exited with {proc.returncode}; log {log_file}:\n{log_file.read_text()[-3000:]}")
        if clouds_yaml.exists() and http_ok(f"{url}/healthz"):
            return Devcloud(url=url, clouds_yaml=clouds_yaml, log_file=log_file, process=proc)
        time.sleep(0.05)
    stop_process(proc)
    raise RuntimeError(f"devcloud not healthy within {timeout}s at {url}; log {log_file}:\n{log_file.read_text()[-3000:]}")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def stop_devcloud(cloud: Devcloud) -> None:
    stop_process(cloud.process)
