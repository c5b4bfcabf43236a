"""cove-scheduler: quota admission of cluster create requests."""

from __future__ import annotations

from services.runtime.service import run
from services.scheduler.service import build_service


def main() -> None:
    run(build_service, name="scheduler")


if __name__ == "__main__":
    main()
