"""cove-accounting: usage of every server, volume, floating IP, load balancer and cluster, from lifecycle events."""

from __future__ import annotations

from services.accounting.service import build_service
from services.runtime.service import run


def main() -> None:
    run(build_service, name="accounting")


if __name__ == "__main__":
    main()
