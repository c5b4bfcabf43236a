"""The operators' ``cove`` subcommands, on cliff (the framework of the ``openstack`` client): ``--help`` on every
command, ``-f table|json|value|csv|yaml`` and ``-c COLUMN`` on lists and records, exit code 0 when all is well, 1 on
a failure or a difference, 2 on a usage error; progress bars on long work when stderr is a terminal.

Settings are the services' own: ``COVE_NATS_URL`` (default nats://127.0.0.1:4222) and ``COVE_DATABASE_URL``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO, TypeVar

import structlog
import uvloop
from cliff.app import App
from cliff.command import Command
from cliff.commandmanager import CommandManager
from cliff.lister import Lister
from cliff.show import ShowOne

from services.ops import dlq, events, status
from services.ops.connect import OpsError, Settings, bus_session, check_db
from services.ops.replay import Progress
from services.ops.replay import replay as replay_store
from services.ops.targets import SERVICES, target
from services.ops.verify import verify as verify_store

T = TypeVar("T")
DESCRIPTION = """Cove: Containers-as-a-Service for OpenStack. Operators' commands.

Settings: COVE_NATS_URL (default nats://127.0.0.1:4222), COVE_DATABASE_URL (replay, verify).
Exit codes: 0 ok, 1 failure or difference found, 2 usage error."""
LEGACY_HELP: dict[str, str] = {}
"""Subcommands served by deploy/local/__main__.py's own parser (``cove run``, ...), listed in ``cove --help``."""


def _run(coro: Awaitable[T]) -> T:
    """Run ``coro`` on uvloop, as the services run (services/runtime/service.py): replay spends most of its time
    in socket round trips to PostgreSQL, which uvloop makes cheaper (about a tenth more events per second)."""
    async def main() -> T:
        return await coro

    return uvloop.run(main())


@contextmanager
def progress_bar(description: str) -> Iterator[Progress | None]:
    """A rich progress bar on stderr when it is a terminal; nothing otherwise."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TimeRemainingColumn
    from rich.progress import Progress as Bar

    with Bar("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
             console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


class OpsCommand(Command):
    """A command that talks to NATS (and PostgreSQL): its errors are one line, exit 1."""

    def settings(self) -> Settings:
        return Settings.from_env()

    def nats(self, work: Callable[[Any], Awaitable[T]]) -> T:
        async def go() -> T:
            async with bus_session(self.settings()) as bus:
                return await work(bus)

        return _run(go())


class EventsTail(OpsCommand):
    """Print events as they are stored, filtered (Ctrl-C stops)."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("--project", help="only this project's events")
        parser.add_argument("--cluster", help="only events about this cluster")
        parser.add_argument("--type", action="append", default=[], metavar="TYPE",
                            help="only events of this type (repeat for several), e.g. ClusterCreateCompleted")
        parser.add_argument("--since", metavar="SEQ|TIME",
                            help="start at this stream sequence or ISO 8601 time (default: only new events)")
        parser.add_argument("--limit", type=int, default=None, help="stop after this many events")
        parser.add_argument("--no-follow", action="store_true", help="stop at the end of the stream")
        parser.add_argument("-f", "--format", choices=("table", "json", "value"), default="table",
                            help="table: aligned columns; json: one JSON object per line; value: space-separated")
        parser.add_argument("-c", "--column", action="append", default=[], dest="columns",
                            help=f"show this column (repeat); of {', '.join(events.COLUMNS)}, payload")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        columns = parsed_args.columns or ["seq", "time", "type", "project", "cluster", "user"]
        unknown = [c for c in columns if c not in (*events.COLUMNS, "payload")]
        if unknown:
            raise OpsError(f"unknown column(s): {', '.join(unknown)}")
        flt = events.Filter(parsed_args.project, parsed_args.cluster, frozenset(parsed_args.type))
        config = events.since_to_config(parsed_args.since)
        out = self.app.stdout
        widths = {"seq": 8, "time": 32, "type": 26, "producer": 11, "project": 34, "cluster": 36, "user": 20,
                  "correlation_id": 36, "causation_id": 36, "event_id": 36, "payload": 0}

        async def tail(bus: Any) -> int:
            if parsed_args.format == "table":
                out.write("  ".join(c.ljust(widths[c]) for c in columns).rstrip() + "\n")
                out.flush()
            shown = 0
            async for row in events.read(bus, flt, config, follow=not parsed_args.no_follow):
                named = dict(zip((*events.COLUMNS, "payload"), row.values(payload=True), strict=True))
                values = [named[c] for c in columns]
                if parsed_args.format == "json":
                    out.write(json.dumps(dict(zip(columns, values, strict=True)), default=str) + "\n")
                elif parsed_args.format == "value":
                    out.write(" ".join(_text(v) for v in values) + "\n")
                else:
                    out.write("  ".join(_text(v).ljust(widths[c]) for c, v in zip(columns, values, strict=True))
                              .rstrip() + "\n")
                out.flush()
                shown += 1
                if parsed_args.limit is not None and shown >= parsed_args.limit:
                    break
            return 0

        try:
            return self.nats(tail)
        except KeyboardInterrupt:
            return 0


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str) if isinstance(value, dict) else str(value)


