"""Docker Swarm-mode and Mesos clusters beside Kubernetes, end to end (issue 12): every service as a subprocess,
the devcloud playing the nodes' endpoints, and the real `openstack coe` CLI as a user drives it.

For each COE: a template (load balancer, floating IPs) and a cluster of 3 masters and 2 workers reach
CREATE_COMPLETE with the servers, the load balancer's listeners and exactly the security group rules the COE's
driver asks for; `api_address` is the COE's endpoint on the load balancer's floating IP; a resize up and down
converges (a Swarm worker is drained and taken out of the swarm before its server goes, as the devcloud's ledger
shows); delete leaves nothing of the cluster in the ledger.

Swarm: `openstack coe cluster config --output-certs` gives the docker environment (DOCKER_HOST = api_address,
DOCKER_CERT_PATH, DOCKER_TLS_VERIFY) and ca.pem, cert.pem, key.pem, with which the real `docker` client reaches
the cluster's engine (the devcloud's stand-in, serving the certificate the certs service issued to the first
manager) over mutual TLS; and a real dockerd serving that same certificate, key and CA (read from the first
manager's user data) answers `docker version` to those files, and refuses a client of another cluster's CA. Mesos: `cluster config` prints what python-magnumclient prints for Mesos (nothing useful:
it has no Mesos support), and Marathon answers at api_address.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import yaml

from deploy.local.stack import LocalStack
from services.provisioner import model
from services.provisioner.drivers import driver_for
from tests.conftest import wait_for
from tests.devcloud.test_coe_endpoints import new_ca
from tests.devcloud.test_docker_engine import DOCKERD, running_engine
from tests.e2e.test_cluster_lifecycle import cluster_status, http, osc, private_nats, sdk, stack, token
from tests.e2e.test_production_cluster import gone, live, loopback

pytestmark = [pytest.mark.integration, pytest.mark.slow]

__all__ = ["private_nats", "stack"]  # module-scoped fixtures: a stack of our own

CLOUD = "cove-alt"


def security_rules(conn: Any, cid: str, cname: str) -> dict[str, set[tuple[str | None, int | None, int | None, str]]]:
    """role -> the ingress rules of the cluster's security group for it, as (protocol, min, max, source) where
    source is ``cluster`` for a rule from one of the cluster's own groups, else ``allowed``."""
    prefix = model.cluster_prefix(cname, cid)
    groups = {g.name: g for g in conn.network.security_groups() if g.name.startswith(prefix)}
    own = {g.id for g in groups.values()}
    out: dict[str, set[tuple[str | None, int | None, int | None, str]]] = {}
    for role in model.ROLES:
        group = groups[f"{prefix}-{role}-sg"]
        out[role] = {(r["protocol"], r["port_range_min"], r["port_range_max"],
                      "cluster" if r["remote_group_id"] in own else "allowed")
                     for r in group.security_group_rules if r["direction"] == "ingress"}
    return out


def wanted_rules(coe: str, api_port: int, network_driver: str) -> dict[str, set[tuple[str | None, int | None,
                                                                                       int | None, str]]]:
    driver = driver_for(coe)
    return {role: {(r.protocol, r.port_min, r.port_max, r.source)
                   for r in driver.port_rules(role, api_port=api_port, network_driver=network_driver)}  # type: ignore[arg-type]
            for role in model.ROLES}


