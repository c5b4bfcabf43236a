"""Per-cluster certificate authority: pure functions over PEM (no bus, no database).

As Magnum does (``magnum/common/x509/operations.py``): the CA's subject and issuer CN is the cluster name (or its
uuid), BasicConstraints(ca, pathlen 0) and KeyUsage(keyCertSign) critical, valid from one day back for 1825 days.
Unlike Magnum the key is ECDSA P-256 (fast enough for hundreds of creates per second). A user's certificate gets
the subject Cove decides from the caller's Keystone identity (``user_subject``: Kubernetes reads the user from CN
and the groups from O), never the CSR's; a node's gets its node name and addresses (``node_subject``).
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY = timedelta(days=1825)
CA_BACKDATE = timedelta(days=1)
CLIENT_VALIDITY = timedelta(days=365)
CLIENT_BACKDATE = timedelta(minutes=5)
MIN_RSA_BITS = 2048
MAX_CSR_BYTES = 64 * 1024


class InvalidCsr(ValueError):
    """The CSR cannot be signed; the message says why (answered as a 400)."""


def generate_ca(common_name: str, now: datetime | None = None) -> tuple[str, bytes]:
    """A new self-signed CA: (certificate PEM, private key PKCS#8 PEM, unencrypted)."""
    now = now or datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64] or "cove-cluster")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(uuid.uuid4().int)
        .not_valid_before(now - CA_BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem


def load_csr(csr_pem: str, *, require_cn: bool = True) -> x509.CertificateSigningRequest:
    """Parse and validate a CSR: PEM, a valid self-signature, an acceptable key (RSA of at least 2048 bits or
    EC), and a subject with a CN when ``require_cn`` (a CSR whose subject Cove replaces needs none)."""
    if not csr_pem or not csr_pem.strip():
        raise InvalidCsr("CSR is empty")
    if len(csr_pem) > MAX_CSR_BYTES:
        raise InvalidCsr(f"CSR is too large ({len(csr_pem)} bytes; at most {MAX_CSR_BYTES})")
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise InvalidCsr(f"CSR is not a PEM certificate signing request: {exc}") from exc
    try:
        valid = csr.is_signature_valid
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise InvalidCsr(f"CSR signature cannot be verified: {exc}") from exc
    if not valid:
        raise InvalidCsr("CSR signature is invalid")
    try:
        pub = csr.public_key()
    except (ValueError, TypeError) as exc:
        raise InvalidCsr(f"CSR public key is not supported: {exc}") from exc
    if isinstance(pub, rsa.RSAPublicKey):
        if pub.key_size < MIN_RSA_BITS:
            raise InvalidCsr(f"CSR RSA key has {pub.key_size} bits; at least {MIN_RSA_BITS} are required")
    elif not isinstance(pub, ec.EllipticCurvePublicKey):
        raise InvalidCsr(f"CSR key type {type(pub).__name__} is not supported (RSA or EC only)")
    try:
        cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError as exc:
        raise InvalidCsr(f"CSR subject is malformed: {exc}") from exc
    if require_cn and (not cns or not str(cns[0].value).strip()):
        raise InvalidCsr("CSR subject has no common name (CN)")
    for ext in _extensions(csr):
        if ext.critical and not isinstance(ext.value, _ALLOWED_EXTENSIONS):
            raise InvalidCsr(f"CSR has an unsupported critical extension {ext.oid.dotted_string}")
    return csr


_ALLOWED_EXTENSIONS = (
    x509.KeyUsage,
    x509.ExtendedKeyUsage,
    x509.SubjectAlternativeName,
    x509.BasicConstraints,
    x509.SubjectKeyIdentifier,
)


def _extensions(csr: x509.CertificateSigningRequest) -> list[x509.Extension[x509.ExtensionType]]:
    try:
        return list(csr.extensions)
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise InvalidCsr(f"CSR extensions are malformed: {exc}") from exc


CaCertType = Literal["kubernetes", "etcd", "front_proxy"]
CA_CERT_TYPES: tuple[CaCertType, ...] = ("kubernetes", "etcd", "front_proxy")
"""Magnum's values of ``ca_cert_type`` (``magnum/api/controllers/v1/certificate.py``); the API also accepts
``front-proxy``. ``kubernetes`` is the cluster CA (API server, kubelets, users), ``etcd`` signs etcd's peers and
clients, ``front_proxy`` the API server's aggregation-layer client."""

ADMIN_GROUP = "cove:cluster-admins"
"""The group of members' (and admins') certificates; the Kubernetes driver binds it to ``cluster-admin``."""
VIEW_GROUP = "cove:cluster-viewers"
"""The group of readers' certificates; the Kubernetes driver binds it to the ``view`` ClusterRole."""
KEYSTONE_USER_URI = "urn:cove:keystone:user:"
"""A user certificate's SAN URI: ``urn:cove:keystone:user:<user id>:project:<project id>``."""


def user_subject(user_id: str, user_name: str | None, group: str) -> x509.Name:
    """The subject of a user's client certificate, decided by Cove (the CSR's is ignored).

    CN is the Keystone user's name, what Kubernetes shows as the user and what RBAC bindings name
    (``kubectl auth whoami``, audit logs); O is the group Kubernetes maps to a role; OU carries the user's id
    (names are unique only within a Keystone domain: the id tells two same-named users apart, and the SAN URI
    repeats it with the project). A user without a name (never from Keystone) gets its id as CN.
    """
    cn = (user_name or user_id)[:64]
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, group),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, user_id[:64]),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])


