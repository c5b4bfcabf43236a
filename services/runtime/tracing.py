"""OpenTelemetry setup and W3C trace-context propagation through NATS headers.

Export: spans leave the process over OTLP/HTTP (protobuf) when the standard variables name a receiver
(``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``; headers, timeout, compression and the
batch processor's ``OTEL_BSP_*`` as the SDK reads them; ``OTEL_TRACES_EXPORTER=none`` or ``OTEL_SDK_DISABLED=true``
turn it off; ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` add to the resource). Nothing is exported otherwise.

One trace per request: the API opens a server span per HTTP request (``http_server_middleware``); every event carries
the W3C context it was published in (``Envelope.trace``, and the NATS headers); a consumer's span continues it; an
event published because of another continues the cause's trace (``follow``), even from a batch; the provisioner's
reconcile passes continue the trace of the event that woke them (``continued``), and each cloud call is a span.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, Mapping

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
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
    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service)}))
    if exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    if otlp_configured():
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if span_exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)
    _configured = True


def otlp_configured(environ: Mapping[str, str] | None = None) -> bool:
    """True when the standard OpenTelemetry variables ask for OTLP trace export."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").lower() in ("none", ""):
        return False
    return bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def flush(timeout_millis: int = 5000) -> None:
    """Export the spans still buffered (at shutdown; the provider also does it at exit)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.force_flush(timeout_millis)


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


def follow(cause_trace: Mapping[str, str], event_type: str) -> dict[str, str]:
    """The trace context for an event published because of an event that carried ``cause_trace``: the current
    span's when it belongs to the cause's trace (a consumer's span for that event); otherwise (a batch applied
    at once runs in a span of its own) a short ``publish <type>`` span of this service inside the cause's trace,
    so the chain continues and this service shows in it."""
    parent = extract(cause_trace)
    parent_ctx = trace.get_current_span(parent).get_span_context()
    current = trace.get_current_span().get_span_context()
    if not parent_ctx.is_valid or (current.is_valid and current.trace_id == parent_ctx.trace_id):
        return inject()
    with tracer(__name__).start_as_current_span(
        f"publish {event_type}", context=parent, kind=trace.SpanKind.PRODUCER,
        attributes={"messaging.system": "nats", "cove.event_type": event_type},
    ):
        return inject()


@contextlib.contextmanager
def continued(carrier: Mapping[str, str] | None, name: str, **attributes: str | int) -> Iterator[trace.Span]:
    """A span continuing the trace ``carrier`` holds (W3C headers), or a new trace when it holds none."""
    with tracer(__name__).start_as_current_span(name, context=extract(carrier), attributes=attributes) as span:
        yield span


_HTTP_ROUTE_UNKNOWN = "unmatched"


def http_server_middleware() -> Middleware:
    """An aiohttp middleware opening a SERVER span per request (continuing an incoming ``traceparent``), named
    ``<METHOD> <route>`` with the stable HTTP semantic-convention attributes; the request's work (events
    published, RPCs) happens inside it."""

    @web.middleware
    async def trace_request(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else _HTTP_ROUTE_UNKNOWN
        with tracer(__name__).start_as_current_span(
            f"{request.method} {route}", context=extract(request.headers), kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": request.method, "url.path": request.path, "http.route": route},
        ) as span:
            response = await handler(request)
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= 500:
                span.set_status(trace.Status(trace.StatusCode.ERROR))
            return response

    return trace_request
