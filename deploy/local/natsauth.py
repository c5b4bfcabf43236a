"""NATS users and subject permissions: one user per Cove service, each allowed to publish only its own subjects.

`cove run` and `make run-cluster` generate a password per service (kept in <state>/nats/users.json, mode 0600)
and hand each service its own (COVE_NATS_USER / COVE_NATS_PASSWORD); the server's config gets the
``authorization`` block ``render_authorization`` writes. A production NATS takes the same permissions
(docs/operations.md, "NATS"), with bcrypt-hashed passwords (``nats server passwd``) or nkeys.

What a service may do (``permissions``):
- publish its own events ``cove.evt.<service>.>``, its heartbeat ``cove.heartbeat.<service>``, dead letters
  ``cove.dlq.>`` (named by the consumer, not the service), the RPCs it calls (``CALLS``), and the JetStream API,
  acks and key-value writes it needs (``$JS.API.>``, ``$JS.ACK.>``, ``$JS.FC.>``, ``$KV.>``: leases);
- talk to its own copies on ``cove.<service>.>`` (publish and subscribe: the provisioner's kicks and watch);
- answer RPCs: replies go to the caller's inbox (``allow_responses``) and requests arrive on
  ``cove.rpc.<service>.>``;
- subscribe to its own inbox only: the service connects with ``inbox_prefix`` ``_INBOX_<service>``
  (``inbox_prefix``), so no service reads another's replies (a CA key sent to the provisioner, say).
The ``ops`` user (the operators' ``cove`` commands, tests and benchmarks of a running stack) may do anything.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proto import subjects

SERVICE_NAMES: tuple[str, ...] = ("api", "scheduler", "certs", "provisioner", "accounting")
OPS_USER = "ops"

CALLS: dict[str, tuple[str, ...]] = {
    "api": (subjects.CERTS_SIGN, subjects.CERTS_GET_CA, subjects.CERTS_ROTATE_CA, subjects.ACCOUNTING_USAGE,
            subjects.PROVISIONER_ADDONS),
    "provisioner": (subjects.CERTS_CA_KEY, subjects.CERTS_SIGN_NODE),
}
"""The RPCs each service calls; the certs service's ``ca_key`` and ``sign_node`` answer the provisioner only."""

EXTRA_PUBLISH: dict[str, tuple[str, ...]] = {"api": (subjects.AUDIT_API,)}
EXTRA_SUBSCRIBE: dict[str, tuple[str, ...]] = {"api": (subjects.stored_decisions(),)}
JETSTREAM = ("$JS.API.>", "$JS.ACK.>", "$JS.FC.>", "$KV.>")


def inbox_prefix(service: str) -> str:
    """The inbox prefix a service's connection uses, and the only inboxes it may subscribe to."""
    return f"_INBOX_{service}"


def permissions(service: str) -> dict[str, Any]:
    """The NATS permissions of ``service``'s user (the shape of nats-server's ``permissions`` block)."""
    private = f"cove.{service}.>"  # what its copies tell each other (the provisioner's kicks and watch)
    publish = [
        subjects.producer_events(service),
        private,
        subjects.heartbeat_subject(service),
        f"{subjects.DLQ_PREFIX}.>",
        *CALLS.get(service, ()),
        *EXTRA_PUBLISH.get(service, ()),
        *JETSTREAM,
    ]
    subscribe = [
        f"{inbox_prefix(service)}.>",
        f"{subjects.RPC_PREFIX}.{service}.>",
        private,
        f"{subjects.DROPPED_DELIVER_PREFIX}.>",
        *EXTRA_SUBSCRIBE.get(service, ()),
    ]
    return {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}, "allow_responses": True}


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str

    def env(self) -> dict[str, str]:
        """What a service's environment carries (services/runtime/service.py reads them)."""
        return {"COVE_NATS_USER": self.user, "COVE_NATS_PASSWORD": self.password}

    def url(self, nats_url: str) -> str:
        """``nats_url`` (comma-separated servers too) with the credentials in each address, for tools that take
        only a URL (the operators' ``cove`` commands)."""
        return ",".join(part.replace("://", f"://{self.user}:{self.password}@", 1) for part in nats_url.split(","))


def load_or_create(path: Path, users: tuple[str, ...] = (*SERVICE_NAMES, OPS_USER)) -> dict[str, Credentials]:
    """The users' passwords kept in ``path`` (created 0600 with fresh random passwords when missing): a restarted
    stack gives its services the same credentials."""
    try:
        stored: dict[str, str] = json.loads(path.read_text())
    except (OSError, ValueError):
        stored = {}
    changed = False
    for user in users:
        if user not in stored:
            stored[user] = secrets.token_urlsafe(24)
            changed = True
    if changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(stored, handle)
    return {user: Credentials(user, stored[user]) for user in users}


def render_authorization(users: dict[str, Credentials]) -> str:
    """nats-server's ``authorization`` block: a user per service with its permissions, the ops user unrestricted.
    JSON is valid NATS configuration syntax, so values are written with ``json.dumps``."""
    entries = []
    for name, cred in users.items():
        entry: dict[str, Any] = {"user": cred.user, "password": cred.password}
        if name != OPS_USER:
            entry["permissions"] = permissions(name)
        entries.append("    " + json.dumps(entry))
    return "authorization {\n  users: [\n" + "\n".join(entries) + "\n  ]\n}\n"


def password_variable(user: str) -> str:
    return f"COVE_NATS_{user.upper()}_PASSWORD"


def render_shipped() -> str:
    """deploy/nats/cove-users.conf: the same users and permissions, each password read by nats-server from its
    environment (``$COVE_NATS_API_PASSWORD``, ...; a bcrypt hash from ``nats server passwd`` will do), for a
    production server to ``include``. ``python -m deploy.local.natsauth`` prints it."""
    lines = [
        "# Cove's NATS users: one per service, each allowed to publish only its own subjects (deploy/local/natsauth.py,",
        "# which generates this file: python -m deploy.local.natsauth > deploy/nats/cove-users.conf).",
        "# Include it in the server's config (include ./cove-users.conf) and give nats-server each password in its",
        "# environment, or replace a variable by a bcrypt hash (nats server passwd). docs/operations.md, \"NATS\".",
        "authorization {",
        "  users: [",
    ]
    for user in (*SERVICE_NAMES, OPS_USER):
        perms = "" if user == OPS_USER else f", \"permissions\": {json.dumps(permissions(user))}"
        lines.append(f"    {{\"user\": \"{user}\", \"password\": ${password_variable(user)}{perms}}}")
    return "\n".join([*lines, "  ]", "}", ""])


if __name__ == "__main__":
    print(render_shipped(), end="")
