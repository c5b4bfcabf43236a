"""The COE health check's and the resource watch's pure rules (issue 13): each driver's reading of its probes'
answers (Kubernetes ``/healthz`` and the nodes' Ready condition, Swarm ``/_ping`` and node states, Marathon's
``/ping`` and the Mesos agents), how a verdict folds into a node's and the cluster's health, which load balancer and
volume states make a cluster UNHEALTHY, what the watcher records of listed load balancers and volumes, when it
kicks a cluster for its COE check, and that ``coeapi.check`` bounds a hanging API by its timeout."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from services.provisioner import coeapi, model
from services.provisioner.cloud import CloudSettings
from services.provisioner.drivers import driver_for
from services.provisioner.drivers.base import Answer, CoeHealth, Probe
from services.provisioner.drivers.kubernetes import HEALTH_ROLE, HEALTH_USER, rbac_manifest
from services.provisioner.health import (
    ApiState,
    Observed,
    ResourceSeen,
    cluster_health,
    coe_verdict,
    node_health,
    resource_problems,
)
from services.provisioner.watch import (
    Watched,
    Watcher,
    WatchSettings,
    load_balancer_seen,
    observed,
    volume_seen,
)

NODE = model.KnownNode("s1", "K8s-Abc-node-0", model.WORKER, model.NODE_ACTIVE)


def _k8s_node(name: str, status: str, reason: str = "", message: str = "") -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"conditions": [
        {"type": "MemoryPressure", "status": "False"},
        {"type": "Ready", "status": status, "reason": reason, "message": message}]}}


def test_kubernetes_reads_healthz_and_each_nodes_ready_condition() -> None:
    driver = driver_for("kubernetes")
    assert [p.path for p in driver.health_probes()] == ["/healthz", "/api/v1/nodes"]
    nodes = {"items": [_k8s_node("k8s-abc-node-0", "True"),
                       _k8s_node("k8s-abc-node-1", "False", "KubeletNotReady", "PLEG is not healthy"),
                       _k8s_node("k8s-abc-master-0", "Unknown", "NodeStatusUnknown")]}
    seen = driver.read_health({"api": Answer(200, "ok"), "nodes": Answer(200, json.dumps(nodes))})
    assert seen.api is None
    assert seen.nodes["k8s-abc-node-0"] == (True, "")
    assert seen.nodes["k8s-abc-node-1"] == (
        False, "Kubernetes reports the node Ready=False (KubeletNotReady: PLEG is not healthy)")
    assert seen.nodes["k8s-abc-master-0"][0] is False
    # an unhealthy API: its words; the node list is not read then
    failed = driver.read_health({"api": Answer(500, "[-]etcd failed: reason withheld\nhealthz check failed"),
                                 "nodes": Answer(200, json.dumps(nodes))})
    assert failed.api is not None and failed.api.startswith("HTTP 500: [-]etcd failed") and failed.nodes == {}
    assert driver.read_health({"api": Answer(error="/healthz on port 6443: no answer within 5 s")}).api == \
        "/healthz on port 6443: no answer within 5 s"
    # a node list the API refuses (a cluster made before the health binding) judges no node
    refused = driver.read_health({"api": Answer(200, "ok"), "nodes": Answer(403, "{}")})
    assert refused == CoeHealth(api=None, nodes={})


def test_the_kubernetes_rbac_lets_the_provisioner_read_nodes_and_only_as_a_reader() -> None:
    import yaml

    docs = list(yaml.safe_load_all(rbac_manifest()))
    mine = [d for d in docs if any(s.get("kind") == "User" and s.get("name") == HEALTH_USER
                                   for s in d["subjects"])]
    assert len(mine) == 1 and mine[0]["roleRef"]["name"] == HEALTH_ROLE == "system:heapster"
    assert HEALTH_USER == coeapi.CLIENT_NAME


def test_swarm_reads_ping_and_node_states() -> None:
    driver = driver_for("swarm-mode")
    nodes = [{"Description": {"Hostname": "sw-node-0"}, "Status": {"State": "ready"}},
             {"Description": {"Hostname": "sw-node-1"}, "Status": {"State": "down", "Message": "heartbeat failure"}}]
    seen = driver.read_health({"api": Answer(200, "OK"), "nodes": Answer(200, json.dumps(nodes))})
    assert seen == CoeHealth(None, {"sw-node-0": (True, ""),
                                   "sw-node-1": (False, "Swarm reports the node down (heartbeat failure)")})
    no_quorum = driver.read_health({"api": Answer(200, "OK"), "nodes": Answer(503, '{"message": "no leader"}')})
    assert no_quorum.api is not None and "503" in no_quorum.api


def test_mesos_reads_marathon_ping_and_the_agents() -> None:
    driver = driver_for("mesos")
    probes = driver.health_probes()
    assert probes == [Probe("api", "/ping", tls=False), Probe("nodes", "/master/slaves", 5050, tls=False)]
    slaves = {"slaves": [{"hostname": "127.100.0.7", "active": True}, {"hostname": "127.100.0.8", "active": False}]}
    seen = driver.read_health({"api": Answer(200, "pong"), "nodes": Answer(200, json.dumps(slaves))})
    assert seen.nodes == {"127.100.0.7": (True, ""), "127.100.0.8": (False, "Mesos reports the agent deactivated")}
    assert driver.read_health({"api": Answer(503, "")}).api == "HTTP 503"


def test_a_coe_verdict_folds_into_a_node_only_when_its_server_is_healthy() -> None:
    seen = Observed(server_id="s1", name=NODE.name, status="ACTIVE", cluster_id="c1", addresses=("127.100.0.8",))
    ok = node_health(NODE, seen)
    not_ready = CoeHealth(None, {"k8s-abc-node-0": (False, "Kubernetes reports the node Ready=False")})
    folded = coe_verdict(ok, seen, not_ready)
    assert not folded.healthy and folded.reason == "Kubernetes reports the node Ready=False"
    assert folded.status == "ACTIVE"  # the server runs: the COE says why the node is not ready
    # by address (Mesos agents are known by their IP)
    assert not coe_verdict(ok, seen, CoeHealth(None, {"127.100.0.8": (False, "deactivated")})).healthy
    # a node the COE does not list, or lists as ready, is judged by its server
    assert coe_verdict(ok, seen, CoeHealth(None, {"other": (False, "x")})).healthy
    assert coe_verdict(ok, seen, None).healthy
    # a server in ERROR keeps the cloud's words, whatever the COE says
    failed = node_health(NODE, Observed(server_id="s1", name=NODE.name, status="ERROR", cluster_id="c1",
                                        fault="Hardware failure"))
    assert coe_verdict(failed, seen, not_ready).reason == "Hardware failure"


def test_cluster_health_names_a_failing_api_and_broken_resources() -> None:
    ok = node_health(NODE, None)
    assert cluster_health([ok]) == ("HEALTHY", {"K8s-Abc-node-0.Ready": "True"})  # no check, no api key
    assert cluster_health([ok], api_checked=True) == ("HEALTHY", {"api": "ok", "K8s-Abc-node-0.Ready": "True"})
    status, reason = cluster_health([ok], api="HTTP 500: healthz check failed")
    assert status == "UNHEALTHY" and reason["api"] == "HTTP 500: healthz check failed"
    status, reason = cluster_health([ok], problems={"c-api-lb.status": "the load balancer is gone"})
    assert status == "UNHEALTHY" and reason["c-api-lb.status"] == "the load balancer is gone"


def test_resource_problems() -> None:
    def lb(status: str, operating: str, gone: bool = False) -> ResourceSeen:
        return ResourceSeen("load_balancer", "lb1", "c-api-lb", "c1", status, operating, gone=gone)

    def vol(status: str, server: str | None = "s1", gone: bool = False) -> ResourceSeen:
        return ResourceSeen("volume", "v1", "c-node-0-docker", "c1", status, server_id=server, gone=gone)

    assert resource_problems([lb("ACTIVE", "ONLINE"), lb("PENDING_UPDATE", "ONLINE"), lb("ACTIVE", "DEGRADED")],
                             ["s1"]) == {}
    assert resource_problems([lb("ERROR", "ONLINE")], []) == {
        "c-api-lb.status": "the load balancer is provisioning_status ERROR, operating_status ONLINE"}
    assert "OFFLINE" in resource_problems([lb("ACTIVE", "OFFLINE")], [])["c-api-lb.status"]
    assert resource_problems([lb("ACTIVE", "ONLINE", gone=True)], []) == {
        "c-api-lb.status": "the load balancer is gone from the cloud"}
    assert resource_problems([vol("in-use"), vol("available", None)], ["s1"]) == {}
    assert resource_problems([vol("error")], ["s1"]) == {"c-node-0-docker.status": "the volume of server s1 is in error"}
    assert "gone" in resource_problems([vol("in-use", gone=True)], ["s1"])["c-node-0-docker.status"]
    # the volume of a node that is no longer running (lost, removed, being replaced) is not the cluster's problem
    assert resource_problems([vol("error"), vol("in-use", gone=True)], []) == {}


def test_listed_resources_and_servers_as_the_watch_keeps_them() -> None:
    tag = model.cluster_tag("c1")
    assert load_balancer_seen({"id": "lb1", "name": "x-api-lb", "tags": ["other", tag],
                               "provisioning_status": "ERROR", "operating_status": "OFFLINE"}) == ResourceSeen(
        "load_balancer", "lb1", "x-api-lb", "c1", "ERROR", "OFFLINE")
    assert load_balancer_seen({"id": "lb2", "tags": []}) is None
    assert volume_seen({"id": "v1", "name": "x-node-0-docker", "status": "in-use", "metadata": {"cove_cluster_id": "c1"},
                        "attachments": [{"server_id": "s1"}]}) == ResourceSeen(
        "volume", "v1", "x-node-0-docker", "c1", "in-use", server_id="s1")
    assert volume_seen({"id": "v2", "metadata": {}}) is None
    server = {"id": "s1", "name": "n", "status": "ACTIVE", "metadata": {"cove_cluster_id": "c1"},
              "addresses": {"private": [{"addr": "127.100.0.5"}, {"addr": "127.24.4.9"}]}}
    seen = observed(server)
    assert seen is not None and seen.addresses == ("127.100.0.5", "127.24.4.9")


async def _load() -> dict[str, Watched]:
    return {}


def _watcher(**settings: Any) -> tuple[Watcher, list[str]]:
    kicked: list[str] = []
    watcher = Watcher(cloud_settings=CloudSettings(auth_url="http://127.0.0.1:1"), load_watched=_load,
                      kick=kicked.append, settings=WatchSettings(**settings))
    return watcher, kicked


def test_the_watcher_records_resource_changes_and_vanished_ones() -> None:
    watcher, kicked = _watcher()
    watcher.watched = {"c1": Watched("CREATE_COMPLETE"), "c2": Watched("CREATE_COMPLETE")}
    lb = ResourceSeen("load_balancer", "lb1", "c1-api-lb", "c1", "ACTIVE", "ONLINE")
    vol = ResourceSeen("volume", "v1", "c2-node-0-docker", "c2", "in-use", server_id="s9")
    stranger = ResourceSeen("volume", "v9", "x", "not-watched", "error")
    assert watcher.record_resources([lb], [vol, stranger], full_volumes=True) == 2
    assert sorted(kicked) == ["c1", "c2"] and "not-watched" not in watcher.resources
    kicked.clear()
    assert watcher.record_resources([lb], [], full_volumes=False) == 0  # a changes-only volume listing: no news
    assert kicked == []
    broken = ResourceSeen("load_balancer", "lb1", "c1-api-lb", "c1", "ERROR", "OFFLINE")
    assert watcher.record_resources([broken], [], full_volumes=False) == 1 and kicked == ["c1"]
    assert watcher.resources_of("c1")["lb1"] == broken
    kicked.clear()
    assert watcher.record_resources([broken], [], full_volumes=True) == 1 and kicked == ["c2"]  # the sweep
    assert watcher.resources_of("c2")["v1"].gone
    kicked.clear()
    assert watcher.record_resources([], [], full_volumes=True) == 1 and kicked == ["c1"]  # the LB went too
    assert watcher.resources_of("c1")["lb1"].gone
    assert watcher.record_resources([], [], full_volumes=True) == 0  # gone is recorded once


def test_the_watcher_kicks_each_cluster_once_per_api_interval_and_sooner_after_a_failure(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("services.provisioner.watch.time.monotonic", lambda: clock[0])
    watcher, kicked = _watcher(api_interval=10.0)
    watcher.watched = {f"c{i}": Watched("CREATE_COMPLETE") for i in range(20)}
    for _ in range(101):  # ten seconds of ticks every 0.1 s: each cluster once, spread over the interval
        watcher.kick_api_checks()
        clock[0] += 0.1
    assert sorted(kicked) == sorted(watcher.watched) and len(set(kicked)) == 20
    kicked.clear()
    # c0's check ran and failed: it asks to be checked again in 2 s, not 10
    watcher.api["c0"] = ApiState(next_at=clock[0] + 2.0, failures=1)
    for _ in range(25):
        watcher.kick_api_checks()
        clock[0] += 0.1
    assert kicked.count("c0") == 1
    # a cluster whose API is out of reach is never kicked for it
    watcher.api["c1"] = ApiState(unreachable=True)
    kicked.clear()
    for _ in range(200):
        watcher.kick_api_checks()
        clock[0] += 0.1
    assert "c1" not in kicked and kicked.count("c2") == 2
    # no interval: no checks
    off, off_kicked = _watcher(api_interval=0)
    off.watched = dict(watcher.watched)
    assert off.kick_api_checks() == 0 and off_kicked == []


@pytest.fixture
async def hanging_api() -> AsyncIterator[tuple[str, int]]:
    """A plain-HTTP API on 127.0.0.1 whose /ping answers and whose /slow never does (within a test)."""
    async def ping(request: web.Request) -> web.Response:
        return web.Response(text="pong")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(60)
        return web.Response(text="late")

    app = web.Application()
    app.router.add_get("/ping", ping)
    app.router.add_get("/slow", slow)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, sock)
    await site.start()
    try:
        yield "127.0.0.1", sock.getsockname()[1]
    finally:
        await runner.cleanup()


async def test_check_bounds_a_hanging_api_and_says_why(hanging_api: tuple[str, int]) -> None:
    host, port = hanging_api
    probes = [Probe("api", "/ping", tls=False), Probe("nodes", "/slow", tls=False), Probe("tls", "/ping")]
    answers = await coeapi.check(host, port, probes, tls=None, timeout=0.5)
    assert answers["api"] == Answer(200, "pong")
    assert answers["nodes"].status is None and "no answer within 0.5 s" in (answers["nodes"].error or "")
    assert answers["tls"].error == "no client certificate for the cluster's API"
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    free = closed.getsockname()[1]
    closed.close()
    refused = await coeapi.check(host, free, [Probe("api", "/ping", tls=False)], tls=None, timeout=2)
    assert refused["api"].failure() is not None and refused["api"].status is None
