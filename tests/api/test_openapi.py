"""The OpenAPI document stays true: it describes exactly the routes the aiohttp router serves, and a bounded,
seeded schemathesis run against the live API (real token, real NATS/PostgreSQL/devcloud) finds no 5xx and no
response that breaks the document's schemas."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from unittest.mock import MagicMock

import aiohttp
import pytest

from services.accounting.service import build_service as build_accounting
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


@pytest.fixture(scope="module")
async def accounting(nats_url: str, database_url: str) -> AsyncIterator[Service]:
    """The accounting service, so /v1/usage reaches real figures instead of the API's 503 for a missing service."""
    svc = build_accounting(ServiceConfig(service="accounting", nats_url=nats_url, database_url=database_url,
                                         http_port=0, heartbeat_interval=5.0))
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
    api: RunningApi, certs: Service, accounting: Service, tmp_path: Path
) -> None:
    token = await user_token(api.devcloud, "demo", "demo-pass", "demo")
    await _schemathesis(api, token, tmp_path, max_time=os.environ.get("COVE_SCHEMATHESIS_MAX_TIME", "90"))


ADMIN_TAGS = ("quotas", "stats", "mservices")
"""Operations only an admin gets past policy with (a member's run sees their 403s only)."""
ADMIN_OPERATIONS = ("post_v1_clustertemplates", "patch_v1_clustertemplates_ident")
"""Operations with admin-only fields (a template's ``public`` and ``hidden``)."""
ADMIN_SUCCESSES = (
    "GET /v1/quotas", "GET /v1/quotas/{project_id}/{resource}", "POST /v1/quotas",
    "PATCH /v1/quotas/{project_id}/{resource}", "DELETE /v1/quotas/{project_id}/{resource}", "GET /v1/stats",
    "GET /v1/mservices", "POST /v1/clustertemplates", "PATCH /v1/clustertemplates/{ident}",
)


@pytest.mark.integration
@pytest.mark.timeout(300)
async def test_schemathesis_as_admin_over_admin_only_operations(api: RunningApi, tmp_path: Path) -> None:
    """The same checks with the devcloud's ``admin`` (project ``admin``) over quotas CRUD, stats of every
    project, mservices and the templates' admin-only fields, which the member's run only ever sees refused.

    Random strings never name a real project or image, so schemathesis dictionaries put real ones into part of
    the generated requests: a project made for this run (its quotas touch nobody else's admission), the demo
    project (stats), a template to patch, and a valid image, COE and network for template creates. The run's
    templates are deleted afterwards (public ones would show in every project's listings)."""
    admin = await user_token(api.devcloud, "admin", "admin-pass", "admin")
    headers = {"X-Auth-Token": admin, "OpenStack-API-Version": "container-infra latest"}
    async with aiohttp.ClientSession(headers=headers) as s:
        async with s.post(f"{api.devcloud.url}/identity/v3/projects",
                          json={"project": {"name": f"st-admin-{uuid.uuid4().hex[:8]}"}}) as r:
            assert r.status == 201, await r.text()
            project = (await r.json())["project"]["id"]
        async with s.get(f"{api.devcloud.url}/identity/v3/projects", params={"name": "demo"}) as r:
            demo_project = (await r.json())["projects"][0]["id"]
        async with s.post(f"{api.url}/v1/clustertemplates", json={
            "name": f"st-admin-{uuid.uuid4().hex[:8]}", "coe": "kubernetes", "image_id": "fedora-coreos",
            "external_network_id": "public", "public": True,
        }) as r:
            assert r.status == 201, await r.text()
            template = await r.json()
    config = tmp_path / "schemathesis.toml"
    config.write_text("\n".join([
        "[dictionaries]",
        f"projects = {{ values = [{json.dumps(project)}] }}",
        f"stats_projects = {{ values = [{json.dumps(project)}, {json.dumps(demo_project)}] }}",
        'resources = { values = ["Cluster"] }',
        f"templates = {{ values = [{json.dumps(template['uuid'])}, {json.dumps(template['name'])}] }}",
        'images = { values = ["fedora-coreos", "ubuntu-22.04"] }',
        'coes = { values = ["kubernetes"] }',
        'networks = { values = ["public"] }',
        'flavors = { values = ["m1.small", "m1.medium"] }',
        'patch_paths = { values = ["/public", "/hidden", "/labels", "/tags", "/master_lb_enabled"] }',
        'flags = { values = ["true", "false"] }',
        "[generation]",
        "allow-x00 = false",  # a NUL is a 400 before any handler (the member's run covers it)
        "[parameters]",
        '"path.project_id" = { dictionary = "projects", probability = 0.7 }',
        '"path.resource" = { dictionary = "resources", probability = 0.8 }',
        '"body.project_id" = { dictionary = "projects", probability = 0.7 }',
        '"body.resource" = { dictionary = "resources", probability = 0.8 }',
        '"query.project_id" = { dictionary = "stats_projects", probability = 0.7 }',
        '"path.ident" = { dictionary = "templates", probability = 0.8 }',
        '"body.image_id" = { dictionary = "images", probability = 0.8 }',
        '"body.coe" = { dictionary = "coes", probability = 0.8 }',
        '"body.external_network_id" = { dictionary = "networks", probability = 0.8 }',
        '"body.flavor_id" = { dictionary = "flavors", probability = 0.8 }',
        '"body.master_flavor_id" = { dictionary = "flavors", probability = 0.8 }',
        '"body.[*].path" = { dictionary = "patch_paths", probability = 0.8 }',
        '"body.[*].value" = { dictionary = "flags", probability = 0.5 }',
        "[[operations]]",  # every template this run creates is public: what only an admin may do
        'include-operation-id = "post_v1_clustertemplates"',
        'parameters = { "body.public" = true }',
        "",
    ]))
    select = [arg for tag in ADMIN_TAGS for arg in ("--include-tag", tag)]
    select += [arg for op in ADMIN_OPERATIONS for arg in ("--include-operation-id", op)]
    try:
        report = await _schemathesis(api, admin, tmp_path, select, config=config, examples="40",
                                     max_time=os.environ.get("COVE_SCHEMATHESIS_ADMIN_MAX_TIME", "45"))
        # The run got past policy and validation: every operation succeeded at least once.
        seen = _statuses(report)
        assert all(any(200 <= s < 300 for s in seen.get(op, ())) for op in ADMIN_SUCCESSES), seen
    finally:
        async with aiohttp.ClientSession(headers=headers) as s:
            async with s.get(f"{api.url}/v1/clustertemplates/detail") as r:
                mine = [t["uuid"] for t in (await r.json())["clustertemplates"]
                        if t["project_id"] == template["project_id"]]
            for ident in mine:
                async with s.delete(f"{api.url}/v1/clustertemplates/{ident}"):
                    pass


