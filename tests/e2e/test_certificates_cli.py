"""End to end (LocalStack: every service as a subprocess) with the openstack CLI, as users reach certificates:
`openstack coe ca sign` for a member who did not create the cluster and for a reader, each certificate naming its
own user and group whatever the CSR asked; `coe ca show` for them, and neither for another project; then
`cove certs rotate-kek` while the stack runs, after which `coe ca sign` still answers with the same CA.
(python-magnumclient has no --ca-cert-type flag: the etcd and front-proxy CAs are tested through the API in
tests/api/test_certificates_identity.py.)
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from deploy.local.stack import LocalStack
from services.certs.keys import KEY_FILE_NAME, read_key_file
from tests.conftest import wait_for
from tests.e2e.test_cluster_lifecycle import osc, osc_raw, private_nats, stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

__all__ = ["private_nats", "stack"]  # module-scoped fixtures reused from the lifecycle test


def csr_file(tmp_path: Path, name: str) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    path = tmp_path / f"{name}.csr"
    path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    return path


def openssl_verifies(tmp_path: Path, ca_pem: str, cert_pem: str) -> bool:
    name = uuid.uuid4().hex
    (tmp_path / f"{name}.ca").write_text(ca_pem)
    (tmp_path / f"{name}.crt").write_text(cert_pem)
    done = subprocess.run(["openssl", "verify", "-purpose", "sslclient", "-CAfile", str(tmp_path / f"{name}.ca"),
                           str(tmp_path / f"{name}.crt")], capture_output=True, text=True, check=False)
    return done.returncode == 0


def names(cert_pem: str) -> tuple[str, str]:
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    return (str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value),
            str(cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value))


async def test_members_and_readers_sign_their_own_certificates_with_the_cli(stack: LocalStack, tmp_path: Path) -> None:
    tname, cname = f"t-{uuid.uuid4().hex[:6]}", f"ca-{uuid.uuid4().hex[:6]}"
    osc(stack, "coe", "cluster", "template", "create", tname, "--coe", "kubernetes", "--image", "fedora-coreos",
        "--external-network", "public", "--flavor", "m1.small", "--master-flavor", "m1.small")
    osc(stack, "coe", "cluster", "create", cname, "--cluster-template", tname, "--node-count", "1")
    cid = json.loads(osc(stack, "coe", "cluster", "show", cname, "-f", "json"))["uuid"]

    async def ca_pem() -> str | None:
        proc = osc_raw(stack, "coe", "ca", "show", cid, cloud="cove-demo2")
        return proc.stdout.strip() if proc.returncode == 0 and "BEGIN CERTIFICATE" in proc.stdout else None

    ca = await wait_for(ca_pem, timeout=60, interval=0.5, message="the cluster's CA")
    assert osc(stack, "coe", "ca", "show", cid, cloud="cove-viewer").strip() == ca

    member = osc(stack, "coe", "ca", "sign", cid, str(csr_file(tmp_path, "member")), cloud="cove-demo2")
    assert names(member) == ("demo2", "cove:cluster-admins")  # not the CSR's admin / system:masters
    assert openssl_verifies(tmp_path, ca, member)
    reader = osc(stack, "coe", "ca", "sign", cid, str(csr_file(tmp_path, "reader")), cloud="cove-viewer")
    assert names(reader) == ("viewer", "cove:cluster-viewers")
    assert openssl_verifies(tmp_path, ca, reader)

    # another project's member is refused (the CLI looks the cluster up first, which another project's cluster
    # show answers 404; the API's own 403 on /v1/certificates is tested in tests/api)
    for args in (("sign", cid, str(csr_file(tmp_path, "alt"))), ("show", cid)):
        outsider = osc_raw(stack, "coe", "ca", *args, cloud="cove-alt")
        assert outsider.returncode != 0 and "BEGIN CERTIFICATE" not in outsider.stdout
        assert "could not be found" in outsider.stderr or "403" in outsider.stderr, outsider.stderr

    # the operator rotates the key-encryption key while the stack runs; signing carries on with the same CA
    key_file = stack.state_dir / KEY_FILE_NAME
    before = read_key_file(key_file)
    env = {**os.environ, "COVE_DATABASE_URL": stack.database_url, "COVE_NATS_URL": stack.nats_url}
    env.pop("COVE_CERTS_MASTER_KEY", None)
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "deploy.local", "certs", "rotate-kek", "--state-dir",
                         str(stack.state_dir)], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "re-wrapped" in done.stdout
    after = read_key_file(key_file)
    assert len(after) == 1 and after[0] not in before
    again = osc(stack, "coe", "ca", "sign", cid, str(csr_file(tmp_path, "again")), cloud="cove-demo2")
    assert names(again) == ("demo2", "cove:cluster-admins") and openssl_verifies(tmp_path, ca, again)
