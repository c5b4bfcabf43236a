"""The OpenAPI document stays true: it describes exactly the routes the aiohttp router serves, and a bounded,
seeded schemathesis run against the live API (real token, real NATS/PostgreSQL/devcloud) finds no 5xx and no
response that breaks the document's schemas."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import aiohttp
import pytest

from services.api import openapi
from services.api.app import build_app
from services.certs.service import build_service as build_certs
from services.runtime.service import Service, ServiceConfig
from tests.api.conftest import RunningApi, user_token


@pytest.fixture(scope="module")
async def certs(nats_url: str, database_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Service]:
    """The certs service, so certificate calls reach a real CA instead of the API's 503 for a missing service."""
    svc = build_certs(ServiceConfig(
        service="certs", nats_url=nats_url, database_url=database_url, http_port=0, heartbeat_interval=5.0,
        extra={"COVE_STATE_DIR": str(tmp_path_factory.mktemp("openapi-certs"))},
    ))
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


def _app_ops() -> set[tuple[str, str]]:
    app = build_app(pool=MagicMock(), writer=MagicMock(), keystone=MagicMock())
    return openapi.router_operations(app)


def test_every_route_is_documented_and_nothing_else() -> None:
    served = _app_ops()
    described = {(op.method, op.path) for op in openapi.OPERATIONS}
    assert served - described == set(), "routes without an OpenAPI operation (add them to OPERATIONS)"
    doc = openapi.document(served)
    in_doc = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert in_doc == served


def test_document_is_valid_openapi() -> None:
    from jsonschema import Draft4Validator

    doc = openapi.document()
    assert doc["openapi"].startswith("3.0")
    refs = {f"#/components/schemas/{k}" for k in doc["components"]["schemas"]}
    text = json.dumps(doc)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "')[1:]}:
        assert ref in refs, ref
    for schema in doc["components"]["schemas"].values():
        Draft4Validator.check_schema(json.loads(json.dumps(schema).replace('"nullable": true, ', "")))


@pytest.mark.integration
async def test_served_without_auth(api: RunningApi) -> None:
    async with aiohttp.ClientSession() as s, s.get(f"{api.url}{openapi.OPENAPI_PATH}") as r:
        assert r.status == 200
        assert r.headers["X-Openstack-Request-Id"].startswith("req-")
        doc = await r.json()
    assert "/v1/clusters" in doc["paths"] and "post" in doc["paths"]["/v1/clusters"]
    assert doc["components"]["securitySchemes"]["keystone"]["name"] == "X-Auth-Token"


@pytest.mark.integration
@pytest.mark.timeout(600)
async def test_schemathesis_finds_no_server_errors_or_schema_breaks(
    api: RunningApi, certs: Service, tmp_path: Path
) -> None:
    token = await user_token(api.devcloud, "demo", "demo-pass", "demo")
    report = tmp_path / "st.json"
    cmd = [
        str(Path(sys.executable).parent / "st"), "run", f"{api.url}{openapi.OPENAPI_PATH}",
        "--header", f"X-Auth-Token: {token}",
        "--header", "OpenStack-API-Version: container-infra latest",
        "--checks", "not_a_server_error,response_schema_conformance,content_type_conformance",
        "--max-examples", os.environ.get("COVE_SCHEMATHESIS_EXAMPLES", "8"),
        "--seed", "4242", "--generation-deterministic", "--workers", "1", "--no-shrink",
        "--phases", "examples,coverage,fuzzing",
        "--request-timeout", "10", "--max-time", os.environ.get("COVE_SCHEMATHESIS_MAX_TIME", "90"),
        "--report", "ndjson", "--report-ndjson-path", str(report),
    ]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false"},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=540)
    text = out.decode(errors="replace")
    failures = _failures(report)
    assert proc.returncode == 0 and not failures, text[-6000:] + "\n" + json.dumps(failures[:20], indent=1)


def _failures(report: Path) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if not report.exists():
        return found
    for line in report.read_text().splitlines():
        if '"failure' in line.lower() and '"status": "failure"' in line.lower():
            found.append({"line": line[:2000]})
    return found
