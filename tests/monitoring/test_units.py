"""Plain functions of the monitoring code: when traces are exported, how an event caused from a batch keeps its
cause's trace, how a cloud call is named, and the health server's scrape-time collectors."""

from __future__ import annotations

import aiohttp
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.provisioner import observe
from services.provisioner.cloud import ClusterCloud
from services.runtime import health, metrics, tracing


def test_otlp_export_only_when_the_standard_variables_ask_for_it() -> None:
    assert not tracing.otlp_configured({})
    assert tracing.otlp_configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert tracing.otlp_configured({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"})
    assert not tracing.otlp_configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_TRACES_EXPORTER": "none"})
    assert not tracing.otlp_configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_SDK_DISABLED": "true"})


def test_an_event_caused_inside_a_batch_span_continues_its_causes_trace() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("api request") as cause_span:
        cause = tracing.inject()
    # Inside a span of another trace (a batch): a publish span in the cause's trace, whose context is carried.
    with tracer.start_as_current_span("consume batch"):
        ctx = otel_context_of(tracing.follow(cause, "ClusterAdmitted"))
    assert ctx.trace_id == cause_span.get_span_context().trace_id
    # Inside the cause's own trace (a consumer's span for that event): the current span, no extra span.
    with tracer.start_as_current_span("consume", context=tracing.extract(cause)) as span:
        ctx = otel_context_of(tracing.follow(cause, "ClusterAdmitted"))
        assert ctx.span_id == span.get_span_context().span_id
    # A cause without a trace: the current context.
    with tracer.start_as_current_span("alone") as alone:
        assert otel_context_of(tracing.follow({}, "X")).span_id == alone.get_span_context().span_id


def otel_context_of(carrier: dict[str, str]) -> trace.SpanContext:
    return trace.get_current_span(tracing.extract(carrier)).get_span_context()


def test_cloud_calls_are_named_after_the_client_method_and_the_openstack_services_it_uses() -> None:
    assert observe.operation_of(lambda c: c.ensure_network("p", "u"), ClusterCloud) == "ensure_network"
    assert observe.service_of(ClusterCloud, "ensure_network") == "network"
    assert observe.service_of(ClusterCloud, "list_servers") == "compute"
    assert observe.service_of(ClusterCloud, "ensure_load_balancer") == "load_balancer"

    def prepare(c: ClusterCloud) -> object:
        return c.flavor("m1.small")

    assert observe.operation_of(prepare, ClusterCloud) == "flavor"
    assert observe.operation_of(lambda c: 1, ClusterCloud) == "<lambda>"


async def test_cloud_call_records_latency_and_errors() -> None:
    class Boom(Exception):
        reason = "Network create failed: 409"
        permanent = True

    before = metrics.CLOUD_CALL_ERRORS.labels("network", "ensure_network", "permanent")._value.get()
    with pytest.raises(Boom), observe.cloud_call(lambda c: c.ensure_network("p", "u"), ClusterCloud):
        raise Boom()
    after = metrics.CLOUD_CALL_ERRORS.labels("network", "ensure_network", "permanent")._value.get()
    assert after == before + 1


async def test_metrics_refresh_scrape_time_collectors() -> None:
    calls = []

    async def collect() -> None:
        calls.append(1)
        metrics.CLUSTERS_BY_STATUS.labels("TEST_STATUS").set(7)

    server = health.HealthServer("test")
    port = await server.start()
    health.add_collector(collect)
    try:
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
            text = await r.text()
        assert 'cove_clusters{status="TEST_STATUS"} 7.0' in text and calls == [1]
    finally:
        health.remove_collector(collect)
        await server.stop()
