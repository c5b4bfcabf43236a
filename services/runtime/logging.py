"""structlog configuration: JSON lines with service name, contextvars, and the current trace/span ids."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import msgspec
import structlog

from services.runtime.tracing import current_ids

_ENCODER = msgspec.json.Encoder(enc_hook=repr)


def _json_bytes(event_dict: Any, **_: Any) -> bytes:
    """structlog's serializer: msgspec (several times faster than json.dumps; a value it cannot encode is
    written as its repr)."""
    return _ENCODER.encode(event_dict)


def _json_text(event_dict: Any, **_: Any) -> str:
    return _ENCODER.encode(event_dict).decode()


def _add_trace_ids(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    trace_id, span_id = current_ids()
    if trace_id is not None:
        event_dict.setdefault("trace_id", trace_id)
        event_dict.setdefault("span_id", span_id)
    return event_dict


def configure_logging(service: str, level: str = "INFO", *, json: bool = True) -> None:
    """Configure structlog (and stdlib logging, for libraries) to write one JSON object per line to stderr."""
    lvl = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    logging.basicConfig(level=lvl, stream=sys.stderr, format="%(message)s", force=True)
    binary = getattr(sys.stderr, "buffer", None) if json else None  # None: a text-only stream (a test's capture)
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_json_bytes if binary is not None else _json_text)
        if json
        else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _add_trace_ids,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=(
            structlog.BytesLoggerFactory(file=binary) if binary is not None else structlog.PrintLoggerFactory(file=sys.stderr)
        ),
        # A module's logger is built on its first call and kept: without this every call, a filtered debug one
        # too, builds a bound logger again (about 5 % of the API's CPU on a cluster create). Nothing logs before
        # this runs in a service process (``services.runtime.service.run`` configures first).
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
