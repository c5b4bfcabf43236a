"""CA rotation rolled onto every node, end to end (issue 13): every service as a subprocess, the devcloud (whose
Kubernetes stand-in serves the API from the nodes' user data), the real `openstack coe ca rotate` and the official
`kubernetes` Python client with real certificates (`cryptography`).

A 3-master, 1-worker cluster behind a load balancer: after `openstack coe ca rotate` every node is replaced by one
booted with the new CA; the masters booted while the nodes roll trust the old CA beside the new one (a client CA
bundle in their user data), so the kubeconfig `openstack coe cluster config` gave before the rotation (its client
certificate signed by the old CA) keeps working for as long as any node of the old CA runs; then the masters are
rolled once more trusting the new CA alone, and after UPDATE_COMPLETE that old certificate is refused while a new
kubeconfig (new CA, a certificate it signed) lists the cluster's new nodes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from deploy.local.stack import LocalStack
from tests.conftest import wait_for
from tests.e2e.test_cluster_lifecycle import cluster_status, http, osc, private_nats, sdk, stack, token
from tests.e2e.test_usage import devcloud

pytestmark = [pytest.mark.integration, pytest.mark.slow]
__all__ = ["private_nats", "stack"]  # module-scoped fixtures: a stack of our own


def try_list_nodes(kubeconfig: Path) -> tuple[str, list[str]]:
    """("ok", node names), or why not: "401"; "tls" (a certificate verification failed at the handshake); "reset"
    (the server ended the handshake: how Python's TLS server refuses a client certificate of a CA it does not trust,
    without an alert); "unreachable" (nothing listening for an instant: the stand-in rebinding)."""
    api = k8s_config.new_client_from_config(config_file=str(kubeconfig))
    api.configuration.retries = False
    try:
        with api:
            return "ok", [n.metadata.name for n in k8s.CoreV1Api(api).list_node(_request_timeout=5).items]
    except k8s.ApiException as exc:
        return str(exc.status), []
    except Exception as exc:  # noqa: BLE001 - urllib3 wraps what the socket said
        text = repr(exc)
        if "Connection refused" in text or "NewConnectionError" in text:
            return "unreachable", []
        if "CERTIFICATE_VERIFY_FAILED" in text or "certificate" in text.lower():
            return "tls", [text[:300]]
        return "reset", [text[:300]]


def issuer(kubeconfig: Path) -> x509.Name:
    user = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]
    return x509.load_pem_x509_certificate(base64.b64decode(user["client-certificate-data"])).issuer


def with_cas(kubeconfig: Path, out: Path, *cas: str) -> Path:
    """The kubeconfig trusting the given CAs for the server (the user keeps its client certificate)."""
    doc = yaml.safe_load(kubeconfig.read_text())
    bundle = "".join(ca.strip() + "\n" for ca in cas)
    doc["clusters"][0]["cluster"]["certificate-authority-data"] = base64.b64encode(bundle.encode()).decode()
    out.write_text(yaml.safe_dump(doc))
    return out


async def test_ca_rotation_rolls_every_node_and_old_certificates_work_until_it_completes(
    stack: LocalStack, tmp_path: Path
) -> None:
    st = stack
    demo = await token(st, "demo", "demo-pass", "demo")
    name = f"rot-{uuid.uuid4().hex[:6]}"
    osc(st, "coe", "cluster", "template", "create", name, "--coe", "kubernetes", "--image", "fedora-coreos",
        "--external-network", "public", "--flavor", "m1.small", "--master-flavor", "m1.small",
        "--master-lb-enabled", "--floating-ip-enabled")
    osc(st, "coe", "cluster", "create", name, "--cluster-template", name, "--master-count", "3", "--node-count", "1")
    cid = json.loads(osc(st, "coe", "cluster", "show", name, "-f", "json"))["uuid"]
    await wait_for(lambda: cluster_status(st, demo, cid, "CREATE_COMPLETE"), timeout=150, interval=0.5,
                   message="CREATE_COMPLETE")
    conn = await asyncio.to_thread(sdk, st)

    def servers() -> list[Any]:
        return [s for s in conn.compute.servers(details=True) if s.metadata.get("cove_cluster_id") == cid]

    original = {s.id for s in await asyncio.to_thread(servers)}
    assert len(original) == 4
    (tmp_path / "old").mkdir()
    osc(st, "coe", "cluster", "config", name, "--dir", str(tmp_path / "old"))
    old_config = tmp_path / "old" / "config"
    old_ca = osc(st, "coe", "ca", "show", name).strip()
    status, nodes = await wait_for(lambda: asyncio.to_thread(try_list_nodes, old_config), timeout=30, interval=0.5)
    assert status == "ok" and len(nodes) == 4, (status, nodes)

    # boots of ~1-2 s while the nodes roll (the stack's devcloud boots in tens of milliseconds): long enough for the
    # sampler below to see the old certificate answered by new nodes, also on a loaded machine
    admin = await token(st, "admin", "admin-pass", "admin")
    factor = (await devcloud(st, admin, "GET", "/admin/timing"))["time_factor"]
    await devcloud(st, admin, "PUT", "/admin/timing", {"time_factor": 0.3})
    osc(st, "coe", "ca", "rotate", name)
    new_ca = osc(st, "coe", "ca", "show", name).strip()
    assert new_ca != old_ca
    assert x509.load_pem_x509_certificate(new_ca.encode()).subject == issuer(old_config)  # same subject, new key
    # the user with the old client certificate, trusting both CAs for the server (it has just read the new one)
    old_client = with_cas(old_config, tmp_path / "old-client", old_ca, new_ca)

    samples: list[tuple[str, bool]] = []  # (outcome, a node of the new CA was ACTIVE meanwhile)
    rolling = True

    async def sampler() -> None:
        while rolling:
            before = await asyncio.to_thread(servers)
            outcome, _ = await asyncio.to_thread(try_list_nodes, old_client)
            after = await asyncio.to_thread(servers)
            old_alive = any(s.id in original for s in before) and any(s.id in original for s in after)
            if old_alive:  # the roll onto the new CA has not completed
                rotated = any(s.id not in original and s.status == "ACTIVE" for s in before)
                samples.append((outcome, rotated))
            await asyncio.sleep(0.05)

    task = asyncio.create_task(sampler())
    try:
        await wait_for(lambda: cluster_status(st, demo, cid, "UPDATE_IN_PROGRESS"), timeout=30, interval=0.2,
                       message="the rotation's roll started")
        await wait_for(lambda: cluster_status(st, demo, cid, "UPDATE_COMPLETE"), timeout=300, interval=0.5,
                       message="the rotation's roll UPDATE_COMPLETE")
    finally:
        rolling = False
        await task
        await devcloud(st, admin, "PUT", "/admin/timing", {"time_factor": factor})

    # while any node of the old CA ran, the old client certificate was never refused (401, or a failed
    # verification), also once new nodes served
    assert [o for o, _ in samples if o in ("401", "tls")] == [], samples
    assert sum(o == "ok" for o, _ in samples) >= len(samples) // 2, samples
    assert any(o == "ok" and rotated for o, rotated in samples), samples

    after = await asyncio.to_thread(servers)
    assert len(after) == 4 and not original & {s.id for s in after}, "every node was replaced"
    assert all(s.status == "ACTIVE" for s in after)

    # after the roll: a new kubeconfig (the new CA, a certificate it signed) lists the new nodes, and the old client
    # certificate is refused every time, while the endpoint answers the new one between tries
    (tmp_path / "new").mkdir()
    osc(st, "coe", "cluster", "config", name, "--dir", str(tmp_path / "new"))
    new_config = tmp_path / "new" / "config"
    server_ca = base64.b64decode(yaml.safe_load(new_config.read_text())["clusters"][0]["cluster"][
        "certificate-authority-data"]).decode()
    assert server_ca.strip() == new_ca
    status, nodes = await wait_for(lambda: _ok(new_config), timeout=30, interval=0.5, message="the new kubeconfig")
    assert sorted(nodes) == sorted(s.name.lower() for s in after)
    for _ in range(5):
        old_outcome = await asyncio.to_thread(try_list_nodes, old_client)
        assert old_outcome[0] in ("401", "tls", "reset"), old_outcome
        assert (await asyncio.to_thread(try_list_nodes, new_config))[0] == "ok"

    osc(st, "coe", "cluster", "delete", name)

    async def gone() -> bool:
        return (await http("GET", f"{st.api_url}/clusters/{cid}", demo))[0] == 404

    await wait_for(gone, timeout=120, interval=0.5, message="cluster deleted")


async def _ok(kubeconfig: Path) -> tuple[str, list[str]] | None:
    result = await asyncio.to_thread(try_list_nodes, kubeconfig)
    return result if result[0] == "ok" else None
