"""The all-in-one local stack behind `cove run`: NATS, PostgreSQL, the devcloud and the five services.

Each process gets its log in <state>/logs/<name>.log. start() returns once every /healthz (devcloud) and /readyz
(services) answers 200, or raises StackError naming the process that did not come up and its log file.
stop() stops services first (reverse order), then the devcloud, NATS and PostgreSQL: SIGTERM, SIGKILL after a
deadline.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import structlog
import yaml

from deploy.local import natsauth
from deploy.local.nats import NatsCluster, NatsServer
from deploy.local.ports import LOCALHOST, free_port, preferred_port
from deploy.local.postgres import EmbeddedPostgres, database_url

log = structlog.get_logger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ServiceSpec:
    """One Cove service: its name, console script and the module `python -m` runs when the script is missing."""

    name: str
    script: str
    module: str
    extra_env: dict[str, str] = field(default_factory=dict)


# The one list of Cove services `cove run` starts, in start order (stopped in reverse).
SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("certs", "cove-certs", "services.certs"),
    ServiceSpec("scheduler", "cove-scheduler", "services.scheduler"),
    ServiceSpec("provisioner", "cove-provisioner", "services.provisioner"),
    ServiceSpec("accounting", "cove-accounting", "services.accounting"),
    ServiceSpec("api", "cove-api", "services.api"),
)

DEFAULT_NATS_PORT = 4222
DEFAULT_NATS_MONITOR_PORT = 8222
CLUSTER_NATS_PORTS = (4231, 4232, 4233)
CLUSTER_NATS_MONITOR_PORTS = (8231, 8232, 8233)
"""A NATS cluster's usual ports, as in deploy/nats/cluster/n1..n3.conf."""
DEFAULT_DEVCLOUD_PORT = 8775
DEFAULT_API_PORT = 9511
LOCAL_SUBNET_CIDR = "127.100.0.0/20"
"""The clusters' private subnet under make run. A /20 (4,094 addresses), because the devcloud hands out an address
of a loopback subnet once across every network of that CIDR (its COE stand-ins listen there on one loopback): a /24
ran out at about 120 clusters of two nodes (make chaos's 200: servers failed with "No more IP addresses")."""
DEFAULT_PUBLIC_CIDR = "127.24.4.0/24"
"""The devcloud's external network in deploy/devcloud/cloud.yaml."""


def loopback_ranges() -> tuple[str, str]:
    """(external network, clusters' subnet) of a stack: make run's, or under the tests (``COVE_LOCAL_ANY_PORT``)
    loopback ranges of this stack's own (a /24 and a /20), because the devcloud's stand-in endpoints bind the
    addresses it hands out and stacks of parallel test workers would otherwise bind the same ones."""
    if not os.environ.get("COVE_LOCAL_ANY_PORT"):
        return DEFAULT_PUBLIC_CIDR, LOCAL_SUBNET_CIDR
    pick = random.SystemRandom()
    return (f"127.{pick.randint(25, 95)}.{pick.randint(0, 255)}.0/24",
            f"127.{pick.randint(101, 199)}.{16 * pick.randint(0, 15)}.0/20")
"""A cluster's private subnet under the local stack (and the tests): loopback, so that nothing a user or a test is
handed (a node's address, a load balancer's VIP) leads off the machine."""


class StackError(RuntimeError):
    """A part of the stack did not start; the message names it and its log file."""


@dataclass
class Child:
    """A subprocess we started, with what we need to check, report and stop it."""

    name: str
    proc: subprocess.Popen[bytes]
    log_file: Path
    ready_url: str
    listen: str
    log_handle: IO[bytes]
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    """The command line and environment it was started with: ``LocalStack.restart`` starts it again with both."""

    def alive(self) -> bool:
        return self.proc.poll() is None


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, wait up to `timeout`, then SIGKILL."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log.warning("stop_timeout_killing", pid=proc.pid, timeout=timeout)
        proc.kill()
        proc.wait(10)


def service_command(spec: ServiceSpec) -> list[str]:
    """The console script next to this interpreter, else `python -m <module>`."""
    script = Path(sys.executable).parent / spec.script
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", spec.module]


