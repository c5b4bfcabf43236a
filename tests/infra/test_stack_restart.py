"""LocalStack.restart: a child killed with SIGKILL (no graceful shutdown, as in a crash) comes back with the same
command line, environment, readiness URL and log file, in its place in the start order."""

from __future__ import annotations

import json
import os
import signal
import sys
import urllib.request
from pathlib import Path

from deploy.local.ports import free_port
from deploy.local.stack import LocalStack

# Answers GET with its pid and $CHAOS_MARK; ignores SIGTERM, so only a SIGKILL stops it at once.
SERVER = """
import http.server, os, signal
signal.signal(signal.SIGTERM, signal.SIG_IGN)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{os.getpid()} {os.environ.get('CHAOS_MARK', '')}".encode()
        self.send_response(200); self.end_headers(); self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""


def answer(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        pid, mark = resp.read().decode().split(" ", 1)
        return int(pid), mark


def test_restart_kills_with_sigkill_and_starts_the_same_command_again(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path / "state", timeout=30, stop_timeout=1)
    stack.logs.mkdir(parents=True)
    urls = {}
    try:
        for name in ("first", "second"):
            port = free_port()
            urls[name] = f"http://127.0.0.1:{port}/readyz"
            env = dict(os.environ, PORT=str(port), CHAOS_MARK=f"mark-{name}")
            stack._spawn(name, [sys.executable, "-c", SERVER], env, urls[name], f"port {port}")
        stack._wait_ready()
        old = stack.children[0]
        old_pid, mark = answer(urls["first"])
        assert (old_pid, mark) == (old.proc.pid, "mark-first")

        new = stack.restart("first")

        assert old.proc.returncode == -signal.SIGKILL  # it ignores SIGTERM: only a SIGKILL ended it
        assert new.proc.pid != old_pid and new.alive()
        assert answer(urls["first"]) == (new.proc.pid, "mark-first")  # ready, same port and environment
        assert (new.args, new.ready_url, new.log_file) == (old.args, old.ready_url, old.log_file)
        assert [c.name for c in stack.children] == ["first", "second"]
        assert stack.children[0] is new
        assert answer(urls["second"])[1] == "mark-second"  # the other child is untouched
        log = new.log_file.read_text()
        assert log.count("=== cove run: starting first") == 2
        assert f"=== cove run: killed first (pid {old_pid}) with SIGKILL" in log
        assert json.loads((stack.state_dir / "pids.json").read_text())["first"]["pid"] == new.proc.pid
        assert stack.check_children() == []
    finally:
        stack.stop()
    assert all(not c.alive() for c in (old, new))
