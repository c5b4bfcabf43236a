"""`make run` keeps its usual ports after a busy run: a port is tested the way the servers bind it (SO_REUSEADDR, so
connections in TIME_WAIT do not count), and a port really held is reported with the process that holds it."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.local.ports import LOCALHOST, port_holder, port_is_free, preferred_port
from deploy.local.stack import LocalStack


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOCALHOST, 0))
    sock.listen()
    yield sock
    sock.close()


def _plain_bind_fails(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOCALHOST, port))
        except OSError:
            return True
        return False


def test_a_port_with_connections_in_time_wait_is_free(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    client = socket.create_connection((LOCALHOST, port))
    accepted, _ = listener.accept()
    accepted.close()  # the server side closes first: its end of the connection stays in TIME_WAIT on `port`
    client.close()
    listener.close()
    assert _plain_bind_fails(port), "precondition: a bind without SO_REUSEADDR is refused while TIME_WAIT lasts"
    assert port_is_free(port)
    assert preferred_port(port) == (port, None)


def test_a_port_someone_listens_on_is_taken_and_its_holder_named(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    assert not port_is_free(port)
    holder = port_holder(port)
    assert holder is not None and f"pid {os.getpid()} (" in holder, holder
    chosen, why = preferred_port(port)
    assert chosen != port and port_is_free(chosen)
    assert why == f"{port} is in use by {holder}"


def test_the_stack_table_says_why_a_process_is_not_on_its_usual_port(listener: socket.socket, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COVE_LOCAL_ANY_PORT", raising=False)  # make run's behaviour: the usual port first
    port = listener.getsockname()[1]
    stack = LocalStack(tmp_path)
    chosen = stack._port("nats", port)
    assert chosen != port and port_holder(chosen) is None
    rows = {name: where for name, where, _ in stack.endpoints()}
    assert f"(not the usual port: {port} is in use by pid {os.getpid()} (" in rows["nats"], rows
    assert "not the usual port" not in rows["postgres"], rows


def test_free_port_keeps_to_this_workers_share_and_never_repeats_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two pytest-xdist workers pick from disjoint ports (their index modulo their count), and one process does not
    hand out a port twice while its servers have not bound it yet."""
    from deploy.local import ports

    monkeypatch.setattr(ports, "_handed_out", ports.collections.deque(maxlen=1024))
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    for index in range(3):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{index}")
        picked = [ports.free_port() for _ in range(200)]
        assert {p % 3 for p in picked} == {index}
        assert len(set(picked)) == len(picked)
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    assert ports._share() == (0, 1)
