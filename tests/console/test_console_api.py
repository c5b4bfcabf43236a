"""What the API serves for the web console, over HTTP against a LocalStack (no browser needed):

* ``/console/`` and its files without a token, the page for unknown paths (it routes on the fragment), 404 for a
  missing asset and nothing outside ``console/dist``; ``/console/config.json`` names the API's Keystone;
* the login forwards a password or a token to Keystone and answers Keystone's 201 with the token, its 401 as is,
  and refuses other methods without asking Keystone;
* ``GET /v1/controlplane``: 403 for a member, for an admin the services' heartbeats, every consumer's lag, a dead
  letter published to ``COVE_DLQ`` with the runtime's headers, and the build queue (a list).
"""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import pytest

from deploy.local.stack import LocalStack
from proto import subjects
from services.runtime.bus import Bus
from services.runtime.consumer import DLQ_CONSUMER, DLQ_DELIVERIES, DLQ_REASON, DLQ_STREAM_SEQ, DLQ_SUBJECT
from tests.conftest import wait_for
from tests.e2e.test_cluster_lifecycle import http, private_nats, stack, token

pytestmark = [pytest.mark.integration, pytest.mark.slow]

__all__ = ["private_nats", "stack"]


def base(stack: LocalStack) -> str:
    return stack.api_url.removesuffix("/v1")


async def get(url: str) -> tuple[int, str, dict[str, str]]:
    async with aiohttp.ClientSession() as s, s.get(url, allow_redirects=False) as r:
        return r.status, await r.text(), dict(r.headers)


async def login(stack: LocalStack, body: Any) -> tuple[int, Any, str | None]:
    async with aiohttp.ClientSession() as s, s.post(f"{base(stack)}/console/auth/tokens", json=body) as r:
        return r.status, await r.json(content_type=None), r.headers.get("X-Subject-Token")


def password(user: str, pw: str, project: str) -> dict[str, Any]:
    return {"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"name": "Default"}, "password": pw}}},
        "scope": {"project": {"name": project, "domain": {"name": "Default"}}}}}


async def test_console_files_and_config(stack: LocalStack) -> None:
    status, text, headers = await get(f"{base(stack)}/console/")
    assert status == 200 and '<div id="status"' in text and headers["Cache-Control"] == "no-cache"
    asset = text.split('src="/console/')[1].split('"')[0]
    status, _, headers = await get(f"{base(stack)}/console/{asset}")
    assert status == 200 and "immutable" in headers["Cache-Control"]
    status, text, _ = await get(f"{base(stack)}/console/clusters/anything")
    assert status == 200 and '<div id="status"' in text
    status, _, _ = await get(f"{base(stack)}/console/assets/missing.js")
    assert status == 404
    status, text, _ = await get(f"{base(stack)}/console/%2e%2e/%2e%2e/pyproject.toml")
    assert "[project]" not in text
    status, _, headers = await get(f"{base(stack)}/console")
    assert status == 302 and headers["Location"] == "/console/"
    async with aiohttp.ClientSession() as s, s.get(f"{base(stack)}/console/config.json") as r:
        assert r.status == 200
        config = await r.json()
    assert config["keystone_url"] == f"{stack.devcloud_url}/identity/v3"


async def test_console_login_forwards_to_keystone(stack: LocalStack) -> None:
    status, body, tok = await login(stack, password("demo", "demo-pass", "demo"))
    assert status == 201 and tok and body["token"]["project"]["name"] == "demo"
    status, listed = await http("GET", f"{stack.api_url}/clusters", tok)
    assert status == 200 and "clusters" in listed  # the token is an ordinary Keystone token

    status, body, _ = await login(stack, {"auth": {"identity": {"methods": ["token"], "token": {"id": tok}},
                                                   "scope": {"project": {"name": "demo",
                                                                         "domain": {"name": "Default"}}}}})
    assert status == 201

    status, body, tok = await login(stack, password("demo", "wrong", "demo"))
    assert status == 401 and tok is None and body["error"]["code"] == 401

    status, body, _ = await login(stack, {"auth": {"identity": {"methods": ["application_credential"]}}})
    assert status == 400 and "password or a token" in body["error"]["message"]


async def test_controlplane_for_admins(stack: LocalStack) -> None:
    demo = await token(stack, "demo", "demo-pass", "demo")
    admin = await token(stack, "admin", "admin-pass", "admin")
    status, body = await http("GET", f"{stack.api_url}/controlplane", demo)
    assert status == 403, body

    consumer = f"console-test-{uuid.uuid4().hex[:6]}"
    bus = await Bus.connect(stack.nats_url, name="console-test")
    try:
        await bus.publish_raw(subjects.dlq_subject(consumer), b"not an envelope", headers={
            DLQ_REASON: "undecodable", DLQ_CONSUMER: consumer, DLQ_SUBJECT: "cove.evt.api.cluster.x",
            DLQ_STREAM_SEQ: "7", DLQ_DELIVERIES: "1"})
    finally:
        await bus.drain()

    async def view() -> dict[str, Any] | None:
        status, body = await http("GET", f"{stack.api_url}/controlplane", admin)
        assert status == 200, body
        names = {s["service"] for s in body["services"]}
        return body if {"api", "scheduler", "certs", "provisioner", "accounting"} <= names else None

    body = await wait_for(view, timeout=30, interval=0.5, message="every service's heartbeat")
    assert {"api", "scheduler", "provisioner"} <= {c["name"] for c in body["consumers"]}
    assert all(c["pending"] >= 0 and c["ack_pending"] >= 0 for c in body["consumers"])
    dead = body["dead_letters"]
    assert dead["by_consumer"].get(consumer) == 1 and dead["total"] >= 1
    mine = [d for d in dead["recent"] if d["consumer"] == consumer]
    assert mine and mine[0]["reason"] == "undecodable" and mine[0]["subject"] == "cove.evt.api.cluster.x"
    assert isinstance(body["build_queue"], list)
