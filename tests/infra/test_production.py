"""Production mode (services/runtime/production.py): a service started on its own refuses each development secret
and a missing key-encryption key, naming the setting; `cove run` and the tests are development."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

import pytest

from deploy.local.stack import LocalStack
from services.runtime import production
from services.runtime.service import EX_CONFIG
from tests.conftest import REPO_ROOT

GOOD: dict[str, str] = {
    "COVE_ENV": "production",
    "COVE_NATS_USER": "svc",
    "COVE_NATS_PASSWORD": "a-real-password",
    "COVE_SERVICE_PASSWORD": "a-real-keystone-password",
    "COVE_BOOTSTRAP_SECRET": "a-real-bootstrap-secret",
    "COVE_CERTS_MASTER_KEY": base64.urlsafe_b64encode(b"k" * 32).decode(),
}


@pytest.mark.parametrize("service", sorted(production.CHECKS))
def test_production_settings_pass(service: str) -> None:
    assert production.problems(service, GOOD) == []


@pytest.mark.parametrize(("service", "changed", "named"), [
    ("api", {"COVE_SERVICE_PASSWORD": "cove-pass"}, "COVE_SERVICE_PASSWORD is the development secret cove-pass"),
    ("api", {"COVE_SERVICE_PASSWORD": ""}, "COVE_SERVICE_PASSWORD is not set"),
    ("scheduler", {"COVE_SERVICE_PASSWORD": "cove-pass"}, "COVE_SERVICE_PASSWORD is the development secret"),
    ("provisioner", {"COVE_SERVICE_PASSWORD": "cove-pass"}, "COVE_SERVICE_PASSWORD is the development secret"),
    ("provisioner", {"COVE_BOOTSTRAP_SECRET": "cove-dev-bootstrap-secret"},
     "COVE_BOOTSTRAP_SECRET is the development secret cove-dev-bootstrap-secret"),
    ("provisioner", {"COVE_BOOTSTRAP_SECRET": ""}, "COVE_BOOTSTRAP_SECRET is not set"),
    ("certs", {"COVE_CERTS_MASTER_KEY": ""}, ("the key-encryption key is missing: set COVE_CERTS_MASTER_KEY or "
                                             "COVE_CERTS_MASTER_KEY_FILE")),
    ("accounting", {"COVE_NATS_USER": "", "COVE_NATS_PASSWORD": ""}, "NATS credentials are missing"),
    ("certs", {"COVE_NATS_PASSWORD": ""}, "COVE_NATS_PASSWORD is not set"),
])
def test_each_development_secret_is_refused_by_name(service: str, changed: dict[str, str], named: str) -> None:
    env = GOOD | changed
    with pytest.raises(production.DevelopmentSecretRefused, match=named):
        production.check(service, env)
    assert production.problems(service, env | {"COVE_ENV": "development"}) == []


def test_a_key_file_or_nats_creds_file_will_do() -> None:
    env = GOOD | {"COVE_CERTS_MASTER_KEY": "", "COVE_CERTS_MASTER_KEY_FILE": "/etc/cove/kek",
                  "COVE_NATS_USER": "", "COVE_NATS_PASSWORD": "", "COVE_NATS_CREDS": "/etc/cove/certs.creds"}
    assert production.problems("certs", env) == []


def test_production_is_the_default_outside_tests_and_cove_run() -> None:
    assert production.environment({}) == production.PRODUCTION
    assert production.environment({"PYTEST_VERSION": "9"}) == production.DEVELOPMENT
    assert production.environment({"COVE_ENV": "Development"}) == production.DEVELOPMENT
    with pytest.raises(ValueError, match="COVE_ENV"):
        production.environment({"COVE_ENV": "staging"})
    assert LocalStack("/nonexistent")._base_env()["COVE_ENV"] == production.DEVELOPMENT


@pytest.mark.parametrize(("service", "setting"), [
    ("provisioner", "COVE_BOOTSTRAP_SECRET"),
    ("certs", "COVE_CERTS_MASTER_KEY"),
])
def test_a_service_started_on_its_own_exits_naming_the_setting(service: str, setting: str) -> None:
    """``python -m services.<name>`` as systemd would start it (no COVE_ENV, no pytest in its environment): it
    exits with EX_CONFIG before it connects to anything, naming the setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COVE_", "PYTEST_"))}
    env |= {k: v for k, v in GOOD.items() if k != "COVE_ENV"} | {setting: ""}
    env["COVE_NATS_URL"] = "nats://127.0.0.1:1"  # nothing listens: a service that got this far would hang
    done = subprocess.run([sys.executable, "-m", f"services.{service}"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == EX_CONFIG, done.stderr
    assert setting in done.stderr and "refuses to start in production" in done.stderr
