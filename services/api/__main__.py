"""``cove-api``: the Magnum v1 gateway, until SIGTERM."""

from __future__ import annotations

from services.runtime.service import Service, ServiceConfig, run


def _build(config: ServiceConfig) -> Service:
    from services.api.service import build_service

    svc, _ = build_service(config)
    return svc


def main() -> None:
    run(_build, name="api")


if __name__ == "__main__":
    main()
