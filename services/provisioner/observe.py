"""The provisioner's traces and metrics: a span and a latency/error sample per cloud call, the trace each cluster's
reconcile passes continue, time to CREATE_COMPLETE and builds in flight.

A cloud call's ``operation`` is the ``ClusterCloud`` method its function calls (``ensure_network``...), read from
the function's code, and its ``service`` the OpenStack services that method's code reaches through openstacksdk's
proxies (``compute``, ``network``, ``load_balancer``, ``block_storage``, ``image``, ``identity``): both are facts of
the code, not a hand-kept table.
"""

from __future__ import annotations

import contextlib
import functools
import time
import types
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
from opentelemetry import trace

from proto.envelope import Envelope
from services.runtime import health, metrics, tracing

PROXIES = ("compute", "network", "load_balancer", "block_storage", "image", "identity")
FRESH_SECONDS = 120.0
"""A completion older than this when applied is a replay: not a sample of time to CREATE_COMPLETE."""


def _names(code: types.CodeType) -> set[str]:
    out = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            out |= _names(const)
    return out


def operation_of(fn: Callable[..., Any], client_type: type) -> str:
    """The ``client_type`` method ``fn`` calls (the first, in the code's order), else ``fn``'s own name."""
    code = getattr(fn, "__code__", None)
    if code is not None:
        for name in code.co_names:
            if not name.startswith("_") and callable(getattr(client_type, name, None)):
                return name
    return getattr(fn, "__name__", "call")


@functools.cache
def service_of(client_type: type, operation: str) -> str:
    """The openstacksdk proxies ``client_type.operation`` (and the methods it calls) uses, joined by ``+``."""
    seen: set[str] = set()
    found: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        method = getattr(client_type, name, None)
        code = getattr(method, "__code__", None)
        if code is None:
            return
        names = _names(code)
        found.update(p for p in PROXIES if p in names)
        for other in names:
            if hasattr(client_type, other) and callable(getattr(client_type, other)):
                visit(other)

    visit(operation)
    return "+".join(sorted(found)) or "none"


@contextlib.contextmanager
def cloud_call(fn: Callable[..., Any], client_type: type) -> Iterator[trace.Span]:
    """A CLIENT span ``cloud <operation>`` around one ``Cloud.call`` and its latency and error metrics."""
    operation = operation_of(fn, client_type)
    service = service_of(client_type, operation)
    started = time.perf_counter()
    with tracing.tracer(__name__).start_as_current_span(
        f"cloud {operation}", kind=trace.SpanKind.CLIENT,
        attributes={"cloud.operation": operation, "cloud.service": service, "rpc.system": "openstacksdk"},
    ) as span:
        try:
            yield span
        except Exception as exc:
            kind = ("permanent" if getattr(exc, "permanent", True) else "transient") if hasattr(
                exc, "reason") else type(exc).__name__
            metrics.CLOUD_CALL_ERRORS.labels(service, operation, kind).inc()
            span.set_status(trace.Status(trace.StatusCode.ERROR, str(getattr(exc, "reason", exc))[:200]))
            raise
        finally:
            metrics.CLOUD_CALL_SECONDS.labels(service, operation).observe(time.perf_counter() - started)


class ClusterTraces:
    """The trace each cluster's reconcile passes continue (that of the last event that woke it), and the time-to-
    CREATE_COMPLETE samples, from the events the provisioner's projection applies."""

    def __init__(self) -> None:
        self.carriers: dict[str, dict[str, str]] = {}
        self._requested: dict[str, datetime] = {}

    def woke(self, env: Envelope) -> None:
        if env.cluster_id is None:
            return
        if env.trace:
            self.carriers[env.cluster_id] = dict(env.trace)
        if env.type == "ClusterCreateRequested":
            self._requested[env.cluster_id] = env.occurred_at
        elif env.type == "ClusterCreateCompleted":
            requested = self._requested.pop(env.cluster_id, None)
            now = datetime.now(UTC)
            if requested is not None and (now - env.occurred_at).total_seconds() < FRESH_SECONDS:
                metrics.TIME_TO_CREATE_COMPLETE.observe((env.occurred_at - requested).total_seconds())
        elif env.type in ("ClusterCreateFailed", "ClusterDeleteCompleted"):
            self._requested.pop(env.cluster_id, None)
            if env.type == "ClusterDeleteCompleted":
                self.carriers.pop(env.cluster_id, None)

    def span(self, cluster_id: str, status: str | None) -> contextlib.AbstractContextManager[trace.Span]:
        return tracing.continued(self.carriers.get(cluster_id), "reconcile", **{
            "cove.cluster_id": cluster_id, "cove.cluster_status": status or ""})


def builds_in_flight_collector(pool: asyncpg.Pool) -> Callable[[], Any]:
    """A /metrics collector: clusters the provisioner's store says are being created (CREATE_IN_PROGRESS and
    wanted), read at scrape time so a restart does not lose count."""

    async def collect() -> None:
        n = await pool.fetchval(
            "SELECT count(*) FROM provisioner.clusters WHERE status = 'CREATE_IN_PROGRESS' AND desired = 'present'")
        metrics.BUILDS_IN_FLIGHT.set(n or 0)

    health.add_collector(collect)
    return collect


def forget_collector(collector: Callable[[], Any]) -> None:
    health.remove_collector(collector)
