"""The one shape every Cove service has: configuration from the environment, then a ``Service`` that owns
logging, tracing, the bus, the database and its migrations, the health server, the heartbeat, and the
service's projections, consumers, RPC handlers and background tasks, run until SIGTERM/SIGINT.

A service's ``__main__.py``::

    from services.runtime.service import Service, ServiceConfig, run

    def build_service(config: ServiceConfig) -> Service:
        svc = Service(config, schema="scheduler", migrations_dir=Path(__file__).parent / "migrations")
        svc.add_projection("scheduler", handlers.handle, [subjects.producer_events("api", "cluster")])
        svc.add_rpc(subjects.rpc_subject("scheduler", "quota"), handlers.quota)
        return svc

    def main() -> None:
        run(build_service, name="scheduler")
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import nats.errors
import nats.js.errors
import structlog
import uvloop
from nats.aio.subscription import Subscription

from proto import subjects
from proto.streams import DEFAULT_CONSUMER, ConsumerSettings
from services.runtime import db, metrics, production, rpc
from services.runtime.bus import Bus
from services.runtime.consumer import Consumer, Handler
from services.runtime.health import HealthServer
from services.runtime.heartbeat import Heartbeat
from services.runtime.logging import configure_logging
from services.runtime.projection import AppliedHook, BatchProjectionHandler, Projection, ProjectionHandler
from services.runtime.taskdump import dump_tasks
from services.runtime.tracing import setup_tracing

log = structlog.get_logger(__name__)

Hook = Callable[["Service"], Awaitable[None]]
T = TypeVar("T")

START_PATIENCE = 60.0
"""Seconds a start-up step talking to JetStream (a consumer's creation, a key-value bucket's) is tried again while
the server leaves it unanswered or says it is unavailable, before the service gives up and exits: after a NATS
node's restart the cluster may still be moving a stream's or consumer's leader, and a request waits its 5 s in vain
(the chaos test saw services exit while starting and needed its supervisor to start them again)."""

UNANSWERED = (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.ServiceUnavailableError,
              nats.js.errors.NoStreamResponseError)
"""What a JetStream request answers while the cluster has no leader for it: worth asking again."""


async def patiently(waiting_for: str, step: Callable[[], Awaitable[T]], *, patience: float = START_PATIENCE) -> T:
    """Run ``step`` (an idempotent start-up step) until it succeeds, again after a growing pause (0.5 s to 5 s)
    while JetStream leaves it unanswered (``UNANSWERED``), for at most ``patience`` seconds; each retry logs
    ``service_start_waiting`` naming what the service waits for."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    attempt = 0
    while True:
        try:
            return await step()
        except UNANSWERED as exc:
            attempt += 1
            pause = min(0.5 * 2 ** (attempt - 1), 5.0)
            if loop.time() + pause >= deadline:
                log.error("service_start_gave_up", waiting_for=waiting_for, attempts=attempt, error=repr(exc))
                raise
            log.warning("service_start_waiting", waiting_for=waiting_for, attempt=attempt, retry_in=pause,
                        error=repr(exc))
            await asyncio.sleep(pause)