async def build(st: LocalStack, coe: str, network_driver: str) -> tuple[str, str, str, dict[str, Any]]:
    """A template and a 3-master, 2-worker cluster of ``coe`` through the CLI: (template, cluster name, uuid, the
    cluster as shown once CREATE_COMPLETE)."""
    alt = await token(st, "alt", "alt-pass", "alt")
    sfx = uuid.uuid4().hex[:6]
    tname = cname = f"{coe.split('-')[0]}-{sfx}"
    osc(st, "coe", "cluster", "template", "create", tname, "--coe", coe, "--image", "ubuntu-22.04",
        "--external-network", "public", "--flavor", "m1.small", "--master-flavor", "m1.medium",
        "--network-driver", network_driver, "--master-lb-enabled", "--floating-ip-enabled", cloud=CLOUD)
    shown = json.loads(osc(st, "coe", "cluster", "template", "show", tname, "-f", "json", cloud=CLOUD))
    assert shown["coe"] == coe and shown["network_driver"] == network_driver, shown
    listed = json.loads(osc(st, "coe", "cluster", "template", "list", "--fields", "coe", "-f", "json", cloud=CLOUD))
    assert {"name": tname, "coe": coe} in [{"name": t["name"], "coe": t["coe"]} for t in listed], listed
    osc(st, "coe", "cluster", "create", cname, "--cluster-template", tname, "--master-count", "3",
        "--node-count", "2", cloud=CLOUD)
    cid = json.loads(osc(st, "coe", "cluster", "show", cname, "-f", "json", cloud=CLOUD))["uuid"]
    cluster = await wait_for(lambda: cluster_status(st, alt, cid, "CREATE_COMPLETE"), timeout=150, interval=0.5,
                             message=f"{coe} cluster CREATE_COMPLETE")
    return tname, cname, cid, cluster


async def check_cloud_resources(st: LocalStack, coe: str, network_driver: str, cname: str, cid: str,
                                cluster: dict[str, Any]) -> None:
    """Servers, listeners and security group rules are what the COE's driver asks for; every address loopback."""
    conn = await asyncio.to_thread(sdk, st, CLOUD)
    driver = driver_for(coe)
    api_port = driver.default_api_port
    mine = await asyncio.to_thread(lambda: [s for s in conn.compute.servers(details=True)
                                            if s.metadata.get("cove_cluster_id") == cid])
    roles = sorted(s.metadata.get("cove_role") for s in mine)
    assert roles == ["master"] * 3 + ["worker"] * 2, roles
    lbs = await asyncio.to_thread(lambda: [lb for lb in conn.load_balancer.load_balancers()
                                           if f"cove-cluster-{cid}" in (lb.tags or [])])
    assert len(lbs) == 1, lbs
    listeners = await asyncio.to_thread(lambda: list(conn.load_balancer.listeners(loadbalancer_id=lbs[0].id)))
    assert sorted(li.protocol_port for li in listeners) == sorted(driver.load_balancer_ports(api_port)), listeners
    rules = await asyncio.to_thread(security_rules, conn, cid, cname)
    assert rules == wanted_rules(coe, api_port, network_driver), rules
    fips = await asyncio.to_thread(lambda: {f.port_id: f.floating_ip_address for f in conn.network.ips() if f.port_id})
    assert cluster["api_address"] == driver.api_address(fips[lbs[0].vip_port_id], api_port), cluster
    shown = json.loads(osc(st, "coe", "cluster", "show", cname, "-f", "json", cloud=CLOUD))
    loopback(st, CLOUD, shown)
    stats = osc(st, "coe", "stats", "list", await project_of(st), cloud=CLOUD)  # Cove's counts per COE
    assert f"'{coe}': {{'clusters': 1, 'nodes': 5}}" in stats, stats


async def resize_and_delete(st: LocalStack, tname: str, cname: str, cid: str, before: set[tuple[str, str]],
                            project_id: str) -> None:
    alt = await token(st, "alt", "alt-pass", "alt")
    admin = await token(st, "admin", "admin-pass", "admin")
    for count in (3, 1):
        osc(st, "coe", "cluster", "resize", cname, str(count), cloud=CLOUD)
        await wait_for(lambda: cluster_status(st, alt, cid, "UPDATE_COMPLETE"), timeout=120, interval=0.5,
                       message=f"resized to {count} workers")
        servers = [r for kind, r in await live(st, admin, project_id) - before if kind == "server"]
        shown = json.loads(osc(st, "coe", "cluster", "show", cname, "-f", "json", cloud=CLOUD))
        assert shown["node_count"] == count and len(servers) == 3 + count, (shown, servers)
    osc(st, "coe", "cluster", "delete", cname, cloud=CLOUD)
    await wait_for(lambda: gone(st, alt, cid), timeout=120, interval=0.5, message="cluster deleted")
    left = await live(st, admin, project_id) - before
    assert left == set(), sorted(left)
    osc(st, "coe", "cluster", "template", "delete", tname, cloud=CLOUD)