class EventsShow(OpsCommand, Lister):
    """A cluster's whole history: every event about it, in stream order, with who caused it (the user, else the
    deciding service), its correlation and causation ids, producer and time. Exit 1 when there is none."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("cluster", metavar="CLUSTER", help="the cluster's uuid")
        parser.add_argument("--long", action="store_true", help="add each event's payload")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        rows = self.nats(lambda bus: events.history(bus, parsed_args.cluster))
        if not rows:
            raise OpsError(f"no events about cluster {parsed_args.cluster}")
        columns = (*events.COLUMNS, "payload") if parsed_args.long else events.COLUMNS
        return columns, [r.values(payload=parsed_args.long) for r in rows]


def _service_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("service", metavar="SERVICE", choices=SERVICES, help=f"one of {', '.join(SERVICES)}")


class Replay(OpsCommand, ShowOne):
    """Rebuild SERVICE's store from the event stream into a fresh schema and swap it in, while the service keeps
    running and the API keeps answering reads (docs/operations.md, "Replaying a store")."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        _service_arg(parser)
        parser.add_argument("--from", dest="start_seq", type=int, default=None, metavar="SEQ",
                            help="start the fresh store at this stream sequence (default 1)")
        parser.add_argument("--keep-old", action="store_true",
                            help="keep the replaced store as schema <service>_replaced (default: dropped)")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        settings = self.settings()
        tgt = target(parsed_args.service)
        _run(check_db(settings))
        with progress_bar(f"replaying {tgt.service}") as bar:
            stats = self.nats(lambda bus: replay_store(bus, settings, tgt, start_seq=parsed_args.start_seq,
                                                        keep_old=parsed_args.keep_old, progress=bar))
        return (
            ("service", "schema", "from_seq", "to_seq", "events_read", "events_applied", "events_skipped",
             "seconds", "events_per_second"),
            (stats.service, tgt.schema, stats.start_seq, stats.until_seq, stats.read, stats.applied,
             len(stats.skipped), round(stats.seconds, 2), round(stats.rate)),
        )


class Verify(OpsCommand, Lister):
    """Replay SERVICE's store into a scratch schema and compare every table with the live store; print every
    difference (table, primary key, column, live value, replayed value). Exit 1 on any difference."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        _service_arg(parser)
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        settings = self.settings()
        tgt = target(parsed_args.service)
        _run(check_db(settings))
        with progress_bar(f"verifying {tgt.service}") as bar:
            result = self.nats(lambda bus: verify_store(bus, settings, tgt, progress=bar))
        self.differences = len(result.differences)
        where = ", ".join(f"{k} at {v}" for k, v in result.checkpoints.items())
        verdict = f"{self.differences} difference(s)" if self.differences else "no difference"
        self.app.stderr.write(
            f"{tgt.service}: {result.tables} tables, {result.rows} rows compared ({where}): {verdict}\n"
        )
        return (
            ("table", "key", "column", "live", "replayed"),
            [(d.table, d.key, d.column, d.live, d.replayed) for d in result.differences],
        )

    def run(self, parsed_args: argparse.Namespace) -> int:
        self.differences = 0
        code = super().run(parsed_args)
        return code or (1 if self.differences else 0)


class DlqList(OpsCommand, Lister):
    """Dead-lettered messages, oldest first, with the reason each was given up on."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("--consumer", help="only this consumer's dead letters (e.g. scheduler)")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        letters = self.nats(lambda bus: dlq.list_letters(bus, parsed_args.consumer))
        return dlq.COLUMNS, [letter.values() for letter in letters]


def _letter_record(letter: dlq.DeadLetter) -> tuple[tuple[str, ...], tuple[Any, ...]]:
    try:
        event: Any = json.loads(letter.data)
    except ValueError:
        event = letter.data.decode("utf-8", "replace")
    return (*dlq.COLUMNS, "headers", "event"), (*letter.values(), letter.original_headers(), event)


