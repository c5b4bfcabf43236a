"""OpenTelemetry setup and W3C trace-context propagation through NATS headers."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_propagator = TraceContextTextMapPropagator()
_configured = False


def setup_tracing(
    service: str, *, exporter: str | None = None, span_exporter: SpanExporter | None = None
) -> None:
    """Install a TracerProvider once per process.

    ``exporter``: ``"none"`` (default, spans are created and propagated but not exported) or ``"console"``;
    read from ``COVE_TRACE_EXPORTER`` when not given. ``span_exporter`` adds any exporter (tests use an
    in-memory one).
    """
    global _configured
    if _configured:
        current = trace.get_tracer_provider()
        if span_exporter is not None and isinstance(current, TracerProvider):
            current.add_span_processor(SimpleSpanProcessor(span_exporter))
        return
    exporter = exporter or os.environ.get("COVE_TRACE_EXPORTER", "none")
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    if span_exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)
    _configured = True


@functools.cache
def tracer(name: str = "cove") -> trace.Tracer:
    """The tracer for ``name``, built once (a consumer asks for it on every batch). One obtained before
    ``setup_tracing`` is OpenTelemetry's proxy, which uses the provider installed later."""
    return trace.get_tracer(name)


def inject(headers: dict[str, str] | None = None) -> dict[str, str]:
    """Write the current span's ``traceparent``/``tracestate`` into ``headers`` (created if None)."""
    carrier: dict[str, str] = {} if headers is None else headers
    _propagator.inject(carrier)
    return carrier


def extract(headers: Mapping[str, str] | None) -> otel_context.Context:
    """The remote trace context carried by ``headers`` (an empty context when none)."""
    return _propagator.extract(dict(headers or {}))


def current_ids() -> tuple[str | None, str | None]:
    """Hex (trace_id, span_id) of the current span, or (None, None)."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None, None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")
