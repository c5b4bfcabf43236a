"""`cove run`: the whole Cove stack on this machine, for development and demos.

    cove run [--state-dir .cove] [--timeout 90] [--time-factor F] [--only api,scheduler] [--copies N]
             [--nats-nodes N]

Starts (unless COVE_NATS_URL / COVE_DATABASE_URL point elsewhere) a JetStream nats-server and an embedded
PostgreSQL under .cove/, the devcloud OpenStack emulator, and the services listed in deploy.local.stack.SERVICES;
waits until each answers /readyz, writes .cove/clouds.yaml and prints where everything listens. Ctrl-C or SIGTERM
stops everything (SIGTERM, then SIGKILL after a deadline). Logs: .cove/logs/<name>.log.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import FrameType

import structlog

from deploy.local.nats import NatsServerError
from deploy.local.postgres import PostgresError
from deploy.local.stack import SERVICES, LocalStack, StackError
from services.certs import rotation

log = structlog.get_logger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cove", description="Cove: Containers-as-a-Service for OpenStack.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="run the whole stack locally (NATS, PostgreSQL, devcloud, all services)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--state-dir", default=".cove", help="where data, logs and clouds.yaml go (default .cove)")
    run.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for every /readyz (default 90)")
    run.add_argument("--stop-timeout", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL")
    run.add_argument("--time-factor", type=float, default=None,
                     help="devcloud timing model speed-up, e.g. 0.1 makes servers boot 10x faster")
    run.add_argument("--copies", type=int, default=1,
                     help="copies of every service (default 1; make run-cluster: 2, the API's sharing its port)")
    run.add_argument("--nats-nodes", type=int, default=1,
                     help="nats-servers in one JetStream cluster, streams replicated on up to 3 (default 1; "
                          "make run-cluster: 3)")
    run.add_argument("--only", default=None,
                     help=f"comma-separated subset of services to start (all: {','.join(s.name for s in SERVICES)}); "
                          "--only '' starts only NATS, PostgreSQL and the devcloud")
    certs = commands.add_parser("certs", help="operate the certs service").add_subparsers(dest="certs", required=True)
    rotation.add_arguments(certs.add_parser(
        "rotate-kek", help="re-wrap every stored CA key under a new key-encryption key while certs keeps signing",
        description=rotation.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    return parser


def summary(stack: LocalStack) -> str:
    rows = [("process", "listens on", "log"), *stack.endpoints()]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["", "Cove is running:", ""]
    for row in rows:
        lines.append("  " + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    clouds = stack.state_dir / "clouds.yaml"
    lines += [
        "",
        "Use it:",
        f"  export OS_CLIENT_CONFIG_FILE={clouds}",
        "  openstack --os-cloud cove-demo coe cluster template list",
        "  openstack --os-cloud cove-demo coe cluster list",
        *([f"  . {stack.state_dir / 'nats.env'}   # the operators' NATS user, for cove events, cove dlq, ..."]
          if stack.nats_users else []),
        "",
        "Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    services = SERVICES
    if args.only is not None:
        wanted = {name.strip() for name in args.only.split(",") if name.strip()}
        unknown = wanted - {s.name for s in SERVICES}
        if unknown:
            print(f"cove run: unknown service(s): {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        services = tuple(s for s in SERVICES if s.name in wanted)

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal_received", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    stack = LocalStack(Path(args.state_dir), services=services, timeout=args.timeout,
                       stop_timeout=args.stop_timeout, time_factor=args.time_factor, stop_event=stop,
                       copies=args.copies, nats_nodes=args.nats_nodes)
    code = 0
    try:
        stack.start()
        print(summary(stack), flush=True)
        while not stop.wait(0.5):
            for child in stack.check_children():
                print(f"cove run: {child.name} exited with code {child.proc.returncode}; see {child.log_file}",
                      file=sys.stderr, flush=True)
    except StackError as exc:
        if not stop.is_set():
            print(f"\ncove run: {exc}\n", file=sys.stderr, flush=True)
            code = 1
    except (NatsServerError, PostgresError, OSError, subprocess.SubprocessError) as exc:  # a launcher failed
        print(f"\ncove run: {type(exc).__name__}: {exc}\n", file=sys.stderr, flush=True)
        code = 1
    finally:
        print("cove run: stopping", file=sys.stderr, flush=True)
        stack.stop()
        print("cove run: stopped", file=sys.stderr, flush=True)
    return code


def subcommands(parser: argparse.ArgumentParser) -> dict[str, str]:
    """The subcommands this parser serves, with their help."""
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        if isinstance(action, argparse._SubParsersAction):
            return {c.dest: c.help or "" for c in action._choices_actions}
    return {}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    served = subcommands(parser)
    if not argv or argv[0] not in served:
        # Everything else, and `cove --help`: the operators' commands (events, replay, verify, dlq, consumers,
        # services), on cliff like the openstack client (services/ops/cli.py), which lists these ones too.
        from services.ops import cli

        cli.LEGACY_HELP.update(served)
        return cli.main(argv)
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(args)
    if args.command == "certs":
        return rotation.main(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
