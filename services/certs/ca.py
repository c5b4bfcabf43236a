"""Per-cluster certificate authority: pure functions over PEM (no bus, no database).

As Magnum does (``magnum/common/x509/operations.py``): the CA's subject and issuer CN is the cluster name (or its
uuid), BasicConstraints(ca, pathlen 0) and KeyUsage(keyCertSign) critical, valid from one day back for 1825 days.
Unlike Magnum the key is ECDSA P-256 (fast enough for hundreds of creates per second). A signed CSR keeps the
CSR's subject (Kubernetes reads the user from CN and the groups from O), gets a client certificate's usages
and is valid for a year.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

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


def load_csr(csr_pem: str) -> x509.CertificateSigningRequest:
    """Parse and validate a CSR: PEM, a valid self-signature, an acceptable key, a subject with a CN."""
    if not csr_pem or len(csr_pem) > MAX_CSR_BYTES:
        raise InvalidCsr("CSR is empty or too large")
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
    if not cns or not str(cns[0].value).strip():
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


def sign_csr(
    ca_cert_pem: str,
    ca_key_pem: bytes,
    csr_pem: str,
    *,
    validity: timedelta = CLIENT_VALIDITY,
    now: datetime | None = None,
) -> str:
    """Sign ``csr_pem`` with the CA as a TLS client certificate; returns the certificate PEM.

    Subject copied from the CSR; subjectAltName copied when present; never a CA (requested CA flags and any
    other requested usages are ignored). Raises ``InvalidCsr``.
    """
    csr = load_csr(csr_pem)
    now = now or datetime.now(UTC)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem.encode())
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise TypeError("unsupported CA key type")
    not_after = min(now + validity, ca_cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
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
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()), critical=False)
    )
    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    except x509.ExtensionNotFound:
        pass
    for ext in _extensions(csr):
        if isinstance(ext.value, x509.SubjectAlternativeName):
            builder = builder.add_extension(ext.value, critical=ext.critical)
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def subject_and_serial(ca_cert_pem: str) -> tuple[str, str]:
    """The CA's subject common name (kept by a rotation) and its serial number in hex."""
    cert = x509.load_pem_x509_certificate(ca_cert_pem.encode())
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(cns[0].value) if cns else "cove-cluster"
    return name, format(cert.serial_number, "x")
