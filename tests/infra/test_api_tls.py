"""The API serves HTTPS with the configured certificate (COVE_API_TLS_CERT/KEY) on the configured address."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.api.service import build_service, tls_context
from services.runtime.service import ServiceConfig
from tests.conftest import drop_database, fresh_database

pytestmark = [pytest.mark.integration]


def self_signed(directory: Path) -> tuple[Path, Path, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cove-api-tls-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "api.crt", directory / "api.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path, cert


async def test_the_api_serves_https_with_the_configured_certificate(
    tmp_path: Path, nats_url: str, pg_admin_url: str
) -> None:
    cert_path, key_path, cert = self_signed(tmp_path)
    db_url = await fresh_database(pg_admin_url)
    config = ServiceConfig.from_env("api", {
        "COVE_NATS_URL": nats_url, "COVE_DATABASE_URL": db_url, "COVE_API_PORT": "0", "COVE_API_HOST": "127.0.0.1",
        "COVE_API_TLS_CERT": str(cert_path), "COVE_API_TLS_KEY": str(key_path),
    })
    svc, server = build_service(config)
    try:
        await svc.start()
        assert server.url.startswith("https://127.0.0.1:")
        trust = ssl.create_default_context(cafile=str(cert_path))
        _, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=trust)
        peer = writer.get_extra_info("ssl_object")
        assert x509.load_der_x509_certificate(peer.getpeercert(binary_form=True)) == cert
        writer.close()
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{server.url}/", ssl=trust) as resp:
                assert resp.status == 200
                assert "versions" in await resp.json()
            with pytest.raises(aiohttp.ClientError):  # plain HTTP gets no answer from a TLS port
                async with session.get(f"http://127.0.0.1:{server.port}/") as resp:
                    await resp.read()
            with pytest.raises(aiohttp.ClientConnectorCertificateError):  # not trusted without the certificate
                async with session.get(f"{server.url}/") as resp:
                    await resp.read()
    finally:
        await svc.stop()
        await drop_database(pg_admin_url, db_url)


def test_a_certificate_without_its_key_is_a_configuration_error(tmp_path: Path) -> None:
    cert_path, key_path, _ = self_signed(tmp_path)
    assert tls_context({}) is None
    with pytest.raises(ValueError, match="COVE_API_TLS_KEY is not set"):
        tls_context({"COVE_API_TLS_CERT": str(cert_path)})
    with pytest.raises(ValueError, match="COVE_API_TLS_CERT is not set"):
        tls_context({"COVE_API_TLS_KEY": str(key_path)})
    assert tls_context({"COVE_API_TLS_CERT": str(cert_path), "COVE_API_TLS_KEY": str(key_path)}) is not None