async def project_of(st: LocalStack) -> str:
    conn = await asyncio.to_thread(sdk, st, CLOUD)
    return str(await asyncio.to_thread(lambda: conn.current_project_id))


async def ledger(st: LocalStack, kind: str) -> list[dict[str, Any]]:
    admin = await token(st, "admin", "admin-pass", "admin")
    code, body = await http("GET", f"{st.devcloud_url}/admin/ledger?kind={kind}", admin)
    assert code == 200, body
    return list(body["records"])


def docker(cert_dir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker")
    assert binary is not None
    full = {"PATH": os.environ.get("PATH", ""), "HOME": str(cert_dir), **env}
    return subprocess.run([binary, *args], env=full, capture_output=True, text=True, timeout=60, check=False)


async def test_a_swarm_mode_cluster_through_the_cli(stack: LocalStack, tmp_path: Path) -> None:
    st = stack
    project_id = await project_of(st)
    admin = await token(st, "admin", "admin-pass", "admin")
    before = await live(st, admin, project_id)
    tname, cname, cid, cluster = await build(st, "swarm-mode", "docker")
    await check_cloud_resources(st, "swarm-mode", "docker", cname, cid, cluster)
    assert cluster["api_address"].startswith("tcp://") and cluster["api_address"].endswith(":2376"), cluster

    # `cluster config`: magnumclient's docker environment and the three files
    out = osc(st, "coe", "cluster", "config", cname, "--dir", str(tmp_path), "--output-certs", cloud=CLOUD)
    env = dict(line.removeprefix("export ").split("=", 1) for line in out.strip().splitlines())
    assert env["DOCKER_HOST"] == cluster["api_address"] and env["DOCKER_CERT_PATH"] == str(tmp_path), env
    assert env["DOCKER_TLS_VERIFY"], env
    assert {p.name for p in tmp_path.iterdir()} >= {"ca.pem", "cert.pem", "key.pem"}
    host = urlsplit(cluster["api_address"]).hostname or ""
    assert host.startswith("127."), host  # only a loopback address is followed
    if shutil.which("docker"):
        proc = await asyncio.to_thread(docker, tmp_path, env, "version", "--format", "{{.Server.Version}}")
        assert proc.returncode == 0 and proc.stdout.strip(), (proc.stdout, proc.stderr)
        nodes = await asyncio.to_thread(docker, tmp_path, env, "node", "ls", "--format", "{{.Hostname}}")
        assert nodes.returncode == 0 and len(nodes.stdout.split()) == 5, (nodes.stdout, nodes.stderr)

    # a real Docker engine with the certificate and CA Cove issued to the first manager (from its user data)
    await real_engine_takes_the_cluster_config(st, cid, tmp_path, env)

    # a resize down drains the worker and takes it out of the swarm before its server goes
    await resize_and_delete_swarm(st, tname, cname, cid, before, project_id)


async def real_engine_takes_the_cluster_config(st: LocalStack, cid: str, certs: Path, env: dict[str, str]) -> None:
    """dockerd (Debian's, `make venv` fetches it) serving the first manager's own certificate, key and CA, as its
    user data hands them to it: the files and environment `cluster config` gave make `docker version` succeed over
    TLS on 127.0.0.1 (its certificate names it); a client certificate of another cluster's CA is refused."""
    if DOCKERD is None or shutil.which("docker") is None:
        pytest.skip("the docker CLI or dockerd is missing (make venv fetches Debian's docker.io into .venv/tools)")
    admin = await asyncio.to_thread(sdk, st, "cove-admin")
    servers = await asyncio.to_thread(lambda: [
        s for s in admin.compute.servers(details=True, all_projects=True)
        if s.metadata.get("cove_cluster_id") == cid and s.name.endswith("-master-0")])
    assert len(servers) == 1, servers
    raw = await asyncio.to_thread(lambda: admin.compute.get(
        f"/servers/{servers[0].id}", microversion="2.3").json()["server"]["OS-EXT-SRV-ATTR:user_data"])
    doc = yaml.safe_load(base64.b64decode(raw).decode())
    files = {f["path"]: f["content"] for f in doc["write_files"]}
    tls = "/etc/docker/tls"
    with running_engine(certs.parent / "dockerd", files[f"{tls}/ca.pem"], files[f"{tls}/server-cert.pem"],
                        files[f"{tls}/server-key.pem"]) as (port, _log):
        local = {**env, "DOCKER_HOST": f"tcp://127.0.0.1:{port}"}
        proc = await asyncio.to_thread(docker, certs, local, "version", "--format", "{{.Server.Version}}")
        assert proc.returncode == 0 and proc.stdout.strip(), (proc.stdout, proc.stderr)
        other = new_ca("another-cluster").client_dir(certs.parent / "other")
        (other / "ca.pem").write_text(files[f"{tls}/ca.pem"])  # trusts the engine; its own certificate is foreign
        refused = await asyncio.to_thread(docker, other, {**local, "DOCKER_CERT_PATH": str(other)}, "version")
        assert refused.returncode != 0 and "Server:" not in refused.stdout, refused.stdout


async def resize_and_delete_swarm(st: LocalStack, tname: str, cname: str, cid: str, before: set[tuple[str, str]],
                                  project_id: str) -> None:
    started = {r["id"] for r in await ledger(st, "server") if r["deleted_at"]}
    await resize_and_delete(st, tname, cname, cid, before, project_id)
    servers = [r for r in await ledger(st, "server") if r["deleted_at"] and r["id"] not in started]
    swarm = {r["name"]: r for r in await ledger(st, "swarm_node")}
    drained = 0
    for server in servers:
        node = swarm.get(server["name"])
        if node is None or "-node-" not in server["name"]:
            continue
        statuses = [e["status"] for e in node["events"]]
        when = {e["status"]: e["at"] for e in node["events"]}
        if "drain" in statuses and "removed" in statuses:
            assert when["drain"] <= when["removed"] <= server["deleted_at"], (node, server)
            drained += 1
    assert drained >= 2, (servers, swarm)  # the two workers the resize from 3 to 1 removed


async def test_a_mesos_cluster_through_the_cli(stack: LocalStack, tmp_path: Path) -> None:
    st = stack
    project_id = await project_of(st)
    admin = await token(st, "admin", "admin-pass", "admin")
    before = await live(st, admin, project_id)
    tname, cname, cid, cluster = await build(st, "mesos", "docker")
    await check_cloud_resources(st, "mesos", "docker", cname, cid, cluster)
    assert cluster["api_address"].startswith("http://") and cluster["api_address"].endswith(":8080"), cluster

    out = osc(st, "coe", "cluster", "config", cname, "--dir", str(tmp_path), cloud=CLOUD)
    assert out.strip() == "None", out  # python-magnumclient has no Mesos configuration: it prints None
    assert urlsplit(cluster["api_address"]).hostname.startswith("127.")  # type: ignore[union-attr]
    async with aiohttp.ClientSession() as s, s.get(f"{cluster['api_address']}/v2/info") as r:
        assert r.status == 200, await r.text()
        info = await r.json()
    assert info.get("name") == "marathon", info

    await resize_and_delete(st, tname, cname, cid, before, project_id)
