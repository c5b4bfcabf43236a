"""`cove run`: brings up NATS + embedded PostgreSQL + devcloud, prints where, stops all on SIGINT; reports a
service that cannot start by name and log file instead of hanging."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from deploy.devcloud.process import http_ok
from deploy.local.ports import tcp_reachable
from deploy.local.stack import LocalStack, ServiceSpec, StackError
from tests.conftest import REPO_ROOT, stop_process, wait_for

pytestmark = pytest.mark.integration


def _env_without_cove() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("COVE_NATS_URL", "COVE_DATABASE_URL")}


async def test_cove_run_infra_only_then_sigint(tmp_path: Path, pg_scratch_dir: Path) -> None:
    if not (REPO_ROOT / "deploy" / "devcloud" / "__main__.py").exists():
        pytest.skip("devcloud not written yet: deploy/devcloud/__main__.py does not exist")
    state = pg_scratch_dir / "state"  # holds the embedded PostgreSQL: outside pytest's basetemp
    out = tmp_path / "out.txt"
    proc = _spawn([sys.executable, "-m", "deploy.local", "run", "--state-dir", str(state), "--only", "",
                   "--time-factor", "0.01", "--timeout", "60"], out)
    try:
        await wait_for(lambda: "Ctrl-C stops everything" in out.read_text() or proc.poll() is not None,
                       timeout=90, message="cove run prints its table")
        text = out.read_text()
        assert proc.poll() is None, text
        nats_port = int(re.search(r"nats\s+nats://127\.0\.0\.1:(\d+)", text).group(1))  # type: ignore[union-attr]
        pg_url = re.search(r"postgres\s+(postgresql://\S+)", text).group(1)  # type: ignore[union-attr]
        devcloud_url = re.search(r"devcloud\s+(http://127\.0\.0\.1:\d+)", text).group(1)  # type: ignore[union-attr]
        assert f"export OS_CLIENT_CONFIG_FILE={state / 'clouds.yaml'}" in text
        assert "cove-demo" in (state / "clouds.yaml").read_text()
        assert http_ok(f"{devcloud_url}/healthz")
        assert tcp_reachable("127.0.0.1", nats_port)
        conn = await asyncpg.connect(pg_url)
        try:
            assert await conn.fetchval("SELECT current_database()") == "cove"
        finally:
            await conn.close()
        pids = json.loads((state / "pids.json").read_text())
        assert {"nats", "devcloud"} <= set(pids)

        proc.send_signal(signal.SIGINT)
        await wait_for(lambda: proc.poll() is not None, timeout=60, message="cove run exits after SIGINT")
        assert proc.returncode == 0, out.read_text()
        assert "cove run: stopped" in out.read_text()
        assert not tcp_reachable("127.0.0.1", nats_port)
        assert not http_ok(f"{devcloud_url}/healthz")
        for entry in pids.values():
            assert not Path(f"/proc/{entry['pid']}").exists() or _is_zombie(entry["pid"])
    finally:
        stop_process(proc)  # type: ignore[arg-type]


def _spawn(args: list[str], out: Path) -> subprocess.Popen[bytes]:
    with open(out, "wb") as handle:
        return subprocess.Popen(args, cwd=REPO_ROOT, env=_env_without_cove(), stdout=handle, stderr=subprocess.STDOUT)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


async def test_a_service_that_cannot_start_is_named_with_its_log(
    tmp_path: Path, nats_url: str, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not (REPO_ROOT / "deploy" / "devcloud" / "__main__.py").exists():
        pytest.skip("devcloud not written yet: deploy/devcloud/__main__.py does not exist")
    monkeypatch.setenv("COVE_NATS_URL", nats_url)
    monkeypatch.setenv("COVE_DATABASE_URL", database_url)
    ghost = ServiceSpec("ghost", "cove-ghost-not-installed", "services.ghost_not_written")
    stack = LocalStack(tmp_path / "state", services=(ghost,), timeout=60, time_factor=0.01)
    try:
        with pytest.raises(StackError) as excinfo:
            await asyncio.to_thread(stack.start)
    finally:
        stack.stop()
    message = str(excinfo.value)
    assert "ghost exited with code" in message
    assert str(tmp_path / "state" / "logs" / "ghost.log") in message
    assert "No module named services.ghost_not_written" in message or "ghost_not_written" in message
    assert stack.nats is None and stack.postgres is None  # configured from the env: nothing started by us
