"""`cove-devcloud` / `python -m deploy.devcloud`: run the OpenStack emulator on one port."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys

import structlog
import uvloop
from aiohttp import web

from deploy.devcloud.app import build_app
from deploy.devcloud.clouds_yaml import write_clouds_yaml
from deploy.devcloud.config import DEFAULT_CONFIG, load_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="cove-devcloud", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8775, help="0 picks a free port")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="the cloud's YAML configuration")
    p.add_argument("--public-url", default=None, help="base of every href the cloud returns (default http://host:port)")
    p.add_argument("--clouds-yaml", default=None, help="write a clouds.yaml with an entry per configured user")
    p.add_argument("--time-factor", type=float, default=None, help="scale every delay of the timing model")
    p.add_argument("--magnum-url", default=None, help="add a container-infra endpoint (Cove's API) to the catalog")
    p.add_argument("--request-log", default=None,
                   help="append one line per request to this file: METHOD, the route's templated path, status")
    p.add_argument("--log-level", default="info")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(message)s")
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso"),
                    structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(args.log_level.upper())),
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    port = sock.getsockname()[1]
    public_url = args.public_url or f"http://{args.host}:{port}"
    overrides = {"timing": {"time_factor": args.time_factor}} if args.time_factor is not None else None
    config = load_config(args.config, overrides)
    app = build_app(config, public_url, args.magnum_url, args.request_log)
    if args.clouds_yaml:
        write_clouds_yaml(args.clouds_yaml, config, public_url)
    print(f"devcloud listening on {public_url}", flush=True)
    # uvloop as for Cove's services: the devcloud shares the machine with the stack it serves in tests and
    # benchmarks (COVE_EVENT_LOOP=asyncio for the standard library's loop).
    loop = asyncio.new_event_loop() if os.environ.get("COVE_EVENT_LOOP") == "asyncio" else uvloop.new_event_loop()
    web.run_app(app, sock=sock, print=None, access_log=None, handle_signals=True, loop=loop)


if __name__ == "__main__":
    main()
