"""The stand-in for a Swarm-mode cluster's Docker engines (issue 12): every ACTIVE node's engine at its addresses,
and the first master's at a load balancer's VIP and floating IPs, as ``dockerd --tlsverify`` serves it: TLS with the
node's own server certificate and key from its user data (``/etc/docker/tls/``), a client certificate chained to the
cluster CA required at the handshake (one from another CA fails it, as with dockerd).

The subset of the Engine API that ``docker version``, ``info``, ``node ls``, ``node inspect``, ``node update
--availability`` and ``node rm`` use (``/_ping``, ``/version``, ``/info``, ``/swarm``, ``/nodes``, ``/tasks``), with and
without the ``/v1.NN`` prefix, answered as Debian 12's Docker 20.10 answers them (bodies, headers, errors). Nodes are the
cluster's ACTIVE servers (managers: ``COVE_ROLE=master``; the leader: the first master), a node whose server is gone
is ``down`` until ``node rm``; availability changes through the API are kept, with Swarm's version check. Every node
the stand-in sees, each availability change and each removal is in the devcloud's ledger (kind ``swarm_node``)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from deploy.devcloud.coe.base import Endpoint, StandIn, coe_fault, load_chain, local_key, runner
from deploy.devcloud.coe.plan import Binding, Key, Node, Plan, Rules
from deploy.devcloud.coe.userdata import NodeFiles
from deploy.devcloud.state import Cloud

LEDGER_KIND = "swarm_node"
API_VERSION = "1.41"
MIN_API_VERSION = "1.12"
ENGINE_VERSION = "20.10.24+dfsg1"  # Debian 12's docker.io
HEADERS = {"Api-Version": API_VERSION, "Docker-Experimental": "false", "Ostype": "linux",
           "Server": f"Docker/{ENGINE_VERSION} (linux)"}
NOT_MANAGER = ("This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. Please "
               "run this command on a manager node or promote the current node to a manager.")
NOT_IN_SWARM = ("This node is not a swarm manager. Use \"docker swarm init\" or \"docker swarm join\" to connect this "
                "node to swarm and try again.")
NODE_FILTERS = frozenset({"id", "label", "node.label", "membership", "name", "role"})
TASK_FILTERS = frozenset({"id", "label", "name", "node", "service", "desired-state", "up-to-date", "runtime"})
AVAILABILITIES = ("active", "pause", "drain")
ROLES = ("worker", "manager")
API_TUPLE = (1, 41)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


def swarm_id(seed: str) -> str:
    """A Swarm object id (25 characters of [0-9a-z]) derived from a stable seed."""
    n = int.from_bytes(hashlib.sha256(seed.encode()).digest(), "big")
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    for _ in range(25):
        n, r = divmod(n, 36)
        out += digits[r]
    return out


@dataclass
class SwarmNode:
    id: str
    server_id: str
    hostname: str
    addr: str
    created_at: str
    version: int
    spec: dict[str, Any]
    updated_at: str = ""
    up: bool = True
    first_master: bool = False
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def manager(self) -> bool:
        return self.spec.get("Role") == "manager"


def error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


def filters_of(request: web.Request, allowed: frozenset[str]) -> dict[str, set[str]] | web.Response:
    """Docker's ``filters`` query parameter: ``{"name": {"value": true}}`` or the older ``{"name": ["value"]}``."""
    raw = request.query.get("filters", "")
    if not raw:
        return {}
    try:
        doc = json.loads(raw)
    except ValueError as e:
        return error(400, f"invalid filter: {e}")
    if not isinstance(doc, dict):
        return error(400, "invalid filter")
    out: dict[str, set[str]] = {}
    for name, values in doc.items():
        if name not in allowed:
            return error(400, f"Invalid filter '{name}'")
        out[name] = {str(v) for v, on in values.items() if on} if isinstance(values, dict) else {
            str(v) for v in values or []}
    return out


