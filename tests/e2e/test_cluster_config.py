"""End to end (LocalStack: every service as a subprocess) with the openstack CLI: `coe cluster config` writes a
kubeconfig from the cluster's CA and a client certificate it signs; `coe ca show/sign/rotate`;
`coe quotas create/show/list/update/delete` enforced on cluster create; `coe stats list`; `coe service list`.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from deploy.local.stack import LocalStack
from tests.conftest import wait_for
from tests.e2e.test_cluster_lifecycle import cluster_status, http, osc, osc_raw, private_nats, stack, token

pytestmark = [pytest.mark.integration, pytest.mark.slow]

__all__ = ["private_nats", "stack"]  # module-scoped fixtures reused from the lifecycle test


def verifies(cert: x509.Certificate, ca_pem: bytes) -> bool:
    try:
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
    except Exception:  # noqa: BLE001 - any failure: not issued by this CA
        return False
    return True


async def test_cluster_config_ca_and_quotas_with_the_cli(stack: LocalStack, tmp_path: Path) -> None:
    demo = await token(stack, "demo", "demo-pass", "demo")
    tname, cname = f"t-{uuid.uuid4().hex[:6]}", f"cfg-{uuid.uuid4().hex[:6]}"
    osc(stack, "coe", "cluster", "template", "create", tname, "--coe", "kubernetes", "--image", "fedora-coreos",
        "--external-network", "public", "--flavor", "m1.small", "--master-flavor", "m1.small")
    osc(stack, "coe", "cluster", "create", cname, "--cluster-template", tname, "--node-count", "1")
    cid = json.loads(osc(stack, "coe", "cluster", "show", cname, "-f", "json"))["uuid"]
    cluster = await wait_for(lambda: cluster_status(stack, demo, cid, "CREATE_COMPLETE"), timeout=90,
                             interval=0.5, message="cluster CREATE_COMPLETE")
    project_id = cluster["project_id"]

    # `coe cluster config`: a kubeconfig whose server is the api_address and whose client cert the CA signed
    out = osc(stack, "coe", "cluster", "config", cname, "--dir", str(tmp_path))
    assert f"export KUBECONFIG={tmp_path}/config" in out
    kubeconfig = yaml.safe_load((tmp_path / "config").read_text())
    assert kubeconfig["clusters"][0]["cluster"]["server"] == cluster["api_address"]
    assert kubeconfig["clusters"][0]["name"] == cname
    ca_pem = base64.b64decode(kubeconfig["clusters"][0]["cluster"]["certificate-authority-data"])
    user = kubeconfig["users"][0]["user"]
    client_cert = x509.load_pem_x509_certificate(base64.b64decode(user["client-certificate-data"]))
    assert verifies(client_cert, ca_pem)
    group = client_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value
    assert group == "cove:cluster-admins"  # Cove decides the subject, not magnumclient's CSR (issue 19)
    key = serialization.load_pem_private_key(base64.b64decode(user["client-key-data"]), password=None)
    assert client_cert.public_key().public_numbers() == key.public_key().public_numbers()  # type: ignore[union-attr]

    # `coe ca show` prints the same CA; `coe ca sign` signs a CSR file
    shown = osc(stack, "coe", "ca", "show", cname)
    assert shown.strip() == ca_pem.decode().strip()
    csr_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "e2e")]))
           .sign(csr_key, hashes.SHA256()))
    (tmp_path / "e2e.csr").write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    signed = x509.load_pem_x509_certificate(osc(stack, "coe", "ca", "sign", cname, str(tmp_path / "e2e.csr")).encode())
    assert verifies(signed, ca_pem)

    # `coe ca rotate`: a new CA; the old one no longer signs what the cluster hands out
    osc(stack, "coe", "ca", "rotate", cname)
    new_ca = osc(stack, "coe", "ca", "show", cname).strip().encode()
    assert new_ca != ca_pem.strip()
    fresh = tmp_path / "after-rotate"
    fresh.mkdir()
    osc(stack, "coe", "cluster", "config", cname, "--dir", str(fresh))
    user2 = yaml.safe_load((fresh / "config").read_text())["users"][0]["user"]
    cert2 = x509.load_pem_x509_certificate(base64.b64decode(user2["client-certificate-data"]))
    assert verifies(cert2, new_ca) and not verifies(cert2, ca_pem)

    # quotas: the admin limits the demo project to what it has; the next create is refused
    table = osc(stack, "coe", "stats", "list", project_id)
    stats = {m.group(1): int(m.group(2)) for m in re.finditer(r"\|\s*(clusters|nodes)\s*\|\s*(\d+)\s*\|", table)}
    assert stats["clusters"] >= 1 and stats["nodes"] >= 2, table
    in_use = stats["clusters"]
    osc(stack, "coe", "quotas", "create", "--project-id", project_id, "--resource", "Cluster",
        "--hard-limit", str(in_use), cloud="cove-admin")
    shown_q = osc(stack, "coe", "quotas", "show", "--project-id", project_id, "--resource", "Cluster",
                  cloud="cove-demo")
    assert str(in_use) in shown_q
    listed = osc(stack, "coe", "quotas", "list", "--all-tenants", cloud="cove-admin")
    assert project_id in listed
    over = f"over-{uuid.uuid4().hex[:4]}"
    refused = osc_raw(stack, "coe", "cluster", "create", over, "--cluster-template", tname)
    assert refused.returncode != 0 and "maximum clusters per project" in refused.stderr + refused.stdout
    listed_clusters = json.loads(osc(stack, "coe", "cluster", "list", "-f", "json"))
    assert over not in {c["name"] for c in listed_clusters}, "as in Magnum, a refused create leaves no cluster"
    out = osc(stack, "coe", "quotas", "update", "--project-id", project_id, "--resource", "Cluster",
              "--hard-limit", str(in_use + 5), cloud="cove-admin")
    assert "failed" not in out.lower(), out
    status, q = await http("GET", f"{stack.api_url}/quotas/{project_id}/Cluster", demo)
    assert status == 200 and q["hard_limit"] == in_use + 5, q
    osc(stack, "coe", "quotas", "delete", "--project-id", project_id, "--resource", "Cluster", cloud="cove-admin")
    status, q = await http("GET", f"{stack.api_url}/quotas/{project_id}/Cluster", demo)
    assert status == 200 and "id" not in q

    # `coe service list`: every service heartbeating, up
    services: list[dict[str, Any]] = json.loads(osc(stack, "coe", "service", "list", "-f", "json", cloud="cove-admin"))
    binaries = {s["binary"]: s for s in services}
    for name in ("api", "scheduler", "certs", "provisioner", "accounting"):
        assert binaries[f"cove-{name}"]["state"] == "up", services
    assert osc_raw(stack, "coe", "service", "list").returncode != 0  # admin only

    osc(stack, "coe", "cluster", "delete", cname)
