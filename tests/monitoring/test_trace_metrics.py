"""One trace of a cluster create, exported over OTLP/HTTP by every service to a receiver this test runs, and the
metrics each service shows afterwards. The whole stack as subprocesses (deploy/local's LocalStack: NATS, PostgreSQL,
the devcloud, the five services), configured only through the standard OTEL_* variables."""

from __future__ import annotations

import contextlib
import gzip
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from deploy.local.nats import NatsServer
from deploy.local.stack import LocalStack
from tests.conftest import free_port, wait_for
from tests.stacks import running_stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LATEST = {"OpenStack-API-Version": "container-infra latest"}


@dataclass(frozen=True)
class Span:
    service: str
    trace_id: str
    span_id: str
    parent_id: str
    name: str


class OtlpReceiver:
    """A minimal OTLP/HTTP trace receiver: ``POST /v1/traces`` with a protobuf ExportTraceServiceRequest."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.requests = 0
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    async def _traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        assert request.headers["Content-Type"] == "application/x-protobuf"
        export = ExportTraceServiceRequest.FromString(body)
        self.requests += 1
        for resource_spans in export.resource_spans:
            attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self.spans.append(Span(attrs.get("service.name", ""), span.trace_id.hex(), span.span_id.hex(),
                                           span.parent_span_id.hex(), span.name))
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture(scope="module")
def private_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path_factory.mktemp("trace-nats"), server_name="cove-trace")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[OtlpReceiver]:
    r = OtlpReceiver()
    await r.start()
    yield r
    await r.stop()


@pytest.fixture(scope="module")
async def stack(private_nats: NatsServer, pg_admin_url: str, receiver: OtlpReceiver,
                tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    otlp = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}", "OTEL_BSP_SCHEDULE_DELAY": "200"}
    async with running_stack(private_nats.url, pg_admin_url, tmp_path_factory.mktemp("trace-stack"), env=otlp,
                             time_factor=0.05) as local:
        yield local


async def token(stack: LocalStack, user: str, password: str, project: str) -> str:
    body = {"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"name": "Default"}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"name": "Default"}}}}}
    async with aiohttp.ClientSession() as s, s.post(f"{stack.devcloud_url}/identity/v3/auth/tokens", json=body) as r:
        assert r.status == 201, await r.text()
        return r.headers["X-Subject-Token"]


async def call(method: str, url: str, tok: str, body: object = None) -> tuple[int, dict]:  # type: ignore[type-arg]
    async with aiohttp.ClientSession() as s, s.request(
        method, url, json=body, headers={"X-Auth-Token": tok, **LATEST}
    ) as r:
        return r.status, (await r.json(content_type=None) if r.status != 204 else {})


async def scrape(stack: LocalStack, service: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    child = next(c for c in stack.children if c.name == service)
    url = f"http://127.0.0.1:{child.env['COVE_HTTP_PORT']}/metrics"
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert r.status == 200
        text = await r.text()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    want = tuple(sorted(labels.items()))
    return samples.get((name, want))


async def test_one_trace_from_the_api_to_the_cloud_and_metrics_after_a_create(
    stack: LocalStack, receiver: OtlpReceiver
) -> None:
    demo = await token(stack, "demo", "demo-pass", "demo")
    status, tpl = await call("POST", f"{stack.api_url}/clustertemplates", demo, {
        "name": f"trace-{uuid.uuid4().hex[:6]}", "coe": "kubernetes", "image_id": "fedora-coreos",
        "flavor_id": "m1.small", "master_flavor_id": "m1.medium", "external_network_id": "public"})
    assert status == 201, tpl
    status, created = await call("POST", f"{stack.api_url}/clusters", demo, {
        "name": "traced", "cluster_template_id": tpl["uuid"], "master_count": 1, "node_count": 1})
    assert status == 202, created
    cid = created["uuid"]

    async def complete() -> bool:
        code, body = await call("GET", f"{stack.api_url}/clusters/{cid}", demo)
        assert code == 200 and not body["status"].endswith("FAILED"), body
        return body["status"] == "CREATE_COMPLETE"

    await wait_for(complete, timeout=120, interval=0.5, message="cluster CREATE_COMPLETE")

    def root() -> Span | None:
        return next((s for s in receiver.spans if s.service == "api" and s.name == "POST /v1/clusters"), None)

    api_span = await wait_for(root, timeout=20, message="the API's span of POST /v1/clusters")
    assert api_span.parent_id == "", "the request's span is the trace's root"

    def traced() -> list[Span] | None:
        spans = [s for s in receiver.spans if s.trace_id == api_span.trace_id]
        services = {s.service for s in spans}
        cloud = [s for s in spans if s.service == "provisioner" and s.name.startswith("cloud ")]
        if {"api", "scheduler", "certs", "provisioner"} <= services and any(
                s.name == "cloud ensure_network" for s in cloud):
            return spans
        return None

    spans = await wait_for(traced, timeout=30, interval=0.2,
                           message="spans of api, scheduler, certs and provisioner in the create's trace")
    names = {(s.service, s.name) for s in spans}
    assert ("scheduler", "consume ClusterCreateRequested") in names or any(
        s.service == "scheduler" and s.name.startswith(("consume", "publish")) for s in spans)
    assert any(s.service == "certs" and "ClusterAdmitted" in s.name or s.name == "publish ClusterCACreated"
               for s in spans if s.service == "certs")
    assert any(s.service == "provisioner" and s.name == "reconcile" for s in spans)
    cloud_calls = {s.name for s in spans if s.name.startswith("cloud ")}
    assert {"cloud ensure_network", "cloud ensure_security_groups"} <= cloud_calls, cloud_calls
    def orphans() -> list[Span]:
        """Spans of the trace whose parent has not reached the receiver (yet: each service exports in batches, so
        a child can arrive before its parent; a parent that never comes fails the test)."""
        mine = [s for s in receiver.spans if s.trace_id == api_span.trace_id]
        by_id = {s.span_id for s in mine}
        return [s for s in mine if s.parent_id and s.parent_id not in by_id]

    with contextlib.suppress(TimeoutError):
        await wait_for(lambda: not orphans(), timeout=15, interval=0.2, message="every span's parent exported")
    assert not orphans(), f"spans whose parent never reached the receiver: {orphans()[:3]}"
    assert len({s.trace_id for s in spans}) == 1

    # Metrics after the create.
    prov = await scrape(stack, "provisioner")
    assert (value(prov, "cove_cloud_call_seconds_count", service="network", operation="ensure_network") or 0) >= 1
    assert (value(prov, "cove_cloud_call_seconds_count", service="compute", operation="list_servers") or 0) >= 1
    assert value(prov, "cove_provisioner_time_to_create_complete_seconds_count") == 1
    assert (value(prov, "cove_provisioner_time_to_create_complete_seconds_sum") or 0) > 0
    assert value(prov, "cove_provisioner_builds_in_flight") == 0
    assert value(prov, "cove_consumer_lag", consumer="provisioner") == 0
    api = await scrape(stack, "api")
    assert value(api, "cove_clusters", status="CREATE_COMPLETE") == 1
    assert value(api, "cove_clusters", status="CREATE_FAILED") == 0
    assert value(api, "cove_consumer_lag", consumer="api") is not None
    assert (value(api, "cove_audit_events_total", outcome="success") or 0) >= 2
    for service in ("scheduler", "certs", "accounting"):
        assert value(await scrape(stack, service), "cove_consumer_lag", consumer=service) is not None
