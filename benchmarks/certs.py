"""CSRs signed per second, for EC P-256 and RSA 2048 client keys: the signing itself (``ca.issue`` with a user
subject, one thread), then the whole ``cove.rpc.certs.sign`` path (NATS request, the store, the data key, the
signature in a worker thread, the CertificateIssued audit event made durable in JetStream before the reply) against
a real certs service, a private nats-server and an embedded PostgreSQL (or COVE_DATABASE_URL).

    .venv/bin/python -m benchmarks certs [--seconds 3] [--inflight 16] [--no-service]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from services.certs import ca

KINDS = ("ec-p256", "rsa-2048")


def make_csrs(kind: str, n: int) -> list[str]:
    out = []
    for i in range(n):
        key: Any = ec.generate_private_key(ec.SECP256R1()) if kind == "ec-p256" else rsa.generate_private_key(
            public_exponent=65537, key_size=2048)
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"user-{i}")]))
               .sign(key, hashes.SHA256()))
        out.append(csr.public_bytes(serialization.Encoding.PEM).decode())
    return out


def sign_rate(csrs: list[str], seconds: float) -> float:
    ca_pem, ca_key = ca.generate_ca("bench")
    subject = ca.user_subject("0123456789abcdef", "alice", ca.ADMIN_GROUP)
    sans = ca.user_sans("0123456789abcdef", "p")
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        ca.issue(ca_pem, ca_key, csrs[n % len(csrs)], subject=subject, sans=sans)
        n += 1
    return n / (time.perf_counter() - started)


async def service_rates(csrs: dict[str, list[str]], seconds: float, inflight: int) -> dict[str, float]:
    from deploy.local.nats import NatsServer
    from deploy.local.postgres import database_url
    from proto import subjects
    from proto.envelope import new_envelope
    from proto.events import ClusterAdmitted
    from proto.requests import SignCertificate
    from services.certs.keys import new_key, write_key_file
    from services.certs.service import build_service
    from services.runtime import rpc
    from services.runtime.bus import Bus
    from services.runtime.service import ServiceConfig

    with tempfile.TemporaryDirectory(prefix="cove-bench-certs-") as tmp:
        nats_server = NatsServer(Path(tmp) / "nats")
        nats_server.start()
        db_url, pg = database_url(Path(tmp) / "pg", durable=False)
        extra = {"COVE_CERTS_MASTER_KEY_FILE": str(Path(tmp) / "kek"), "COVE_STATE_DIR": tmp}
        write_key_file(Path(extra["COVE_CERTS_MASTER_KEY_FILE"]), (new_key(),))
        schema = f"certs_bench_{uuid.uuid4().hex[:6]}"
        svc = build_service(ServiceConfig(service="certs", nats_url=nats_server.url, database_url=db_url,
                                          extra=extra), schema=schema, durable=schema)
        await svc.start()
        bus = await Bus.connect(nats_server.url, name="bench-certs")
        try:
            cid, project = str(uuid.uuid4()), "bench"
            await bus.publish(subjects.cluster_events("scheduler", cid), new_envelope(
                ClusterAdmitted(uuid=cid, project_id=project, master_count=1, node_count=1, name="bench"),
                project_id=project, cluster_id=cid))
            sub = await bus.nc.subscribe(subjects.cluster_events("certs", cid))
            while True:  # the CA exists once ClusterCACreated is out
                msg = await sub.next_msg(timeout=30)
                if b"ClusterCACreated" in msg.data:
                    break
            await sub.unsubscribe()
            await asyncio.sleep(0.5)  # the CA fact applied to the store
            rates: dict[str, float] = {}
            for kind, pems in csrs.items():
                done = 0
                deadline = time.perf_counter() + seconds

                async def worker(offset: int, pems: list[str] = pems, deadline: float = deadline) -> None:
                    nonlocal done
                    i = offset
                    while time.perf_counter() < deadline:
                        await rpc.request(bus.nc, subjects.CERTS_SIGN, SignCertificate(
                            cluster_id=cid, project_id=project, csr_pem=pems[i % len(pems)], user_id="u",
                            user_name="bench", access="admin"), timeout=30)
                        done += 1
                        i += inflight

                started = time.perf_counter()
                await asyncio.gather(*(worker(k) for k in range(inflight)))
                rates[kind] = done / (time.perf_counter() - started)
            return rates
        finally:
            await bus.close()
            await svc.stop()
            nats_server.stop()
            if pg is not None:
                pg.stop()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="certs")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--inflight", type=int, default=16)
    p.add_argument("--no-service", action="store_true", help="only the signing itself")
    args = p.parse_args(argv or [])
    csrs = {kind: make_csrs(kind, 20) for kind in KINDS}
    result: dict[str, Any] = {}
    for kind in KINDS:
        rate = sign_rate(csrs[kind], args.seconds)
        result[f"sign_{kind}_per_s"] = round(rate)
        print(f"   {kind:9} signed in process (ca.issue, 1 thread): {rate:8.0f} CSRs/s", flush=True)
    if not args.no_service:
        rates = asyncio.run(service_rates(csrs, args.seconds, args.inflight))
        for kind, rate in rates.items():
            result[f"rpc_{kind}_per_s"] = round(rate)
            print(f"   {kind:9} through cove.rpc.certs.sign ({args.inflight} in flight, audit event included): "
                  f"{rate:6.0f} CSRs/s", flush=True)
    return result