async def _schemathesis(api: RunningApi, token: str, tmp_path: Path, select: list[str] | None = None, *,
                        max_time: str, examples: str = "8", config: Path | None = None) -> Path:
    """Run schemathesis over the live API (``select``: its operation filters); assert no failure; the report."""
    report = tmp_path / "st.json"
    cmd = [
        str(Path(sys.executable).parent / "st"), *(["--config-file", str(config)] if config else []),
        "run", f"{api.url}{openapi.OPENAPI_PATH}",
        "--header", f"X-Auth-Token: {token}",
        "--header", "OpenStack-API-Version: container-infra latest",
        "--checks", "not_a_server_error,response_schema_conformance,content_type_conformance",
        "--max-examples", os.environ.get("COVE_SCHEMATHESIS_EXAMPLES", examples),
        "--seed", "4242", "--generation-deterministic", "--workers", "1", "--no-shrink",
        "--phases", "examples,coverage,fuzzing",
        "--request-timeout", "10", "--max-time", max_time,
        "--report", "ndjson", "--report-ndjson-path", str(report),
        *(select or []),
    ]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false"},
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=540)
    text = out.decode(errors="replace")
    failures = _failures(report)
    assert proc.returncode == 0 and not failures, text[-6000:] + "\n" + json.dumps(failures[:20], indent=1)
    return report


def _failures(report: Path) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if not report.exists():
        return found
    for line in report.read_text().splitlines():
        if '"failure' in line.lower() and '"status": "failure"' in line.lower():
            found.append({"line": line[:2000]})
    return found


def _statuses(report: Path) -> dict[str, set[int]]:
    """Operation ("METHOD /path") -> the response statuses the run saw."""
    seen: dict[str, set[int]] = {}
    for line in report.read_text().splitlines():
        finished = json.loads(line).get("ScenarioFinished")
        if not finished:
            continue
        recorder = finished.get("recorder") or {}
        for interaction in (recorder.get("interactions") or {}).values():
            if interaction.get("response"):
                seen.setdefault(recorder["label"], set()).add(interaction["response"]["status_code"])
    return seen
