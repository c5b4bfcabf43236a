"""Wiring of the certs service: the CA projection and the sign / get-CA / rotate-CA RPCs (queue group ``certs``)."""

from __future__ import annotations

from pathlib import Path

from proto import subjects
from services.certs.handlers import (
    FILTER_SUBJECTS,
    NODE_CERT_DAYS,
    USER_CERT_DAYS,
    Handlers,
    validity_days,
)
from services.certs.keys import KeySource
from services.certs.keystore import PostgresKeyStore
from services.runtime.service import Service, ServiceConfig

MIGRATIONS = Path(__file__).parent / "migrations"


def build_service(config: ServiceConfig, *, schema: str = "certs", durable: str = "certs") -> Service:
    """Key-encryption key from ``COVE_CERTS_MASTER_KEY``, ``COVE_CERTS_MASTER_KEY_FILE`` or
    ``$COVE_STATE_DIR/certs-master.key`` (keys.py); data keys in the schema ``<schema>_keys`` (keystore.py)."""
    svc = Service(config, schema=schema, migrations_dir=MIGRATIONS)
    keys = KeySource(config.extra)
    keystore = PostgresKeyStore(schema, keys)
    handlers = Handlers(
        keys,
        lambda: svc.pool,
        lambda: svc.bus,
        keystore=keystore,
        user_validity=validity_days(config.extra, "COVE_CERTS_USER_CERT_DAYS", USER_CERT_DAYS),
        node_validity=validity_days(config.extra, "COVE_CERTS_NODE_CERT_DAYS", NODE_CERT_DAYS),
    )

    async def ensure_keystore(s: Service) -> None:
        assert s.pool is not None
        await keystore.ensure(s.pool)

    svc.on_startup(ensure_keystore)
    svc.add_projection(durable, handlers.project, FILTER_SUBJECTS)
    svc.add_rpc(subjects.CERTS_SIGN, handlers.sign, queue="certs")
    svc.add_rpc(subjects.CERTS_GET_CA, handlers.get_ca, queue="certs")
    svc.add_rpc(subjects.CERTS_ROTATE_CA, handlers.rotate, queue="certs")
    svc.add_rpc(subjects.CERTS_CA_KEY, handlers.ca_key, queue="certs")
    svc.add_rpc(subjects.CERTS_SIGN_NODE, handlers.sign_node, queue="certs")
    return svc
