"""Production mode: a service started on its own (systemd, a container) refuses to run on a development secret.

``COVE_ENV`` is ``production`` or ``development``. Unset, a service is in production, except under pytest (which
exports ``PYTEST_VERSION`` to everything it starts): the tests are development, and ``cove run`` sets
``COVE_ENV=development`` for the processes it starts. In production ``check`` names every setting that is missing
or holds a development default, and the service exits before it connects to anything:

- ``COVE_SERVICE_PASSWORD`` (api, scheduler, provisioner: the Keystone service user), never ``cove-pass``;
- ``COVE_BOOTSTRAP_SECRET`` (provisioner: kubeadm bootstrap tokens), never ``cove-dev-bootstrap-secret``;
- ``COVE_CERTS_MASTER_KEY`` or ``COVE_CERTS_MASTER_KEY_FILE`` (certs: the key-encryption key), never the key file
  ``cove run`` creates on first use;
- ``COVE_NATS_USER`` + ``COVE_NATS_PASSWORD`` or ``COVE_NATS_CREDS`` (every service: its own NATS user).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

PRODUCTION = "production"
DEVELOPMENT = "development"

DEV_SERVICE_PASSWORD = "cove-pass"
DEV_BOOTSTRAP_SECRET = "cove-dev-bootstrap-secret"


class DevelopmentSecretRefused(RuntimeError):
    """A service in production mode found a development secret or a missing one; the message names each setting."""


def environment(env: Mapping[str, str]) -> str:
    """``production`` or ``development`` (ValueError naming COVE_ENV on anything else)."""
    value = env.get("COVE_ENV", "").strip().lower()
    if not value:
        return DEVELOPMENT if "PYTEST_VERSION" in env else PRODUCTION
    if value not in (PRODUCTION, DEVELOPMENT):
        raise ValueError(f"COVE_ENV must be {PRODUCTION} or {DEVELOPMENT}, not {value!r}")
    return value


Check = Callable[[Mapping[str, str]], str | None]


def _service_password(env: Mapping[str, str]) -> str | None:
    value = env.get("COVE_SERVICE_PASSWORD", "")
    if not value:
        return f"COVE_SERVICE_PASSWORD is not set (the Keystone service user's password; the development default " \
               f"is {DEV_SERVICE_PASSWORD})"
    if value == DEV_SERVICE_PASSWORD:
        return f"COVE_SERVICE_PASSWORD is the development secret {DEV_SERVICE_PASSWORD}"
    return None


def _bootstrap_secret(env: Mapping[str, str]) -> str | None:
    value = env.get("COVE_BOOTSTRAP_SECRET", "")
    if not value:
        return f"COVE_BOOTSTRAP_SECRET is not set (kubeadm bootstrap tokens would derive from the development " \
               f"secret {DEV_BOOTSTRAP_SECRET})"
    if value == DEV_BOOTSTRAP_SECRET:
        return f"COVE_BOOTSTRAP_SECRET is the development secret {DEV_BOOTSTRAP_SECRET}"
    return None


def _key_encryption_key(env: Mapping[str, str]) -> str | None:
    if env.get("COVE_CERTS_MASTER_KEY", "").strip() or env.get("COVE_CERTS_MASTER_KEY_FILE", "").strip():
        return None
    return ("the key-encryption key is missing: set COVE_CERTS_MASTER_KEY or COVE_CERTS_MASTER_KEY_FILE (the "
            "certs-master.key auto-created under COVE_STATE_DIR is for development)")


def _nats_credentials(env: Mapping[str, str]) -> str | None:
    if env.get("COVE_NATS_CREDS"):
        return None
    if env.get("COVE_NATS_USER"):
        return None if env.get("COVE_NATS_PASSWORD") else "COVE_NATS_PASSWORD is not set (COVE_NATS_USER is)"
    return "NATS credentials are missing: set COVE_NATS_USER and COVE_NATS_PASSWORD, or COVE_NATS_CREDS"


CHECKS: dict[str, tuple[Check, ...]] = {
    "api": (_nats_credentials, _service_password),
    "scheduler": (_nats_credentials, _service_password),
    "provisioner": (_nats_credentials, _service_password, _bootstrap_secret),
    "certs": (_nats_credentials, _key_encryption_key),
    "accounting": (_nats_credentials,),
}
"""What each service needs in production (a service not named here needs its NATS credentials only)."""


def problems(service: str, env: Mapping[str, str]) -> list[str]:
    """Every development secret or missing setting ``service`` would run on (empty in development)."""
    if environment(env) != PRODUCTION:
        return []
    found = (check(env) for check in CHECKS.get(service, (_nats_credentials,)))
    return [problem for problem in found if problem is not None]


def check(service: str, env: Mapping[str, str]) -> None:
    """Raise ``DevelopmentSecretRefused`` naming every problem ``problems`` finds."""
    found = problems(service, env)
    if found:
        raise DevelopmentSecretRefused(
            f"{service} refuses to start in production (COVE_ENV=production, the default outside `cove run`): "
            + "; ".join(found)
            + ". Set COVE_ENV=development to run on development defaults."
        )
