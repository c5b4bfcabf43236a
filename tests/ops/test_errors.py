"""Every `cove` command, run as operators run it, says in one line which server it could not reach and which
setting names it, and exits 1; a usage error exits 2. Never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from deploy.local.ports import free_port
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration

COMMANDS = [
    ["events", "tail"],
    ["events", "show", "6a0f8e4e-8a8e-4d3a-9d0e-4b1a2f0c9e11"],
    ["replay", "api"],
    ["verify", "scheduler"],
    ["dlq", "list"],
    ["dlq", "show", "1"],
    ["dlq", "retry", "1"],
    ["dlq", "drop", "1"],
    ["consumers", "prune"],
    ["services"],
]


def cove(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "deploy.local", *argv], check=False, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60, env={**os.environ, **env})


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_each_command_names_nats_and_its_setting_when_nats_is_down(argv: list[str], pg_admin_url: str) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    done = cove(argv, COVE_NATS_URL=url, COVE_DATABASE_URL=pg_admin_url)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [lines[0]] and "Traceback" not in done.stderr
    assert f"cannot reach NATS at {url} (COVE_NATS_URL)" in lines[0]


@pytest.mark.parametrize("argv", [["replay", "api"], ["verify", "certs"]], ids=lambda a: a[0])
def test_replay_and_verify_name_postgresql_and_its_setting_when_it_is_down(argv: list[str]) -> None:
    url = f"postgresql://cove:secret@127.0.0.1:{free_port()}/cove"
    done = cove(argv, COVE_NATS_URL=f"nats://127.0.0.1:{free_port()}", COVE_DATABASE_URL=url)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "secret" not in done.stderr
    assert f"cannot reach PostgreSQL at postgresql://cove:***@127.0.0.1:{url.rsplit(':', 1)[1].split('/')[0]}/cove" \
        " (COVE_DATABASE_URL)" in done.stderr.strip().splitlines()[0]


def test_usage_errors_exit_2_and_help_exits_0() -> None:
    assert cove(["replay", "nosuchservice"]).returncode == 2
    assert cove(["dlq", "show"]).returncode == 2
    assert cove([]).returncode == 2
    done = cove(["--help"])
    assert done.returncode == 0
    for name in ("events tail", "events show", "replay", "verify", "dlq retry", "consumers prune", "services", "run"):
        assert name in done.stdout


def test_a_cluster_s_comma_separated_urls_reach_the_node_that_answers(nats_url: str, pg_admin_url: str) -> None:
    """COVE_NATS_URL names a cluster's nodes as the services take it; one node down does not stop the command."""
    down = f"nats://127.0.0.1:{free_port()}"
    done = cove(["services", "-f", "json"], COVE_NATS_URL=f"{down},{nats_url}", COVE_DATABASE_URL=pg_admin_url)
    assert done.returncode == 0, done.stderr