class LocalStack:
    """Starts and stops the whole local stack. All state under `state_dir` (default .cove)."""

    def __init__(
        self,
        state_dir: Path | str = ".cove",
        *,
        services: tuple[ServiceSpec, ...] = SERVICES,
        timeout: float = 90.0,
        stop_timeout: float = 10.0,
        time_factor: float | None = None,
        stop_event: threading.Event | None = None,
        devcloud_config: Path | None = None,
        copies: int = 1,
        nats_nodes: int = 1,
        nats_auth: bool = True,
    ) -> None:
        """``copies`` of every service (named ``<service>-1``, ``-2``, ... when more than one; the API's share
        its port through SO_REUSEPORT) and ``nats_nodes`` nats-servers forming one JetStream cluster, its streams
        replicated on every node up to 3 (``make run-cluster``: 2 and 3). With ``nats_auth`` (the default) the
        NATS it starts has a user per service with its subject permissions (deploy/local/natsauth.py), and
        ``nats_url`` carries the unrestricted ops user's credentials, for tests and the operators' commands."""
        if copies < 1 or nats_nodes < 1:
            raise ValueError("copies and nats_nodes must be at least 1")
        self.copies = copies
        self.nats_node_count = nats_nodes
        self.nats_auth = nats_auth
        self.nats_cluster: NatsCluster | None = None
        self.nats_users: dict[str, natsauth.Credentials] = {}
        self.nats_service_url = ""
        """Where the services connect (no credentials in it: each gets its own user)."""
        self.state_dir = Path(state_dir).resolve()
        self.logs = self.state_dir / "logs"
        self.services = services
        self.timeout = timeout
        self.stop_timeout = stop_timeout
        self.time_factor = time_factor
        self.stop_event = stop_event or threading.Event()
        self.devcloud_config = devcloud_config
        self.public_cidr, self.subnet_cidr = loopback_ranges()
        """The devcloud's YAML configuration (default deploy/devcloud/cloud.yaml), e.g. a benchmark's timing model."""
        self.nats: NatsServer | None = None
        self.postgres: EmbeddedPostgres | None = None
        self.nats_url = ""
        self.database_url = ""
        self.devcloud_url = ""
        self.api_url = ""
        self.children: list[Child] = []
        self.reported_dead: set[str] = set()
        self.moved: dict[str, str] = {}
        """Process name -> why it does not listen on its usual port, shown in the summary table."""

    # -- start ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self._reap_orphans()
        self._start_nats()
        self._start_postgres()
        self._start_devcloud()
        # The first copy of every service makes its schema, tables and consumers; the other copies start once it is
        # ready (copies racing each other through CREATE TABLE IF NOT EXISTS collide in PostgreSQL's catalog).
        for spec in self.services:
            self._start_service(spec, 1)
        self._wait_ready()
        for copy in range(2, self.copies + 1):
            started = len(self.children)
            for spec in self.services:
                self._start_service(spec, copy)
            self._wait_ready(self.children[started:])
        shutil.copyfile(self.state_dir / "devcloud-clouds.yaml", self.state_dir / "clouds.yaml")

    @property
    def nats_nodes(self) -> list[NatsServer]:
        """The nats-servers this stack started (one, or every node of its cluster)."""
        if self.nats_cluster is not None:
            return list(self.nats_cluster.nodes)
        return [self.nats] if self.nats is not None else []

    def _authorization(self) -> str | None:
        if not self.nats_auth:
            return None
        self.nats_users = natsauth.load_or_create(self.state_dir / "nats-users.json")
        return natsauth.render_authorization(self.nats_users)

    def _start_nats(self) -> None:
        configured = os.environ.get("COVE_NATS_URL")
        if configured:
            self.nats_url = self.nats_service_url = configured
            return
        if self.nats_node_count > 1:
            self._start_nats_cluster()
            return
        self.nats = NatsServer(
            self.state_dir / "nats",
            port=self._port("nats", DEFAULT_NATS_PORT),
            http_port=self._port("nats", DEFAULT_NATS_MONITOR_PORT),
            log_file=self.logs / "nats.log",
            authorization=self._authorization(),
        )
        self.nats.start(timeout=self.timeout)
        self._record_pid("nats", self.nats.pid, [self.nats.binary, "-c", str(self.nats.config_path)])
        self._nats_started(self.nats.url)

    def _start_nats_cluster(self) -> None:
        count = self.nats_node_count
        usual = list(CLUSTER_NATS_PORTS) + [0] * max(0, count - len(CLUSTER_NATS_PORTS))
        usual_http = list(CLUSTER_NATS_MONITOR_PORTS) + [0] * max(0, count - len(CLUSTER_NATS_MONITOR_PORTS))
        self.nats_cluster = NatsCluster(
            self.state_dir / "nats-cluster",
            size=count,
            ports=[self._port(f"cove-n{i + 1}", usual[i]) if usual[i] else free_port() for i in range(count)],
            http_ports=[self._port(f"cove-n{i + 1}", usual_http[i]) if usual_http[i] else free_port()
                        for i in range(count)],
            log_dir=self.logs,
            authorization=self._authorization(),
        )
        self.nats_cluster.start(timeout=self.timeout)
        self.nats = self.nats_cluster.nodes[0]
        for node in self.nats_cluster.nodes:
            self._record_pid(node.server_name, node.pid, [node.binary, "-c", str(node.config_path)])
        self._nats_started(self.nats_cluster.url)

    def _nats_started(self, url: str) -> None:
        self.nats_service_url = url
        ops = self.nats_users.get(natsauth.OPS_USER)
        self.nats_url = ops.url(url) if ops is not None else url
        env_file = self.state_dir / "nats.env"
        env_file.touch(mode=0o600)
        # One node's address: the operators' commands take a single URL (the server tells the client of the others)
        first = self.nats_url.split(",")[0]
        env_file.write_text(f"# the operators' NATS user (cove events, cove dlq, ...): source this file\n"
                            f"export COVE_NATS_URL='{first}'\n")

    def _port(self, name: str, usual: int) -> int:
        """`usual` when a server can listen there, else a free port; the reason is logged and kept for the table.
        ``COVE_LOCAL_ANY_PORT`` (the tests set it) takes a free port straight away: stacks started side by side by
        parallel test workers would otherwise race for the same usual port between its check and its use."""
        if os.environ.get("COVE_LOCAL_ANY_PORT"):
            return free_port()
        port, why = preferred_port(usual)
        if why is not None:
            log.warning("usual_port_taken", process=name, usual_port=usual, port=port, reason=why)
            self.moved[name] = "; ".join(filter(None, (self.moved.get(name), why)))
        return port

    def _start_postgres(self) -> None:
        # A NATS cluster keeps its own streams (nats-cluster/), so its stores get their own database too: a projection's
        # checkpoint counts one stream's sequence. clouds.yaml and the addresses stay make run's.
        data = "pg" if self.nats_node_count == 1 else "pg-cluster"
        self.database_url, self.postgres = database_url(self.state_dir / data, log_file=self.logs / "postgres.log")

    def _spawn(self, name: str, args: list[str], env: dict[str, str], ready_url: str, listen: str) -> Child:
        log_file = self.logs / f"{name}.log"
        handle = open(log_file, "ab")  # noqa: SIM115 - closed in stop()
        handle.write(f"\n=== cove run: starting {name}: {' '.join(args)}\n".encode())
        handle.flush()
        proc = subprocess.Popen(
            args, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches only `cove run`, which stops everyone in order
        )
        child = Child(name=name, proc=proc, log_file=log_file, ready_url=ready_url, listen=listen, log_handle=handle,
                      args=list(args), env=dict(env))
        self.children.append(child)
        self._record_pid(name, proc.pid, args)
        log.info("process_started", name=name, pid=proc.pid, log=str(log_file))
        return child

    def _start_devcloud(self) -> None:
        port = self._port("devcloud", DEFAULT_DEVCLOUD_PORT)
        self.api_port = self._port("api", DEFAULT_API_PORT)
        self.api_url = f"http://{LOCALHOST}:{self.api_port}/v1"
        self.devcloud_url = f"http://{LOCALHOST}:{port}"
        clouds = self.state_dir / "devcloud-clouds.yaml"
        clouds.unlink(missing_ok=True)
        args = [sys.executable, "-m", "deploy.devcloud", "--host", LOCALHOST, "--port", str(port),
                "--public-url", self.devcloud_url, "--clouds-yaml", str(clouds), "--magnum-url", self.api_url]
        config = self.devcloud_config or REPO_ROOT / "deploy" / "devcloud" / "cloud.yaml"
        if self.public_cidr != DEFAULT_PUBLIC_CIDR and config.exists():
            config = self._with_public_cidr(config)
        if self.devcloud_config is not None or config.exists():  # a missing named config fails the devcloud, loudly
            args += ["--config", str(config)]
        if self.time_factor is not None:
            args += ["--time-factor", str(self.time_factor)]
        self._spawn("devcloud", args, self._base_env(), f"{self.devcloud_url}/healthz", self.devcloud_url)

    def _with_public_cidr(self, config: Path) -> Path:
        """A copy of the devcloud's configuration whose loopback external network is ``public_cidr``."""
        doc = yaml.safe_load(config.read_text())
        for net in doc.get("external_networks") or []:
            if net.get("cidr") == DEFAULT_PUBLIC_CIDR:
                net["cidr"] = self.public_cidr
        copy = self.state_dir / "devcloud.yaml"
        copy.write_text(yaml.safe_dump(doc, sort_keys=False))
        return copy

    def _base_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "PYTHONUNBUFFERED": "1",
            "COVE_NATS_URL": self.nats_service_url,
            "COVE_DATABASE_URL": self.database_url,
            "OS_CLIENT_CONFIG_FILE": str(self.state_dir / "devcloud-clouds.yaml"),
            "COVE_CLOUD_AUTH_URL": f"{self.devcloud_url}/identity",
            "COVE_STATE_DIR": str(self.state_dir),
            "COVE_ENV": "development",  # the development defaults (services/runtime/production.py)
            "COVE_STREAM_REPLICAS": str(min(3, self.nats_node_count)),
        })
        # Every address the local stack hands out lies on this machine: the clusters' private subnets too (the
        # devcloud's external network is loopback already). Cove's production default stays 10.0.0.0/24.
        env.setdefault("COVE_PROVISIONER_SUBNET_CIDR", self.subnet_cidr)
        return env

    def _start_service(self, spec: ServiceSpec, copy: int = 1) -> None:
        """Copy number ``copy`` of ``spec``: named ``<service>-<copy>`` when the stack runs several."""
        name = spec.name if self.copies == 1 else f"{spec.name}-{copy}"
        http_port = free_port()
        env = self._base_env() | {"COVE_HTTP_PORT": str(http_port)} | spec.extra_env
        credentials = self.nats_users.get(spec.name)
        if credentials is not None:
            env |= credentials.env()
        listen = f"http://{LOCALHOST}:{http_port} (health/metrics)"
        if spec.name == "api":
            env["COVE_API_PORT"] = str(self.api_port)
            if self.copies > 1:
                env["COVE_API_REUSE_PORT"] = "1"  # the copies share the port; the kernel spreads connections
            listen = f"{self.api_url} (Magnum v1); health/metrics on :{http_port}"
        self._spawn(name, service_command(spec), env, f"http://{LOCALHOST}:{http_port}/readyz", listen)

    def _wait_ready(self, children: list[Child] | None = None) -> None:
        deadline = time.monotonic() + self.timeout
        pending = list(self.children if children is None else children)
        while pending:
            dead = [child for child in pending if not child.alive()]
            if dead:
                raise StackError("\n\n".join(
                    f"{child.name} exited with code {child.proc.returncode} while starting "
                    f"(log: {child.log_file}); last lines:\n{log_tail(child.log_file, 8)}"
                    for child in dead
                ))
            for child in list(pending):
                if http_ok(child.ready_url):
                    log.info("process_ready", name=child.name, url=child.ready_url)
                    pending.remove(child)
            if not pending:
                return
            if time.monotonic() >= deadline:
                child = pending[0]
                raise StackError(
                    f"{child.name} did not answer 200 on {child.ready_url} within {self.timeout:.0f}s "
                    f"(log: {child.log_file}); last lines:\n{log_tail(child.log_file)}"
                )
            if self.stop_event.wait(0.1):
                raise StackError("interrupted while starting")

    # -- bookkeeping of pids, so a SIGKILLed `cove run` leaves nothing behind at the next start --------------
    @property
    def _pid_file(self) -> Path:
        return self.state_dir / "pids.json"

    def _record_pid(self, name: str, pid: int | None, cmdline: list[str]) -> None:
        if pid is None:
            return
        pids = self._read_pids()
        pids[name] = {"pid": pid, "cmdline": cmdline}
        self._pid_file.write_text(json.dumps(pids))

    def _read_pids(self) -> dict[str, dict[str, object]]:
        try:
            data: dict[str, dict[str, object]] = json.loads(self._pid_file.read_text())
            return data
        except (OSError, ValueError):
            return {}

    def _reap_orphans(self) -> None:
        """Stop what a previous, killed `cove run` in this state dir left running.

        Only a process whose /proc/<pid>/cmdline ends with the command line we recorded for it is stopped.
        """
        for name, entry in self._read_pids().items():
            pid, recorded = int(str(entry["pid"])), [str(a) for a in entry.get("cmdline", [])]  # type: ignore[attr-defined]
            try:
                cmdline = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
            except OSError:
                continue
            # a console script shows up as "<python> <script> ...": compare the tail
            if not recorded or cmdline[-len(recorded):] != recorded:
                continue
            log.warning("orphan_stopped", name=name, pid=pid)
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + self.stop_timeout
            while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                time.sleep(0.05)
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)
        self._pid_file.unlink(missing_ok=True)

    # -- running --------------------------------------------------------------------------------------------
    def check_children(self) -> list[Child]:
        """Children that died since the last check (each reported once)."""
        died = [c for c in self.children if not c.alive() and c.name not in self.reported_dead]
        for child in died:
            self.reported_dead.add(child.name)
            log.error("process_died", name=child.name, returncode=child.proc.returncode, log=str(child.log_file))
        return died

    def restart(self, name: str, *, wait: bool = True) -> Child:
        """SIGKILL the child ``name`` (no graceful shutdown: a crash) and start it again with the same command
        line, environment, ports and log file; with ``wait``, return once it answers its readiness URL (else
        StackError, as at start). For chaos tests: what a crashed process leaves behind, its successor must cope
        with. Returns the new child; the old one is reaped."""
        index, old = next((i, c) for i, c in enumerate(self.children) if c.name == name)
        if old.alive():
            old.proc.kill()
        old.proc.wait(10)
        old.log_handle.write(f"\n=== cove run: killed {name} (pid {old.proc.pid}) with SIGKILL\n".encode())
        old.log_handle.close()
        log.warning("process_killed", name=name, pid=old.proc.pid, returncode=old.proc.returncode)
        new = self._spawn(name, old.args, old.env, old.ready_url, old.listen)
        self.children.remove(new)
        self.children[index] = new  # keep the start order, which stop() reverses
        self.reported_dead.discard(name)
        if wait:
            self._wait_ready([new])
        return new

    def endpoints(self) -> list[tuple[str, str, str]]:
        """(name, where it listens, log file) for the summary table."""
        rows: list[tuple[str, str, str]] = []
        if self.nats_cluster is not None:
            rows += [(node.server_name, f"{node.url} (monitor {node.monitor_url})", str(node.log_file))
                     for node in self.nats_cluster.nodes]
        elif self.nats is not None:
            rows.append(("nats", f"{self.nats.url} (monitor {self.nats.monitor_url})", str(self.nats.log_file)))
        else:
            rows.append(("nats", f"{self.nats_url} (COVE_NATS_URL)", "-"))
        if self.postgres is not None:
            rows.append(("postgres", self.database_url, str(self.postgres.log_file)))
        else:
            rows.append(("postgres", "COVE_DATABASE_URL", "-"))
        rows += [(c.name, c.listen, str(c.log_file)) for c in self.children]
        return [(name, f"{listen} (not the usual port: {self.moved[name]})" if name in self.moved else listen, logs)
                for name, listen, logs in rows]

    # -- stop -----------------------------------------------------------------------------------------------
    def stop(self) -> None:
        for child in reversed(self.children):
            terminate(child.proc, self.stop_timeout)
            child.log_handle.close()
            log.info("process_stopped", name=child.name, returncode=child.proc.returncode)
        self.children.clear()
        if self.nats_cluster is not None:
            self.nats_cluster.stop(timeout=self.stop_timeout)
        if self.nats is not None:
            self.nats.stop(timeout=self.stop_timeout)
        if self.postgres is not None:
            self.postgres.stop(timeout=self.stop_timeout * 3)
        self._pid_file.unlink(missing_ok=True)