class SwarmEndpoint(Endpoint):
    """One Swarm cluster's engines: one application, a TLS context per node."""

    def __init__(self, p: Plan, cloud: Cloud) -> None:
        super().__init__(p, cloud)
        self.nodes: dict[str, SwarmNode] = {}  # by server id
        self.removed: set[str] = set()  # server ids whose node was removed (never listed again)
        self.index = 10  # Swarm's store index: every change takes the next
        self.created_at = _now()
        self.contexts: dict[str, tuple[NodeFiles, ssl.SSLContext]] = {}
        app = web.Application(middlewares=[self.versioned])
        for method, path, handler in (
            ("GET", "/_ping", self.ping), ("HEAD", "/_ping", self.ping), ("GET", "/version", self.version),
            ("GET", "/info", self.info), ("GET", "/swarm", self.swarm), ("GET", "/nodes", self.list_nodes),
            ("GET", "/nodes/{id}", self.inspect_node), ("POST", "/nodes/{id}/update", self.update_node),
            ("DELETE", "/nodes/{id}", self.remove_node), ("GET", "/tasks", self.tasks),
        ):
            app.router.add_route(method, path, handler)
            app.router.add_route(method, "/v{version:[0-9]+\\.[0-9]+}" + path, handler)
        self.runner = runner(app)
        self.runners.append(self.runner)

    # ------------------------------------------------------------------------------------------ the cloud's state

    def update(self, p: Plan, cas: Iterable[str], wanted: dict[Key, Binding]) -> None:
        super().update(p, cas, wanted)
        active = {n.server_id: n for n in p.nodes if n.files is not None and n.files.server_cert_pem}
        for sid, n in active.items():
            if sid in self.removed:
                continue
            node = self.nodes.get(sid)
            if node is None:
                self._join(p, n)
            elif not node.up:
                node.up = True
                node.updated_at = _now()
        for sid, node in self.nodes.items():
            if sid not in active and node.up:
                node.up = False
                node.updated_at = _now()

    def _join(self, p: Plan, n: Node) -> None:
        assert n.files is not None
        self.index += 1
        role = "manager" if n.role == "master" else "worker"
        node = SwarmNode(swarm_id(f"{p.cluster_id}/{n.server_id}"), n.server_id, n.files.hostname or n.name,
                         n.addresses[0] if n.addresses else "", _now(), self.index,
                         {"Labels": {}, "Role": role, "Availability": "active"}, first_master=n.files.first_master)
        node.updated_at = node.created_at
        self.nodes[n.server_id] = node
        self.cloud.ledger.created(LEDGER_KIND, node.id, p.project_id, name=node.hostname, status="active",
                                  server_id=n.server_id, cluster_id=p.cluster_id, role=role)

    def serving(self, key: Key, binding: Binding) -> tuple[web.AppRunner, ssl.SSLContext | None]:
        if binding.server_id is None:
            return self.runner, self._context("", self.plan.first)
        node = next((n for n in self.plan.nodes if n.server_id == binding.server_id), None)
        files = node.files if node is not None and node.files is not None else self.plan.first
        return self.runner, self._context(binding.server_id, files)

    def _context(self, server_id: str, files: NodeFiles) -> ssl.SSLContext:
        """dockerd --tlsverify: its own certificate and key, and a client certificate signed by its CA required."""
        cached = self.contexts.get(server_id)
        if cached is not None and cached[0] == files:
            return cached[1]
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=files.tls_ca_pem or files.ca_cert_pem)
        assert files.server_cert_pem and files.server_key_pem  # rules: only nodes with them serve
        load_chain(context, files.server_cert_pem, files.server_key_pem)
        self.contexts[server_id] = (files, context)
        return context

    async def close(self) -> None:
        await super().close()
        for node in self.nodes.values():
            self.cloud.ledger.deleted(node.id)  # the cluster is gone, and its swarm with it
        self.nodes.clear()

    # ------------------------------------------------------------------------------------------ the API

    @web.middleware
    async def versioned(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """A ``/v1.NN`` prefix newer than the engine's is refused, as dockerd does; Docker's headers on every
        answer, and its error body for an unknown path."""
        version = request.match_info.get("version")
        if version is not None and tuple(int(x) for x in version.split(".")) > API_TUPLE:
            response: web.StreamResponse = error(
                400, f"client version {version} is too new. Maximum supported API version is {API_VERSION}")
        else:
            try:
                response = await handler(request)
            except web.HTTPNotFound:
                response = error(404, "page not found")
            except web.HTTPMethodNotAllowed:
                response = error(405, "method not allowed")
        response.headers.update(HEADERS)
        return response

    def served(self, request: web.Request) -> SwarmNode | None:
        """The node whose engine answers (a load balancer's address: the first master's)."""
        key = local_key(request)
        binding = self.at.get(key) if key is not None else None
        sid = binding.server_id if binding is not None and binding.server_id else self.plan.first_server_id
        return self.nodes.get(sid) if sid not in self.removed else None

    def manager_only(self, request: web.Request) -> web.Response | None:
        node = self.served(request)
        if node is None:
            return error(503, NOT_IN_SWARM)
        if not node.manager:
            return error(503, NOT_MANAGER)
        return None

    def leader(self) -> SwarmNode | None:
        managers = [n for n in self.nodes.values() if n.manager and n.up]
        return next((n for n in managers if n.first_master), managers[0] if managers else None)

    def find(self, ref: str) -> SwarmNode | web.Response:
        """By id, then hostname, then unique id prefix, as Swarm's API resolves a node reference."""
        nodes = list(self.nodes.values())
        for n in nodes:
            if n.id == ref:
                return n
        named = [n for n in nodes if n.hostname == ref]
        prefixed = [n for n in nodes if n.id.startswith(ref)] if ref else []
        found = named or prefixed
        if len(found) == 1:
            return found[0]
        if found:
            return error(404, f"node {ref} is ambiguous ({len(found)} matches found)")
        return error(404, f"node {ref} not found")

    def node_json(self, n: SwarmNode) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ID": n.id, "Version": {"Index": n.version}, "CreatedAt": n.created_at, "UpdatedAt": n.updated_at,
            "Spec": n.spec,
            "Description": {
                "Hostname": n.hostname, "Platform": {"Architecture": "x86_64", "OS": "linux"},
                "Resources": {"NanoCPUs": 2000000000, "MemoryBytes": 4 * 1024**3},
                "Engine": {"EngineVersion": ENGINE_VERSION, "Plugins": [
                    {"Type": "Log", "Name": "json-file"}, {"Type": "Network", "Name": "overlay"},
                    {"Type": "Volume", "Name": "local"}]},
                "TLSInfo": {"TrustRoot": self.plan.ca_cert_pem},
            },
            "Status": {"State": "ready", "Addr": n.addr} if self.up(n) else {
                "State": "down", "Message": "heartbeat failure", "Addr": n.addr},
        }
        if n.manager:
            leader = self.leader()
            out["ManagerStatus"] = {"Reachability": "reachable" if n.up else "unreachable",
                                    "Addr": f"{n.addr}:2377"}
            if leader is n:
                out["ManagerStatus"]["Leader"] = True
        return out

    def up(self, n: SwarmNode) -> bool:
        """The node's heartbeat reaches the managers: its server runs and no COE fault names it."""
        fault = coe_fault(self.cloud, self.plan.cluster_id)
        return n.up and (fault is None or n.hostname not in fault.not_ready)

    async def ping(self, request: web.Request) -> web.Response:
        headers = {"Cache-Control": "no-cache, no-store, must-revalidate", "Pragma": "no-cache"}
        fault = coe_fault(self.cloud, self.plan.cluster_id)
        if fault is not None and fault.api_status:
            return error(fault.api_status, "devcloud injected COE fault: the engine is not answering")
        if request.method == "HEAD":
            return web.Response(headers=headers, content_type="text/plain", charset="utf-8")
        return web.Response(text="OK", headers=headers, content_type="text/plain", charset="utf-8")

    async def version(self, request: web.Request) -> web.Response:
        details = {"ApiVersion": API_VERSION, "Arch": "amd64", "BuildTime": "2024-01-01T00:00:00.000000000+00:00",
                   "Experimental": "false", "GitCommit": "5d6db84", "GoVersion": "go1.19.8",
                   "KernelVersion": "6.1.0-devcloud", "MinAPIVersion": MIN_API_VERSION, "Os": "linux"}
        return web.json_response({
            "Platform": {"Name": ""},
            "Components": [{"Name": "Engine", "Version": ENGINE_VERSION, "Details": details}],
            "Version": ENGINE_VERSION, "ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION,
            "GitCommit": "5d6db84", "GoVersion": "go1.19.8", "Os": "linux", "Arch": "amd64",
            "KernelVersion": "6.1.0-devcloud", "BuildTime": "2024-01-01T00:00:00.000000000+00:00"})

    def cluster_json(self) -> dict[str, Any]:
        return {"ID": swarm_id(f"swarm/{self.plan.cluster_id}"), "Version": {"Index": 10},
                "CreatedAt": self.created_at, "UpdatedAt": self.created_at,
                "Spec": {"Name": "default", "Labels": {}, "Orchestration": {"TaskHistoryRetentionLimit": 5},
                         "Raft": {"SnapshotInterval": 10000, "KeepOldSnapshots": 0, "LogEntriesForSlowFollowers": 500,
                                  "ElectionTick": 10, "HeartbeatTick": 1},
                         "Dispatcher": {"HeartbeatPeriod": 5000000000},
                         "CAConfig": {"NodeCertExpiry": 7776000000000000}, "TaskDefaults": {},
                         "EncryptionConfig": {"AutoLockManagers": False}},
                "TLSInfo": {"TrustRoot": self.plan.ca_cert_pem}, "RootRotationInProgress": False,
                "DefaultAddrPool": ["10.0.0.0/8"], "SubnetSize": 24, "DataPathPort": 4789}

    async def info(self, request: web.Request) -> web.Response:
        node = self.served(request)
        swarm: dict[str, Any] = {"NodeID": "", "NodeAddr": "", "LocalNodeState": "inactive",
                                 "ControlAvailable": False, "Error": "", "RemoteManagers": None}
        if node is not None:
            managers = [n for n in self.nodes.values() if n.manager]
            swarm.update(NodeID=node.id, NodeAddr=node.addr, LocalNodeState="active", ControlAvailable=node.manager,
                         RemoteManagers=[{"NodeID": m.id, "Addr": f"{m.addr}:2377"} for m in managers])
            if node.manager:
                swarm.update(Nodes=len(self.nodes), Managers=len(managers), Cluster=self.cluster_json())
        hostname = node.hostname if node is not None else self.plan.first.hostname
        return web.json_response({
            "ID": swarm_id(f"engine/{node.server_id if node else self.plan.first_server_id}"),
            "Containers": 0, "ContainersRunning": 0, "ContainersPaused": 0, "ContainersStopped": 0, "Images": 0,
            "Driver": "overlay2", "DriverStatus": [["Backing Filesystem", "extfs"]],
            "Plugins": {"Volume": ["local"], "Network": ["bridge", "host", "null", "overlay"], "Authorization": None,
                        "Log": ["json-file", "local"]},
            "MemoryLimit": True, "SwapLimit": True, "CpuCfsPeriod": True, "CpuCfsQuota": True, "CPUShares": True,
            "CPUSet": True, "PidsLimit": True, "IPv4Forwarding": True, "BridgeNfIptables": True,
            "BridgeNfIp6tables": True, "Debug": False, "NFd": 30, "OomKillDisable": True, "NGoroutines": 50,
            "SystemTime": _now(), "LoggingDriver": "json-file", "CgroupDriver": "systemd", "CgroupVersion": "2",
            "NEventsListener": 0, "KernelVersion": "6.1.0-devcloud", "OperatingSystem": "Debian GNU/Linux 12 (bookworm)",
            "OSVersion": "12", "OSType": "linux", "Architecture": "x86_64",
            "IndexServerAddress": "https://index.docker.io/v1/",
            "RegistryConfig": {"AllowNondistributableArtifactsCIDRs": [], "AllowNondistributableArtifactsHostnames": [],
                               "InsecureRegistryCIDRs": ["127.0.0.0/8"], "IndexConfigs": {"docker.io": {
                                   "Name": "docker.io", "Mirrors": [], "Secure": True, "Official": True}},
                               "Mirrors": []},
            "NCPU": 2, "MemTotal": 4 * 1024**3, "GenericResources": None, "DockerRootDir": "/var/lib/docker",
            "HttpProxy": "", "HttpsProxy": "", "NoProxy": "", "Name": hostname, "Labels": [],
            "ExperimentalBuild": False, "ServerVersion": ENGINE_VERSION,
            "Runtimes": {"runc": {"path": "runc"}}, "DefaultRuntime": "runc", "Swarm": swarm,
            "LiveRestoreEnabled": False, "Isolation": "", "InitBinary": "docker-init",
            "ContainerdCommit": {"ID": "1.6.20~ds1", "Expected": "1.6.20~ds1"},
            "RuncCommit": {"ID": "1.1.5+ds1", "Expected": "1.1.5+ds1"},
            "InitCommit": {"ID": "", "Expected": ""}, "SecurityOptions": ["name=seccomp,profile=default"],
            "Warnings": None})

    async def swarm(self, request: web.Request) -> web.Response:
        refused = self.manager_only(request)
        if refused is not None:
            return refused
        body = self.cluster_json()
        body["JoinTokens"] = {role: f"SWMTKN-1-{swarm_id('token/' + self.plan.cluster_id)}-{swarm_id(role)}"
                              for role in ("Worker", "Manager")}
        return web.json_response(body)

    async def list_nodes(self, request: web.Request) -> web.Response:
        refused = self.manager_only(request)
        if refused is not None:
            return refused
        filters = filters_of(request, NODE_FILTERS)
        if isinstance(filters, web.Response):
            return filters
        out = []
        for n in self.nodes.values():
            if "id" in filters and not any(n.id.startswith(v) for v in filters["id"]):
                continue
            if "name" in filters and not any(v in n.hostname for v in filters["name"]):
                continue
            if "role" in filters and n.spec.get("Role") not in filters["role"]:
                continue
            if "membership" in filters and "accepted" not in filters["membership"]:
                continue
            out.append(self.node_json(n))
        return web.json_response(out)

    async def inspect_node(self, request: web.Request) -> web.Response:
        refused = self.manager_only(request)
        if refused is not None:
            return refused
        node = self.find(request.match_info["id"])
        return node if isinstance(node, web.Response) else web.json_response(self.node_json(node))

    async def update_node(self, request: web.Request) -> web.Response:
        refused = self.manager_only(request)
        if refused is not None:
            return refused
        raw = request.query.get("version", "")
        try:
            version = int(raw)
            if version < 0:
                raise ValueError(raw)
        except ValueError:
            return error(400, f"invalid node version '{raw}': strconv.ParseUint: parsing {json.dumps(raw)}: "
                              "invalid syntax")
        try:
            spec = await request.json()
        except ValueError as e:
            return error(400, f"invalid JSON: {e}")
        if not isinstance(spec, dict):
            return error(400, "invalid JSON: the node spec must be an object")
        node = self.find(request.match_info["id"])
        if isinstance(node, web.Response):
            return node
        availability = str(spec.get("Availability") or "active").lower()
        role = str(spec.get("Role") or "worker").lower()
        if availability not in AVAILABILITIES:
            return error(400, f"invalid Availability: {spec.get('Availability')!r}")
        if role not in ROLES:
            return error(400, f"invalid Role: {spec.get('Role')!r}")
        if version != node.version:  # Swarm's store: a stale version is refused (dockerd answers it as a 500)
            return error(500, "rpc error: code = Unknown desc = update out of sequence")
        before = node.spec.get("Availability")
        labels = spec.get("Labels") if isinstance(spec.get("Labels"), dict) else {}
        node.spec = {**({"Name": spec["Name"]} if spec.get("Name") else {}), "Labels": labels, "Role": role,
                     "Availability": availability}
        self.index += 1
        node.version = self.index
        node.updated_at = _now()
        if availability != before:
            self.cloud.ledger.changed(node.id, availability)
        return web.Response(status=200)

    async def remove_node(self, request: web.Request) -> web.Response:
        refused = self.manager_only(request)
        if refused is not None:
            return refused
        node = self.find(request.match_info["id"])
        if isinstance(node, web.Response):
            return node
        force = request.query.get("force", "").lower() in ("1", "true")
        if node.manager:
            return error(400, f"rpc error: code = FailedPrecondition desc = node {node.id} is a cluster manager and "
                              "is a member of the raft cluster. It must be demoted to worker before removal")
        if node.up and not force:
            return error(400, f"rpc error: code = FailedPrecondition desc = node {node.id} is not down and can't be "
                              "removed")
        del self.nodes[node.server_id]
        self.removed.add(node.server_id)
        self.index += 1
        self.cloud.ledger.changed(node.id, "removed")
        self.cloud.ledger.deleted(node.id)
        return web.Response(status=200)

    async def tasks(self, request: web.Request) -> web.Response:
        refused = self.manager_only(request)
        if refused is not None:
            return refused
        filters = filters_of(request, TASK_FILTERS)
        if isinstance(filters, web.Response):
            return filters
        return web.json_response([])  # the stand-in runs no services, so no tasks


def _ready(first: NodeFiles) -> bool:
    return bool(first.server_cert_pem and first.server_key_pem)


def _ports(files: NodeFiles) -> tuple[int, ...]:
    return (files.api_port,) if files.server_cert_pem and files.server_key_pem else ()


STAND_IN = StandIn("swarm-mode", Rules(_ready, _ports), SwarmEndpoint)
