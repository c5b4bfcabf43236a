"""The stand-in for a Mesos cluster's masters (issue 12): Marathon on ``API_PORT`` (8080 by default) and the Mesos
master on 5050 at every ACTIVE master's addresses (a load balancer's VIP serves whichever its listeners forward to),
plain HTTP as both serve by default. Marathon: ``/ping``, ``/v2/info`` (its ZooKeeper master URL built from the
masters' addresses), ``/v2/apps`` (empty until an app is posted; a posted app is kept and listed); the Mesos
master: ``/master/state`` (the agents are the cluster's ACTIVE workers) and ``/health``."""

from __future__ import annotations

import ssl
import time
import uuid
from typing import Any

from aiohttp import web

from deploy.devcloud.coe.base import Endpoint, StandIn, coe_fault, runner
from deploy.devcloud.coe.plan import Binding, Key, Node, Plan, Rules
from deploy.devcloud.coe.userdata import NodeFiles
from deploy.devcloud.state import Cloud

MESOS_PORT = 5050
AGENT_PORT = 5051
ZOOKEEPER_PORT = 2181
MESOS_VERSION = "1.11.0"
MARATHON_VERSION = "1.11.24"


class MesosEndpoint(Endpoint):
    """One Mesos cluster: a Marathon application and a Mesos master application, shared by every master's address."""

    def __init__(self, p: Plan, cloud: Cloud) -> None:
        super().__init__(p, cloud)
        self.apps: dict[str, dict[str, Any]] = {}
        self.started = time.time()
        self.framework_id = f"{uuid.uuid5(uuid.NAMESPACE_URL, 'mesos/' + p.cluster_id)}-0000"
        marathon = web.Application()
        marathon.router.add_get("/ping", self.ping)
        marathon.router.add_get("/v2/info", self.info)
        marathon.router.add_get("/v2/apps", self.list_apps)
        marathon.router.add_post("/v2/apps", self.create_app)
        marathon.router.add_get("/v2/apps/{id:.+}", self.show_app)
        mesos = web.Application()
        mesos.router.add_get("/master/state", self.state)
        mesos.router.add_get("/state", self.state)
        mesos.router.add_get("/health", self.health)
        mesos.router.add_get("/master/slaves", self.slaves)
        mesos.router.add_get("/slaves", self.slaves)
        mesos.router.add_get("/master/health", self.health)
        self.marathon = runner(marathon)
        self.mesos = runner(mesos)
        self.runners += [self.marathon, self.mesos]

    def serving(self, key: Key, binding: Binding) -> tuple[web.AppRunner, ssl.SSLContext | None]:
        return (self.mesos if binding.node_port == MESOS_PORT else self.marathon), None

    # ------------------------------------------------------------------------------------------ the cluster

    def masters(self) -> list[Node]:
        return [n for n in self.plan.nodes if n.role == "master" and n.addresses]

    def leader(self) -> Node | None:
        masters = self.masters()
        return next((n for n in masters if n.server_id == self.plan.first_server_id), masters[0] if masters else None)

    def zk(self, path: str) -> str:
        """The ZooKeeper ensemble on the masters, as Mesos and Marathon are told it: ``zk://a:2181,b:2181/path``."""
        return "zk://" + ",".join(f"{n.addresses[0]}:{ZOOKEEPER_PORT}" for n in self.masters()) + path

    # ------------------------------------------------------------------------------------------ Marathon

    async def ping(self, request: web.Request) -> web.Response:
        fault = coe_fault(self.cloud, self.plan.cluster_id)
        if fault is not None and fault.api_status:
            return web.Response(status=fault.api_status, text="devcloud injected COE fault")
        return web.Response(text="pong", headers={"Cache-Control": "must-revalidate,no-cache,no-store"})

    async def info(self, request: web.Request) -> web.Response:
        leader = self.leader()
        port = self.plan.first.api_port
        host = leader.addresses[0] if leader is not None else ""
        return web.json_response({
            "name": "marathon", "version": MARATHON_VERSION, "buildref": "devcloud", "elected": leader is not None,
            "leader": f"{host}:{port}" if leader is not None else None, "frameworkId": self.framework_id,
            "marathon_config": {"master": self.zk("/mesos"), "hostname": host, "http_port": port, "https_port": 8443,
                                "checkpoint": True, "executor": "//cmd", "failover_timeout": 604800,
                                "framework_name": "marathon", "ha": True, "leader_proxy_connection_timeout_ms": 5000,
                                "leader_proxy_read_timeout_ms": 10000, "local_port_min": 10000,
                                "local_port_max": 20000, "mesos_role": None, "mesos_user": "root",
                                "webui_url": None},
            "zookeeper_config": {"zk": self.zk("/marathon"), "zk_timeout": 10000, "zk_session_timeout": 10000,
                                 "zk_max_versions": 50},
            "http_config": {"http_port": port, "https_port": 8443},
        })

    async def list_apps(self, request: web.Request) -> web.Response:
        return web.json_response({"apps": list(self.apps.values())})

    async def show_app(self, request: web.Request) -> web.Response:
        app_id = "/" + request.match_info["id"].strip("/")
        app = self.apps.get(app_id)
        if app is None:
            return web.json_response({"message": f"App '{app_id}' does not exist"}, status=404)
        return web.json_response({"app": app})

    async def create_app(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"message": "Invalid JSON", "details": []}, status=400)
        app_id = body.get("id") if isinstance(body, dict) else None
        if not isinstance(app_id, str) or not app_id.strip("/"):
            return web.json_response({"message": "Object is not valid", "details": [
                {"path": "/id", "errors": ["error.path.missing"]}]}, status=422)
        app_id = "/" + app_id.strip("/")
        if app_id in self.apps:
            return web.json_response({"message": f"An app with id [{app_id}] already exists."}, status=409)
        app = {"cmd": None, "args": None, "instances": 1, "cpus": 1.0, "mem": 128.0, "disk": 0, "env": {},
               "labels": {}, **body, "id": app_id,
               "version": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
               "tasksStaged": 0, "tasksRunning": 0, "tasksHealthy": 0, "tasksUnhealthy": 0, "deployments": []}
        self.apps[app_id] = app
        return web.json_response(app, status=201, headers={"Location": f"/v2/apps{app_id}"})

    # ------------------------------------------------------------------------------------------ the Mesos master

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    def agents(self) -> list[dict[str, Any]]:
        """The agents: every worker the cluster built, by its host name; ``active`` while its server runs and no
        COE fault names it (the master deactivates an agent whose health checks fail)."""
        fault = coe_fault(self.cloud, self.plan.cluster_id)
        not_ready = set(fault.not_ready) if fault is not None else set()
        prefix = uuid.uuid5(uuid.NAMESPACE_URL, "mesos-master/" + self.plan.cluster_id)
        resources = {"disk": 10240.0, "mem": 3072.0, "gpus": 0.0, "cpus": 2.0, "ports": "[31000-32000]"}
        empty = {"disk": 0.0, "mem": 0.0, "gpus": 0.0, "cpus": 0.0}
        workers = [(n, True) for n in self.plan.nodes if n.role == "worker"] + [
            (n, False) for n in self.plan.down if n.role == "worker"]
        return [{"id": f"{prefix}-S{uuid.uuid5(uuid.NAMESPACE_URL, n.server_id)}",
                 "pid": f"slave(1)@{(n.addresses or ('',))[0]}:{AGENT_PORT}",
                 "hostname": (n.addresses or (n.name,))[0],  # MESOS_HOSTNAME is the node's IP (the driver's)
                 "registered_time": self.started, "resources": resources,
                 "used_resources": empty, "offered_resources": empty, "reserved_resources": {},
                 "unreserved_resources": resources, "attributes": {},
                 "active": running and n.name not in not_ready, "version": MESOS_VERSION,
                 "capabilities": ["MULTI_ROLE", "HIERARCHICAL_ROLE", "RESERVATION_REFINEMENT"]}
                for n, running in workers]

    async def slaves(self, request: web.Request) -> web.Response:
        return web.json_response({"slaves": self.agents(), "recovered_slaves": []})

    async def state(self, request: web.Request) -> web.Response:
        leader = self.leader()
        pid = f"master@{leader.addresses[0]}:{MESOS_PORT}" if leader is not None else ""
        prefix = uuid.uuid5(uuid.NAMESPACE_URL, "mesos-master/" + self.plan.cluster_id)
        slaves = [s for s in self.agents() if s["active"]]
        return web.json_response({
            "version": MESOS_VERSION, "git_sha": "devcloud", "build_date": "2024-01-01 00:00:00",
            "build_time": 1704067200.0, "build_user": "devcloud", "start_time": self.started,
            "elected_time": self.started, "id": str(prefix), "pid": pid,
            "hostname": leader.addresses[0] if leader is not None else "", "cluster": self.plan.first.cluster_name,
            "activated_slaves": len(slaves), "deactivated_slaves": 0, "unreachable_slaves": 0,
            "leader": pid, "leader_info": {"id": str(prefix), "pid": pid, "port": MESOS_PORT,
                                           "hostname": leader.addresses[0] if leader is not None else ""},
            "flags": {"zk": self.zk("/mesos"), "port": str(MESOS_PORT), "quorum": str(len(self.masters()) // 2 + 1)},
            "slaves": slaves,
            "frameworks": [{"id": self.framework_id, "name": "marathon", "pid": "", "hostname": pid.split("@")[-1],
                            "active": True, "connected": True, "recovered": False, "role": "*", "user": "root",
                            "registered_time": self.started, "tasks": [], "executors": [],
                            "webui_url": f"http://{pid.split('@')[-1].split(':')[0]}:{self.plan.first.api_port}"}],
            "completed_frameworks": [], "orphan_tasks": [], "unregistered_frameworks": [],
        })


def _ready(first: NodeFiles) -> bool:
    return True


def _ports(files: NodeFiles) -> tuple[int, ...]:
    return tuple(dict.fromkeys((files.api_port, MESOS_PORT))) if files.role == "master" else ()


STAND_IN = StandIn("mesos", Rules(_ready, _ports), MesosEndpoint)