@dataclass(frozen=True)
class ServiceConfig:
    service: str
    nats_url: str = "nats://127.0.0.1:4222"
    database_url: str | None = None
    http_port: int = 0
    log_level: str = "INFO"
    heartbeat_interval: float = 10.0
    shutdown_timeout: float = 30.0
    nats_user: str | None = None
    nats_password: str | None = None
    nats_credentials: str | None = None
    """NATS authentication: ``COVE_NATS_USER``/``COVE_NATS_PASSWORD`` or a credentials file ``COVE_NATS_CREDS``
    (deploy/local/natsauth.py: a user per service, allowed to publish only its own subjects)."""
    extra: dict[str, str] = field(default_factory=dict)
    """Every ``COVE_*`` variable, for service-specific settings (e.g. ``COVE_CLOUD``)."""

    @classmethod
    def from_env(cls, service: str, environ: dict[str, str] | None = None) -> ServiceConfig:
        env = dict(os.environ if environ is None else environ)
        return cls(
            service=env.get("COVE_SERVICE_NAME", service),
            nats_url=env.get("COVE_NATS_URL", "nats://127.0.0.1:4222"),
            database_url=env.get("COVE_DATABASE_URL") or None,
            http_port=int(env.get("COVE_HTTP_PORT", "0")),
            log_level=env.get("COVE_LOG_LEVEL", "INFO"),
            heartbeat_interval=float(env.get("COVE_HEARTBEAT_INTERVAL", "10")),
            shutdown_timeout=float(env.get("COVE_SHUTDOWN_TIMEOUT", "30")),
            nats_user=env.get("COVE_NATS_USER") or None,
            nats_password=env.get("COVE_NATS_PASSWORD") or None,
            nats_credentials=env.get("COVE_NATS_CREDS") or None,
            extra={k: v for k, v in env.items() if k.startswith("COVE_")},
        )


