from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.certs import ca
from services.certs.keys import KeyRing, UndecryptableKey, key_id_of, load_keyring


def make_csr(cn: str = "admin", org: str = "system:masters", key: rsa.RSAPrivateKey | None = None) -> str:
    key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, cn),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                ]
            )
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def verify_issued(cert: x509.Certificate, ca_cert: x509.Certificate) -> None:
    pub = ca_cert.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    assert cert.signature_hash_algorithm is not None
    pub.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))


def test_ca_is_a_p256_ca_named_after_the_cluster() -> None:
    cert_pem, key_pem = ca.generate_ca("my-cluster")
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "my-cluster"
    assert cert.issuer == cert.subject
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    verify_issued(cert, cert)


def test_sign_csr_keeps_subject_and_is_a_client_cert() -> None:
    cert_pem, key_pem = ca.generate_ca("c1")
    signed = x509.load_pem_x509_certificate(ca.sign_csr(cert_pem, key_pem, make_csr()).encode())
    ca_cert = x509.load_pem_x509_certificate(cert_pem.encode())
    verify_issued(signed, ca_cert)
    assert signed.issuer == ca_cert.subject
    assert signed.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "admin"
    assert signed.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    assert not signed.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = signed.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    days = (signed.not_valid_after_utc - signed.not_valid_before_utc).days
    assert 364 <= days <= 366


def test_sign_accepts_rsa_4096_like_terraform() -> None:
    cert_pem, key_pem = ca.generate_ca("c1")
    key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    pem = ca.sign_csr(cert_pem, key_pem, make_csr(key=key))
    signed = x509.load_pem_x509_certificate(pem.encode())
    pub = signed.public_key()
    assert isinstance(pub, rsa.RSAPublicKey) and pub.key_size == 4096
    # the certificate carries the CSR's key: a signature by that key verifies with it
    pub.verify(key.sign(b"x", padding.PKCS1v15(), hashes.SHA256()), b"x", padding.PKCS1v15(), hashes.SHA256())


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "not a csr",
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    ],
)
def test_malformed_csr_is_rejected(bad: str) -> None:
    cert_pem, key_pem = ca.generate_ca("c1")
    with pytest.raises(ca.InvalidCsr):
        ca.sign_csr(cert_pem, key_pem, bad)


def test_weak_key_and_missing_cn_are_rejected() -> None:
    cert_pem, key_pem = ca.generate_ca("c1")
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ca.InvalidCsr, match="bits"):
        ca.sign_csr(cert_pem, key_pem, make_csr(key=weak))
    key = ec.generate_private_key(ec.SECP256R1())
    no_cn = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x")]))
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(ca.InvalidCsr, match="common name"):
        ca.sign_csr(cert_pem, key_pem, no_cn.public_bytes(serialization.Encoding.PEM).decode())


def test_keyring_round_trip_binds_cluster_and_rotates() -> None:
    old = KeyRing(b"\x01" * 32)
    blob, kid = old.encrypt("cluster-a", b"secret key pem")
    assert b"secret" not in blob
    assert old.decrypt("cluster-a", blob, kid) == b"secret key pem"
    with pytest.raises(UndecryptableKey):
        old.decrypt("cluster-b", blob, kid)  # bound to its cluster
    rotated = KeyRing(b"\x02" * 32, old=(b"\x01" * 32,))
    assert rotated.key_id != kid
    assert rotated.decrypt("cluster-a", blob, kid) == b"secret key pem"
    with pytest.raises(UndecryptableKey):
        KeyRing(b"\x02" * 32).decrypt("cluster-a", blob, kid)


def test_load_keyring_from_env_or_created_file(tmp_path: Path) -> None:
    key = b"\x07" * 32
    ring = load_keyring({"COVE_CERTS_MASTER_KEY": base64.urlsafe_b64encode(key).decode()})
    assert ring.key_id == key_id_of(key)
    with pytest.raises(ValueError):
        load_keyring({"COVE_CERTS_MASTER_KEY": base64.urlsafe_b64encode(b"short").decode()})
    env = {"COVE_STATE_DIR": str(tmp_path)}
    first = load_keyring(env)
    again = load_keyring(env)
    assert first.current == again.current and len(first.current) == 32
    mode = os.stat(tmp_path / "certs-master.key").st_mode & 0o777
    assert mode == 0o600