class DlqShow(OpsCommand, ShowOne):
    """One dead letter: why, where from, and the original event."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("id", type=int, metavar="ID", help="the dead letter's id (dlq list)")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        return _letter_record(self.nats(lambda bus: dlq.get_letter(bus, parsed_args.id)))


class DlqRetry(OpsCommand, Lister):
    """Publish a dead letter's original event again to its subject (its consumer applies it once: consumers are
    idempotent on the event id), then remove the dead letter. ``--all --consumer C`` retries every one of C's."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("id", type=int, nargs="?", metavar="ID", help="the dead letter's id (dlq list)")
        parser.add_argument("--all", action="store_true", help="every dead letter of --consumer")
        parser.add_argument("--consumer", help="with --all: whose dead letters")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        if parsed_args.all == (parsed_args.id is not None) or (parsed_args.all and not parsed_args.consumer):
            self.app.stderr.write("cove dlq retry: give ID, or --all with --consumer\n")
            raise SystemExit(2)

        async def work(bus: Any) -> list[tuple[dlq.DeadLetter, int]]:
            if parsed_args.all:
                return await dlq.retry_all(bus, parsed_args.consumer)
            return [await dlq.retry(bus, parsed_args.id)]

        done = self.nats(work)
        return (("id", "consumer", "type", "subject", "republished_seq"),
                [(letter.id, letter.consumer, letter.event_type, letter.subject, seq) for letter, seq in done])


class DlqDrop(OpsCommand, ShowOne):
    """Delete a dead letter for good."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("id", type=int, metavar="ID", help="the dead letter's id (dlq list)")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        letter = self.nats(lambda bus: dlq.drop(bus, parsed_args.id))
        return ("id", "consumer", "type", "stream_seq", "dropped"), (
            letter.id, letter.consumer, letter.event_type, letter.stream_seq, True)


class ConsumersPrune(OpsCommand, Lister):
    """Delete the orphaned ``<consumer>_dropped`` consumers (on COVE_ADVISORIES) whose consumer is gone."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("--dry-run", action="store_true", help="list them, delete nothing")
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        orphans = self.nats(lambda bus: status.prune(bus, dry_run=parsed_args.dry_run))
        return ("name", "watched_stream", "watched_consumer", "deleted"), [
            (name, stream, consumer, not parsed_args.dry_run) for name, stream, consumer in orphans
        ]


class Services(OpsCommand, Lister):
    """Each service's heartbeat (state, host, pid, version, seconds since the last one) and each durable consumer's
    lag (pending: not yet delivered; ack_pending: delivered, not yet acknowledged)."""

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        rows = self.nats(status.services)
        return status.SERVICE_COLUMNS, [r.values() for r in rows]


COMMANDS: dict[str, type[Command]] = {
    "events tail": EventsTail,
    "events show": EventsShow,
    "replay": Replay,
    "verify": Verify,
    "dlq list": DlqList,
    "dlq show": DlqShow,
    "dlq retry": DlqRetry,
    "dlq drop": DlqDrop,
    "consumers prune": ConsumersPrune,
    "services": Services,
}


class CoveApp(App):
    NAME = "cove"

    def __init__(self, stdout: TextIO | None = None, stderr: TextIO | None = None) -> None:
        manager = CommandManager("cove.cli", convert_underscores=True)
        for name, cls in COMMANDS.items():
            manager.add_command(name, cls)
        legacy = "".join(f"\n  {name:<18}{text}" for name, text in LEGACY_HELP.items())
        super().__init__(
            description=DESCRIPTION + (f"\n\nAlso (cove <command> --help):{legacy}" if legacy else ""),
            version=_version(),
            command_manager=manager,
            deferred_help=True,
            stdout=stdout,
            stderr=stderr,
        )

    def build_option_parser(self, description: str | None, version: str | None,
                            argparse_kwargs: dict[str, Any] | None = None) -> argparse.ArgumentParser:
        kwargs = dict(argparse_kwargs or {})
        kwargs["formatter_class"] = argparse.RawDescriptionHelpFormatter
        kwargs["prog"] = "cove"
        return super().build_option_parser(description, version, kwargs)

    def configure_logging(self) -> None:
        super().configure_logging()
        # The services' structlog lines are for their logs, not for an operator's terminal: errors only, on
        # stderr, unless --debug or -v.
        level = logging.DEBUG if self.options.debug else logging.INFO if self.options.verbose_level > 1 else logging.ERROR
        structlog.configure(
            wrapper_class=structlog.make_filtering_bound_logger(level),
            logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cove")
    except PackageNotFoundError:
        return "0"


def main(argv: list[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    app = CoveApp(stdout, stderr)
    if not args:
        app.parser.print_help(sys.stderr)
        return 2
    try:
        return app.run(args)
    except SystemExit as exc:  # --help (None or 0), argparse's usage errors (2)
        return 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 2