class Service:
    """Register what the service does (before ``start``), then ``start``/``stop`` or ``run_until_stopped``.

    ``bus`` and ``pool`` are available from ``on_startup`` hooks onwards (and to handlers at run time).
    """

    def __init__(
        self,
        config: ServiceConfig,
        *,
        schema: str | None = None,
        migrations_dir: Path | str | None = None,
    ) -> None:
        self.config = config
        self.name = config.service
        self.schema = db.ident(schema) if schema else None
        self.migrations_dir = Path(migrations_dir) if migrations_dir else None
        self.bus: Bus | None = None
        self.pool: asyncpg.Pool | None = None
        self.health = HealthServer(self.name, config.http_port)
        self.heartbeat: Heartbeat | None = None
        self.projections: list[Projection] = []
        self.consumers: list[Consumer] = []
        self._projection_specs: list[
            tuple[str, ProjectionHandler, list[str], ConsumerSettings, BatchProjectionHandler | None,
                  AppliedHook | None]
        ] = []
        self._consumer_specs: list[tuple[str, Handler, list[str], ConsumerSettings, str]] = []
        self._rpc_specs: list[tuple[str, rpc.RpcHandler, str]] = []
        self._rpc_subs: list[Subscription] = []
        self._startup: list[Hook] = []
        self._cleanup: list[Hook] = []
        self._tasks_specs: list[Callable[[Service], Coroutine[None, None, None]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.started = False

    # ------------------------------------------------------------------ registration

    def add_projection(
        self,
        name: str,
        handler: ProjectionHandler,
        filter_subjects: Sequence[str],
        settings: ConsumerSettings = DEFAULT_CONSUMER,
        batch_handler: BatchProjectionHandler | None = None,
        on_applied: AppliedHook | None = None,
    ) -> None:
        """An idempotent projection into this service's schema (requires ``schema`` and a database);
        ``batch_handler`` applies several fresh events at once, ``on_applied`` hears each settled event after its
        commit (``Projection``)."""
        self._projection_specs.append((name, handler, list(filter_subjects), settings, batch_handler, on_applied))

    def add_consumer(
        self,
        durable: str,
        handler: Handler,
        filter_subjects: Sequence[str],
        settings: ConsumerSettings = DEFAULT_CONSUMER,
        stream: str = subjects.EVENTS_STREAM,
    ) -> None:
        """A plain durable consumer (no store): the handler must be idempotent itself."""
        self._consumer_specs.append((durable, handler, list(filter_subjects), settings, stream))

    def add_rpc(self, subject: str, handler: rpc.RpcHandler, queue: str | None = None) -> None:
        """Answer requests on ``subject`` in queue group ``queue`` (default: the service name)."""
        self._rpc_specs.append((subject, handler, queue or self.name))

    def add_task(self, task: Callable[[Service], Coroutine[None, None, None]]) -> None:
        """A long-running coroutine started after everything else and cancelled on shutdown."""
        self._tasks_specs.append(task)

    def on_startup(self, hook: Hook) -> None:
        self._startup.append(hook)

    def on_cleanup(self, hook: Hook) -> None:
        self._cleanup.append(hook)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        cfg = self.config
        authenticated = bool(cfg.nats_user or cfg.nats_credentials)
        self.bus = await Bus.connect(
            cfg.nats_url, name=self.name, user=cfg.nats_user, password=cfg.nats_password,
            credentials=cfg.nats_credentials, inbox_prefix=f"_INBOX_{self.name}" if authenticated else None,
        )
        await patiently("JetStream: the streams", self.bus.ensure_streams)
        self.health.add_check("nats", lambda: self.bus is not None and self.bus.connected)
        if cfg.database_url and self.schema:
            self.pool = await db.create_pool(cfg.database_url, self.schema)
            if self.migrations_dir is not None:
                await db.migrate(self.pool, self.schema, self.migrations_dir)
            pool = self.pool
            self.health.add_check("database", lambda: db.reachable(pool))
        elif self._projection_specs:
            raise RuntimeError(f"{self.name}: projections need COVE_DATABASE_URL and a schema")
        for hook in self._startup:
            await hook(self)
        for name, handler, filters, settings, batch_handler, on_applied in self._projection_specs:
            assert self.pool is not None and self.schema is not None
            p = Projection(
                name=name,
                schema=self.schema,
                pool=self.pool,
                bus=self.bus,
                handler=handler,
                filter_subjects=filters,
                settings=settings,
                migrations_dir=self.migrations_dir,
                batch_handler=batch_handler,
                on_applied=on_applied,
            )
            await patiently(f"JetStream: projection {name}'s consumer", p.start)
            self.projections.append(p)
        for durable, chandler, filters, settings, stream in self._consumer_specs:
            c = Consumer(
                self.bus,
                durable=durable,
                filter_subjects=filters,
                handler=chandler,
                settings=settings,
                stream=stream,
            )
            await patiently(f"JetStream: consumer {durable}", c.start)
            self.consumers.append(c)
        if self.projections or self.consumers:
            self.health.add_check(
                "consumers",
                lambda: all(p.running for p in self.projections) and all(c.running for c in self.consumers),
            )
            watched = [(c.stream, c.durable) for c in (*(p.consumer for p in self.projections), *self.consumers)]
            js = self.bus.js

            def consumer_lag() -> Awaitable[None]:
                return metrics.collect_consumer_lag(js, watched)

            self.health.add_collector(consumer_lag)
        for subject, rhandler, queue in self._rpc_specs:
            self._rpc_subs.append(await rpc.serve(self.bus.nc, subject, queue, rhandler))
        for task in self._tasks_specs:
            t = asyncio.create_task(task(self), name=f"{self.name}:task:{getattr(task, '__name__', 'task')}")
            t.add_done_callback(_task_ended)
            self._tasks.append(t)
        if self._tasks:
            # a task that failed (not one that finished its work and returned) leaves the service without part of
            # what it does: not ready, so that its supervisor or a test sees it
            self.health.add_check("tasks", lambda: not any(_failed(t) for t in self._tasks))
        self.heartbeat = Heartbeat(self.bus, self.name, interval=cfg.heartbeat_interval)
        self.heartbeat.start()
        await self.health.start()
        self.started = True
        log.info("service_started", service=self.name, http_port=self.health.port)

    async def stop(self) -> None:
        """Graceful: stop fetching, finish the message in hand, stop RPC and tasks, drain NATS, close the pool."""
        log.info("service_stopping", service=self.name)
        self.started = False
        for sub in self._rpc_subs:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # noqa: BLE001 - shutting down: log and go on
                log.warning("rpc_unsubscribe_failed", error=repr(exc))
        self._rpc_subs.clear()
        await _bounded("consumers", asyncio.gather(*(p.stop() for p in self.projections),
                                                   *(c.stop() for c in self.consumers)))
        for t in self._tasks:
            t.cancel()
        await _bounded("tasks", asyncio.gather(*self._tasks, return_exceptions=True))
        self._tasks.clear()
        for hook in reversed(self._cleanup):
            try:
                await _bounded("cleanup hook", hook(self))
            except Exception:
                log.exception("cleanup_hook_failed")
        if self.heartbeat is not None:
            await _bounded("heartbeat", self.heartbeat.stop())
        if self.bus is not None and not await _bounded("bus drain", self.bus.drain()):
            await self.bus.close()
        if self.pool is not None and not await _bounded("database pool", self.pool.close()):
            self.pool.terminate()  # a connection still held by what did not stop: closed under it
        await self.health.stop()
        log.info("service_stopped", service=self.name)

    async def run_until_stopped(self, stop: asyncio.Event | None = None) -> None:
        """Start, wait for SIGTERM/SIGINT (or ``stop``), then stop gracefully."""
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, dump_tasks)  # where every task awaits, to the log
        try:
            await self.start()
            await stop.wait()
            log.info("service_signalled", service=self.name)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
                loop.remove_signal_handler(sig)
            await asyncio.wait_for(self.stop(), self.config.shutdown_timeout)


def _failed(task: asyncio.Task[None]) -> bool:
    return task.done() and not task.cancelled() and task.exception() is not None


def _task_ended(task: asyncio.Task[None]) -> None:
    if _failed(task):
        log.error("service_task_failed", task=task.get_name(), error=repr(task.exception()))


STOP_STEP_SECONDS = 15.0
"""How long each step of a graceful stop may take before the next goes on (a step that hangs, such as a pool
waiting for a connection something never releases, must not leave the process, or a test's teardown, hanging)."""


async def _bounded(step: str, work: Awaitable[Any]) -> bool:
    """Await ``work`` for at most STOP_STEP_SECONDS; False (logged, naming the step) when it did not finish."""
    try:
        await asyncio.wait_for(work, STOP_STEP_SECONDS)
    except TimeoutError:
        log.warning("service_stop_step_timed_out", step=step, seconds=STOP_STEP_SECONDS)
        return False
    return True


EX_CONFIG = 78
"""The exit status of a service refusing its configuration (sysexits' EX_CONFIG; the systemd units do not restart
on it: RestartPreventExitStatus)."""


def run(build: Callable[[ServiceConfig], Service], *, name: str) -> None:
    """The entry point of every service's ``__main__``: refuse development secrets in production (production.py),
    config from env, logging, tracing, run until signalled."""
    try:
        production.check(name, os.environ)
    except (production.DevelopmentSecretRefused, ValueError) as exc:
        print(f"cove-{name}: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(EX_CONFIG) from None
    config = ServiceConfig.from_env(name)
    configure_logging(config.service, config.log_level)
    setup_tracing(config.service)
    service = build(config)
    tune_gc()
    run_loop(service.run_until_stopped())


GC_THRESHOLDS = (20_000, 50, 100)
"""The cyclic collector's thresholds in a service process (CPython's default is (700, 10, 10))."""


def tune_gc() -> None:
    """Collect garbage less often in a long-running service: what import and configuration left behind is moved
    out of the collector's sight (``gc.freeze``) and the youngest generation is collected every 20,000 net
    allocations instead of 700. A service allocates and drops many short-lived objects per request and event, most
    freed by reference counting; alternating benchmark runs measured 3-4 % less CPU per cluster create in the API
    and the scheduler. Memory held by reference cycles lives a little longer, bounded by the same thresholds."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop (libuv's event loop: a service spends about half its CPU in the event loop and
    socket I/O, which uvloop does in C), or on asyncio's own loop when ``COVE_EVENT_LOOP=asyncio``."""
    if os.environ.get("COVE_EVENT_LOOP", "uvloop") == "asyncio":
        asyncio.run(main)
    else:
        uvloop.run(main)
