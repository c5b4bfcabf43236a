"""``cove certs rotate-kek`` against a running certs service (real nats-server and PostgreSQL): the service keeps
signing with every CA while the key-encryption key changes under it, learns the new key from its key file, and
afterwards nothing stored is a PEM private key or decrypts under the old key."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from deploy.local.nats import NatsServer
from proto import subjects
from proto.events import ClusterCACreated, MasterKeyRotated
from proto.requests import CertificateSigned, GetClusterCA, SignCertificate
from services.certs import ca
from services.certs.keys import KeyRing, key_id_of, read_key_file, write_key_file
from services.certs.rotation import rotate_kek
from services.certs.service import build_service
from services.runtime import db, rpc
from services.runtime.rpc import RpcError
from tests.certs.test_certs_service import admit, csr_pem, n_ca_events
from tests.conftest import wait_for
from tests.scheduler.support import Harness, start_harness, stop_harness

pytestmark = pytest.mark.integration

OLD = os.urandom(32)


@pytest.fixture
async def certs_with_key_file(
    make_nats_server: Callable[..., NatsServer], database_url: str, tmp_path: Path
) -> AsyncIterator[tuple[Harness, Path]]:
    key_file = tmp_path / "kek"
    write_key_file(key_file, (OLD,))
    server = make_nats_server()
    h = await start_harness(
        build_service, "certs", server.url, database_url, {"COVE_CERTS_MASTER_KEY_FILE": str(key_file)}
    )
    yield h, key_file
    await stop_harness(h)


def openssl_verifies(tmp_path: Path, ca_pem: str, cert_pem: str) -> bool:
    name = uuid.uuid4().hex
    (tmp_path / f"{name}.ca").write_text(ca_pem)
    (tmp_path / f"{name}.crt").write_text(cert_pem)
    done = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / f"{name}.ca"), str(tmp_path / f"{name}.crt")],
        capture_output=True, text=True, check=False,
    )
    return done.returncode == 0


async def sign(h: Harness, cid: str, project: str, ca_cert_type: str = "kubernetes") -> str:
    reply = await rpc.request(h.bus.nc, subjects.CERTS_SIGN, SignCertificate(
        cluster_id=cid, project_id=project, csr_pem=csr_pem(), user_id="u-42", user_name="bob", access="admin",
        ca_cert_type=ca_cert_type,
    ))
    assert isinstance(reply, CertificateSigned)
    return reply.pem


async def dump(conn: asyncpg.Connection, schemas: list[str]) -> list[Any]:
    """Every value of every column of every table in ``schemas`` (what pg_dump would print)."""
    values: list[Any] = []
    tables = await conn.fetch(
        "SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema = ANY($1::text[])",
        schemas,
    )
    assert tables
    for t in tables:
        for row in await conn.fetch(f"SELECT * FROM {db.ident(t['table_schema'])}.{db.ident(t['table_name'])}"):
            values.extend(row.values())
    return values


def decrypts_under(key: bytes, blob: bytes, cluster_ids: list[str]) -> bool:
    for aad in [c.encode() for c in cluster_ids] + [b""]:
        try:
            AESGCM(key).decrypt(blob[:12], blob[12:], aad)
        except (InvalidTag, ValueError):
            continue
        return True
    return False


async def test_rotation_rewraps_everything_while_every_ca_keeps_signing(
    certs_with_key_file: tuple[Harness, Path], database_url: str, tmp_path: Path
) -> None:
    h, key_file = certs_with_key_file
    project = f"p-{uuid.uuid4().hex[:6]}"
    ids = [(await admit(h, project, f"c{i}"))[0] for i in range(3)]
    created = await wait_for(lambda: n_ca_events(h, 3), message="three ClusterCACreated")
    cas = {e.uuid: e for e in created if isinstance(e, ClusterCACreated)}
    assert all(e.wrapped_by == "data_key" and e.etcd_ca_cert_pem and e.front_proxy_ca_cert_pem
               for e in cas.values())

    # a cluster from before issue 19: one CA, its key wrapped by the KEK itself (as ClusterCACreated carried it)
    legacy = str(uuid.uuid4())
    legacy_pem, legacy_key = ca.generate_ca("legacy")
    blob, kid = KeyRing(OLD).encrypt(legacy, legacy_key)
    _, seq = await h.publish(
        subjects.cluster_events("certs", legacy),
        ClusterCACreated(uuid=legacy, project_id=project, ca_cert_pem=legacy_pem, encrypted_ca_key=blob, key_id=kid),
        project_id=project, cluster_id=legacy,
    )
    await wait_for(lambda: h.applied(seq))
    assert openssl_verifies(tmp_path, legacy_pem, await sign(h, legacy, project))
    for kind in ("etcd", "front_proxy"):  # it has no other CA, and says so
        with pytest.raises(RpcError) as none:
            await rpc.request(h.bus.nc, subjects.CERTS_GET_CA,
                              GetClusterCA(cluster_id=legacy, project_id=project, ca_cert_type=kind))
        assert none.value.code == 409 and "created before" in none.value.message
        with pytest.raises(RpcError) as none:
            await sign(h, legacy, project, kind)
        assert none.value.code == 409
    all_ids = [*ids, legacy]

    # sign continuously while the key changes: not one request may fail
    stop = asyncio.Event()
    signed: list[str] = []

    async def keep_signing() -> None:
        while not stop.is_set():
            for cid in all_ids:
                signed.append(await sign(h, cid, project))

    signer = asyncio.create_task(keep_signing())
    new = os.urandom(32)
    result = await rotate_kek(
        {"COVE_CERTS_MASTER_KEY_FILE": str(key_file)},
        database_url=database_url, nats_url=h.svc.config.nats_url, new=new, schema=h.schema, settle=1.2,
    )
    stop.set()
    await signer  # raises if any signature failed during the rotation
    assert len(signed) >= len(all_ids)
    assert result.key_id == key_id_of(new) and result.previous_key_id == key_id_of(OLD)
    assert result.rewrapped == 3 and result.converted == 1
    assert read_key_file(key_file) == (new,)  # the old key is gone from disk

    # every CA still signs, each certificate chains to its own CA only
    for cid in ids:
        for kind, ca_pem in (("kubernetes", cas[cid].ca_cert_pem), ("etcd", cas[cid].etcd_ca_cert_pem),
                             ("front_proxy", cas[cid].front_proxy_ca_cert_pem)):
            assert ca_pem is not None
            pem = await sign(h, cid, project, kind)
            assert openssl_verifies(tmp_path, ca_pem, pem), kind
            if kind != "kubernetes":
                assert not openssl_verifies(tmp_path, cas[cid].ca_cert_pem, pem), kind
        other = cas[ids[0] if cid != ids[0] else ids[1]].ca_cert_pem
        assert not openssl_verifies(tmp_path, other, await sign(h, cid, project))
    assert openssl_verifies(tmp_path, legacy_pem, await sign(h, legacy, project))

    # a dump of the certs schema and its key store: no PEM private key, nothing the old key decrypts
    conn = await asyncpg.connect(database_url)
    try:
        values = await dump(conn, [h.schema, f"{h.schema}_keys"])
    finally:
        await conn.close()
    blobs = [bytes(v) for v in values if isinstance(v, bytes | bytearray | memoryview)]
    texts = [str(v) for v in values if isinstance(v, str)]
    assert len(blobs) >= 3 * 3 + 1 + 4  # the wrapped CA keys and data keys are there ...
    assert not any(b"PRIVATE KEY" in b for b in blobs) and not any("PRIVATE KEY" in t for t in texts)
    assert not any(decrypts_under(OLD, b, all_ids) for b in blobs)  # ... and the old key opens none of them
    assert any(decrypts_under(new, b, all_ids) for b in blobs)  # (the check can succeed: the new key opens some)
    assert not any(key_id_of(OLD) in t for t in texts)

    # the audit fact of the rotation
    rotated = [e.payload for e in await h.events(subjects.producer_events("certs", "kek"))
               if isinstance(e.payload, MasterKeyRotated)]
    assert [(r.previous_key_id, r.key_id, r.rewrapped) for r in rotated] == [(key_id_of(OLD), key_id_of(new), 4)]

    # a new cluster after the rotation gets its data key under the new key, and signs
    fresh, _ = await admit(h, project, "after")
    events = await wait_for(lambda: n_ca_events(h, 4), message="ClusterCACreated after the rotation")
    new_ca = next(e for e in events if isinstance(e, ClusterCACreated) and e.uuid == fresh)
    assert openssl_verifies(tmp_path, new_ca.ca_cert_pem, await sign(h, fresh, project))


def test_cove_certs_rotate_kek_is_a_cove_command(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "deploy.local", "certs", "rotate-kek", "--help"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "--new-key-file" in done.stdout, done.stderr
    # no database named: a clear refusal, not a traceback
    env = {k: v for k, v in os.environ.items() if k != "COVE_DATABASE_URL"}
    done = subprocess.run([sys.executable, "-m", "deploy.local", "certs", "rotate-kek",
                           "--state-dir", str(tmp_path)], capture_output=True, text=True, check=False, env=env)
    assert done.returncode == 2 and "COVE_DATABASE_URL" in done.stderr


