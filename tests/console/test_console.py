"""The web console end to end in headless Chromium (issue 18) against a stack like `make run`'s (deploy/local's
LocalStack: NATS, PostgreSQL, the devcloud and the five services as subprocesses).

tests/console/drive.mjs drives Debian's Chromium through playwright-core (the Python `playwright` package would
download a browser of its own, which this machine cannot) and prints what it saw as JSON; this test checks it
against the API itself:

* log in with a password; a template and a cluster refused by the API show the API's own message next to the field
  it names (the same words the API answers the same request with);
* create a template and a cluster, watch it reach CREATE_COMPLETE on the page without a reload (the status changes
  on screen, the live label says the events stream), resize it, download its config (a kubeconfig whose client
  certificate the cluster's CA signed, for the key in it), delete it (gone from the page and from the API);
* a reader, logged in with the keyboard alone, sees no write button nor form; every field has a label; an admin
  sees the demo project's cluster and the operations page;
* a token that no longer validates brings the login page back with a message;
* screenshots of every page (the directory is printed), and no error in the browser's console but the 4xx
  responses the refused requests and the dead token provoke on purpose.

Skipped, with the reason, only where Chromium, Node.js or the console's npm packages are missing (`make venv`
installs them where it can: docs/console.md).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from deploy.local.stack import LocalStack
from tests.conftest import REPO_ROOT
from tests.e2e.test_cluster_lifecycle import http, private_nats, stack, token

pytestmark = [pytest.mark.integration, pytest.mark.slow]

__all__ = ["private_nats", "stack"]  # module-scoped fixtures reused from the lifecycle test

CHROMIUM = os.environ.get("COVE_CHROMIUM", "/usr/bin/chromium")
NODE = shutil.which("node")
DRIVER = Path(__file__).parent / "drive.mjs"
PLAYWRIGHT = REPO_ROOT / "console" / "node_modules" / "playwright-core"
SCREENSHOTS = Path(os.environ.get("COVE_CONSOLE_SCREENSHOTS", Path(__file__).parent / "screenshots"))
EXPIRED = "Your session has expired or was revoked. Log in again to continue."
# what the refused requests and the dead token make Chromium log, on purpose, in those steps only
PROVOKED = {
    "template refused with the API's message by its field": re.compile(r"status of 400"),
    "cluster refused with the API's message by its field": re.compile(r"status of 400"),
    "expired token": re.compile(r"status of 401"),
}

if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM}: `make venv` installs Debian's chromium when run as root "
                "(apt-get install chromium); set COVE_CHROMIUM to another binary", allow_module_level=True)
if NODE is None:
    pytest.skip("no Node.js: the console's browser driver (playwright-core) runs on Node", allow_module_level=True)
if not PLAYWRIGHT.is_dir():
    pytest.skip("console/node_modules has no playwright-core: run `make venv` (npm ci in console/)",
                allow_module_level=True)


async def drive(stack: LocalStack, tmp: Path, template: str, cluster: str) -> dict[str, Any]:
    args = {
        "base": stack.api_url.removesuffix("/v1"),
        "screenshots": str(SCREENSHOTS),
        "downloads": str(tmp / "downloads"),
        "chromium": CHROMIUM,
        "template": template,
        "cluster": cluster,
        "users": {
            "demo": {"name": "demo", "password": "demo-pass", "project": "demo"},
            "viewer": {"name": "viewer", "password": "viewer-pass", "project": "demo"},
            "admin": {"name": "admin", "password": "admin-pass", "project": "admin"},
        },
    }
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    proc = await asyncio.create_subprocess_exec(NODE, str(DRIVER), json.dumps(args), cwd=REPO_ROOT,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=900)
    print(f"console screenshots: {SCREENSHOTS}")
    assert stdout.strip(), f"the driver printed nothing (exit {proc.returncode}):\n{stderr.decode()}"
    return dict(json.loads(stdout.decode().strip().splitlines()[-1]))


async def watch_api(stack: LocalStack, tok: str, name: str, seen: dict[str, Any]) -> None:
    """While the browser works, what the API says of the cluster once complete, and its CA (gone after the delete)."""
    while True:
        status, body = await http("GET", f"{stack.api_url}/clusters/detail", tok)
        found = [c for c in (body or {}).get("clusters", []) if c["name"] == name] if status == 200 else []
        if found and found[0]["status"] == "CREATE_COMPLETE" and "cluster" not in seen:
            status, ca = await http("GET", f"{stack.api_url}/certificates/{found[0]['uuid']}", tok)
            if status == 200:
                seen.update(cluster=found[0], ca=ca["pem"])
        await asyncio.sleep(0.5)


async def test_console_in_chromium(stack: LocalStack, tmp_path: Path) -> None:
    template, cluster = f"ct-{uuid.uuid4().hex[:6]}", f"web-{uuid.uuid4().hex[:6]}"
    demo = await token(stack, "demo", "demo-pass", "demo")
    api_saw: dict[str, Any] = {}
    watcher = asyncio.create_task(watch_api(stack, demo, cluster, api_saw))
    try:
        out = await drive(stack, tmp_path, template, cluster)
    finally:
        watcher.cancel()
    steps = {s["name"]: s for s in out["steps"]}
    failed = [s for s in out["steps"] if not s["ok"]]
    assert out["ok"] and not failed, json.dumps(failed or out["steps"][-1:], indent=1)

    # the page shows the API's own words, next to the field they name
    status, body = await http("POST", f"{stack.api_url}/clustertemplates", demo, {
        "name": f"{template}-bad", "coe": "kubernetes", "image_id": "no-such-image", "external_network_id": "public",
        "flavor_id": "m1.small", "master_flavor_id": "m1.medium"})
    assert status == 400
    assert steps["template refused with the API's message by its field"]["saw"]["message"] == body["errors"][0]["detail"]
    status, body = await http("POST", f"{stack.api_url}/clusters", demo, {
        "name": cluster, "cluster_template_id": template, "master_count": 1, "node_count": -1})
    assert status == 400
    assert steps["cluster refused with the API's message by its field"]["saw"]["message"] == body["errors"][0]["detail"]

    # CREATE_COMPLETE reached on the page, from an earlier status, without a reload, heard from the events stream
    created = steps["create cluster and watch it complete without a reload"]["saw"]
    assert created["noReload"] is True
    assert "CREATE_COMPLETE" in created["seen"] and len(created["seen"]) > 1, created
    assert created["live"] == "Live: events"
    cluster_id = created["url"].rsplit("/", 1)[-1]

    admin_saw = steps["admin sees another project's cluster"]["saw"]
    shown = api_saw["cluster"]
    assert shown["uuid"] == cluster_id
    assert shown["project_id"] in admin_saw["row"]  # the demo project's cluster, on the admin's list
    assert {"Build queue", "Services and heartbeats", "Consumer lag", "Dead letters", "Accounting"} <= set(
        admin_saw["sections"])
    assert "cove-provisioner" in admin_saw["services"]

    reader = steps["reader sees no write buttons"]["saw"]
    assert reader["onList"] == reader["onCluster"] == reader["onTemplates"] == [], reader
    assert reader["forms"] == 0 and reader["configButton"] == 1

    resized = steps["resize"]["saw"]
    assert "UPDATE_COMPLETE" in resized["seen"]

    # the downloaded kubeconfig: the cluster's address and CA, a client certificate that CA signed for the key in it
    config = yaml.safe_load(Path(steps["download config"]["saw"]["file"]).read_text())
    assert steps["download config"]["saw"]["name"] == "config"
    assert config["clusters"][0]["cluster"]["server"] == shown["api_address"]
    ca_pem = base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"])
    assert ca_pem.strip() == api_saw["ca"].encode().strip()
    user = config["users"][0]["user"]
    cert = x509.load_pem_x509_certificate(base64.b64decode(user["client-certificate-data"]))
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
    key = serialization.load_pem_private_key(base64.b64decode(user["client-key-data"]), password=None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]

    assert "Clusters:" in steps["quota and usage"]["saw"]["quota"]

    status, _ = await http("GET", f"{stack.api_url}/clusters/{cluster_id}", demo)
    assert status == 404  # deleted on the page, gone from the API

    expired = steps["expired token"]["saw"]
    assert expired["message"] == EXPIRED and expired["hash"] == "#/login"

    unexpected = [e for e in out["console"]
                  if not (e["phase"] in PROVOKED and PROVOKED[e["phase"]].search(e["text"]))]
    assert unexpected == [], json.dumps(unexpected, indent=1)
    assert out.get("unlabelled") == [], out.get("unlabelled")  # every field of every page has a label
    assert len(out["shots"]) >= 10 and all(Path(p).stat().st_size > 0 for p in out["shots"])
