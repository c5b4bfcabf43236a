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
from services.certs.keys import load_keyring
from services.runtime.service import Service, ServiceConfig

MIGRATIONS = Path(__file__).parent / "migrations"


def build_service(config: ServiceConfig, *, schema: str = "certs", durable: str = "certs") -> Service:
    """Master key from ``COVE_CERTS_MASTER_KEY`` or ``$COVE_STATE_DIR/certs-master.key`` (see keys.py)."""
    svc = Service(config, schema=schema, migrations_dir=MIGRATIONS)
    handlers = Handlers(
        load_keyring(config.extra),
        lambda: svc.pool,
        lambda: svc.bus,
        user_validity=validity_days(config.extra, "COVE_CERTS_USER_CERT_DAYS", USER_CERT_DAYS),
        node_validity=validity_days(config.extra, "COVE_CERTS_NODE_CERT_DAYS", NODE_CERT_DAYS),
    )
    svc.add_projection(durable, handlers.handle, FILTER_SUBJECTS)
    svc.add_rpc(subjects.CERTS_SIGN, handlers.sign, queue="certs")
    svc.add_rpc(subjects.CERTS_GET_CA, handlers.get_ca, queue="certs")
    svc.add_rpc(subjects.CERTS_ROTATE_CA, handlers.rotate, queue="certs")
    svc.add_rpc(subjects.CERTS_CA_KEY, handlers.ca_key, queue="certs")
    svc.add_rpc(subjects.CERTS_SIGN_NODE, handlers.sign_node, queue="certs")
    return svc
