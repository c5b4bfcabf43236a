"""End to end (every service as a subprocess, the devcloud, the real `openstack` CLI and the official `kubernetes`
Python client): the kubeconfig `openstack coe cluster config` writes works against the cluster's API endpoint,
which the devcloud stands in for from the nodes' user data (deploy/devcloud/coe/):

* a Kubernetes cluster (1 master, 2 workers) without a load balancer or floating IPs, and one with a load
  balancer and floating IPs: `list_node()` through the kubeconfig gives the cluster's servers, Ready; `get_code()`
  gives the kube_tag; the pods list is empty;
* a client certificate signed by the other cluster's CA, or none, is refused with 401;
* after the cluster is deleted its endpoint is gone (connection refused).
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from deploy.local.stack import LocalStack
from tests.conftest import wait_for
from tests.e2e.test_cluster_lifecycle import cluster_status, http, osc, private_nats, sdk, stack, token

pytestmark = [pytest.mark.integration, pytest.mark.slow]

__all__ = ["private_nats", "stack"]  # module-scoped fixtures: a stack of our own


def api_client(kubeconfig: Path) -> k8s.ApiClient:
    return k8s_config.new_client_from_config(config_file=str(kubeconfig))


def list_nodes(kubeconfig: Path) -> list[Any]:
    with api_client(kubeconfig) as api:
        return list(k8s.CoreV1Api(api).list_node().items)


def refused_with(kubeconfig: Path) -> int:
    """The HTTP status of list_node through the kubeconfig (it must fail)."""
    with api_client(kubeconfig) as api:
        try:
            k8s.CoreV1Api(api).list_node()
        except k8s.ApiException as e:
            return int(e.status)
    raise AssertionError("list_node succeeded")


def connection_refused(address: str) -> bool:
    url = urlsplit(address)
    assert url.hostname and url.hostname.startswith("127."), address  # never leave the machine
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


async def gone(st: LocalStack, tok: str, cid: str) -> bool:
    return (await http("GET", f"{st.api_url}/clusters/{cid}", tok))[0] == 404


async def make_cluster(st: LocalStack, name: str, *flags: str) -> str:
    osc(st, "coe", "cluster", "template", "create", name, "--coe", "kubernetes", "--image", "fedora-coreos",
        "--external-network", "public", "--flavor", "m1.small", "--master-flavor", "m1.small", *flags)
    osc(st, "coe", "cluster", "create", name, "--cluster-template", name, "--master-count", "1", "--node-count", "2")
    return str(json.loads(osc(st, "coe", "cluster", "show", name, "-f", "json"))["uuid"])


async def test_kubeconfig_lists_the_cluster_s_nodes_through_the_devcloud_endpoint(
    stack: LocalStack, tmp_path: Path
) -> None:
    st = stack
    demo = await token(st, "demo", "demo-pass", "demo")
    sfx = uuid.uuid4().hex[:6]
    names = {"plain": f"ep-plain-{sfx}", "lb": f"ep-lb-{sfx}"}
    ids = {
        "plain": await make_cluster(st, names["plain"], "--floating-ip-disabled"),
        "lb": await make_cluster(st, names["lb"], "--master-lb-enabled", "--floating-ip-enabled"),
    }
    clusters = {}
    for kind, cid in ids.items():
        clusters[kind] = await wait_for(lambda cid=cid: cluster_status(st, demo, cid, "CREATE_COMPLETE"),
                                        timeout=150, interval=0.5, message=f"{kind} cluster CREATE_COMPLETE")
    conn = await asyncio.to_thread(sdk, st, "cove-demo")
    servers = await asyncio.to_thread(lambda: list(conn.compute.servers(details=True)))

    configs: dict[str, Path] = {}
    for kind, name in names.items():
        out_dir = tmp_path / kind
        out_dir.mkdir()
        osc(st, "coe", "cluster", "config", name, "--dir", str(out_dir))
        configs[kind] = out_dir / "config"
        server = yaml.safe_load(configs[kind].read_text())["clusters"][0]["cluster"]["server"]
        assert server == clusters[kind]["api_address"] and urlsplit(server).hostname.startswith("127.")  # type: ignore[union-attr]

        # the nodes are the cluster's servers, Ready; /version is the driver's kube_tag; no pods
        mine = {s.name for s in servers if s.metadata.get("cove_cluster_id") == ids[kind]}
        assert len(mine) == 3, mine
        nodes = await wait_for(lambda k=kind: list_nodes(configs[k]), timeout=30, interval=0.5,
                               message=f"{kind}: the API endpoint answers", ignore=(Exception,))
        assert {n.metadata.name for n in nodes} == {s.lower() for s in mine}, (nodes, mine)
        for n in nodes:
            assert [(c.type, c.status) for c in n.status.conditions] == [("Ready", "True")]
        roles = sorted("control-plane" if "node-role.kubernetes.io/control-plane" in n.metadata.labels else "worker"
                       for n in nodes)
        assert roles == ["control-plane", "worker", "worker"]
        with api_client(configs[kind]) as api:
            assert k8s.VersionApi(api).get_code().git_version.startswith("v1.")
            assert k8s.CoreV1Api(api).list_pod_for_all_namespaces().items == []
            assert k8s.CoreV1Api(api).list_namespaced_pod("kube-system").items == []

    # a client certificate signed by the other cluster's CA is refused (401), and so is none
    for kind, other in (("plain", "lb"), ("lb", "plain")):
        mixed = yaml.safe_load(configs[kind].read_text())
        mixed["users"][0]["user"] = yaml.safe_load(configs[other].read_text())["users"][0]["user"]
        (tmp_path / f"{kind}-foreign").write_text(yaml.safe_dump(mixed))
        assert await asyncio.to_thread(refused_with, tmp_path / f"{kind}-foreign") == 401
        del mixed["users"][0]["user"]["client-certificate-data"], mixed["users"][0]["user"]["client-key-data"]
        (tmp_path / f"{kind}-anonymous").write_text(yaml.safe_dump(mixed))
        assert await asyncio.to_thread(refused_with, tmp_path / f"{kind}-anonymous") == 401
        ca = base64.b64decode(mixed["clusters"][0]["cluster"]["certificate-authority-data"])
        assert b"BEGIN CERTIFICATE" in ca

    # delete: the endpoint is gone
    for kind, name in names.items():
        osc(st, "coe", "cluster", "delete", name)
    for kind, cid in ids.items():
        await wait_for(lambda cid=cid: gone(st, demo, cid), timeout=120, interval=0.5,
                       message=f"{kind} cluster deleted")
        await wait_for(lambda k=kind: connection_refused(clusters[k]["api_address"]), timeout=30, interval=0.2,
                       message=f"{kind}: the endpoint stops listening")