def user_sans(user_id: str, project_id: str | None) -> x509.SubjectAlternativeName:
    uri = f"{KEYSTONE_USER_URI}{user_id}" + (f":project:{project_id}" if project_id else "")
    return x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)])


def node_sans(values: list[str]) -> x509.SubjectAlternativeName:
    """IP addresses and DNS names only; anything else is ``InvalidCsr`` (a 400)."""
    names: list[x509.GeneralName] = []
    for value in values:
        if not isinstance(value, str) or not value or len(value) > 253:
            raise InvalidCsr(f"invalid subject alternative name {value!r}")
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(value)))
            continue
        except ValueError:
            pass
        if not _DNS_NAME.fullmatch(value):
            raise InvalidCsr(f"subject alternative name {value!r} is neither an IP address nor a DNS name")
        names.append(x509.DNSName(value.lower()))
    return x509.SubjectAlternativeName(names)


_DNS_NAME = re.compile(r"(?=.{1,253}$)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def node_subject(node_name: str) -> x509.Name:
    if not node_name or len(node_name) > 64 or not _DNS_NAME.fullmatch(node_name):
        raise InvalidCsr(f"invalid node name {node_name!r}")
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_name)])


def sign_csr(
    ca_cert_pem: str,
    ca_key_pem: bytes,
    csr_pem: str,
    *,
    validity: timedelta = CLIENT_VALIDITY,
    now: datetime | None = None,
    subject: x509.Name | None = None,
    sans: x509.SubjectAlternativeName | None = None,
    server: bool = False,
) -> str:
    """Sign ``csr_pem`` with the CA; returns the certificate PEM (``issue`` returns the certificate)."""
    cert = issue(
        ca_cert_pem, ca_key_pem, csr_pem, validity=validity, now=now, subject=subject, sans=sans, server=server
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def issue(
    ca_cert_pem: str,
    ca_key_pem: bytes,
    csr_pem: str,
    *,
    validity: timedelta = CLIENT_VALIDITY,
    now: datetime | None = None,
    subject: x509.Name | None = None,
    sans: x509.SubjectAlternativeName | None = None,
    server: bool = False,
) -> x509.Certificate:
    """Sign ``csr_pem`` with the CA. Only the CSR's public key is used when ``subject`` is given (and its
    subjectAltName only when neither ``subject`` nor ``sans`` is); never a CA (requested CA flags and usages are
    ignored). A client certificate has the clientAuth usage only; ``server`` adds serverAuth (a node's engine
    certificate). Raises ``InvalidCsr``.
    """
    csr = load_csr(csr_pem, require_cn=subject is None)
    now = now or datetime.now(UTC)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem.encode())
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise TypeError("unsupported CA key type")
    not_after = min(now + validity, ca_cert.not_valid_after_utc)
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server else [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject if subject is not None else csr.subject)
        .issuer_name(ca_cert.subject)
        .public_key(csr.public_key())
        .serial_number(uuid.uuid4().int)
        .not_valid_before(now - CLIENT_BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()), critical=False)
    )
    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    except x509.ExtensionNotFound:
        pass
    if sans is not None:
        if len(sans):
            builder = builder.add_extension(sans, critical=False)
    elif subject is None:
        for ext in _extensions(csr):
            if isinstance(ext.value, x509.SubjectAlternativeName):
                builder = builder.add_extension(ext.value, critical=ext.critical)
    return builder.sign(ca_key, hashes.SHA256())


def describe(cert: x509.Certificate) -> tuple[str, str, datetime]:
    """(serial in hex, subject as RFC 4514, not-after) of an issued certificate, for the audit event."""
    return format(cert.serial_number, "x"), cert.subject.rfc4514_string(), cert.not_valid_after_utc


def subject_and_serial(ca_cert_pem: str) -> tuple[str, str]:
    """The CA's subject common name (kept by a rotation) and its serial number in hex."""
    cert = x509.load_pem_x509_certificate(ca_cert_pem.encode())
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(cns[0].value) if cns else "cove-cluster"
    return name, format(cert.serial_number, "x")
