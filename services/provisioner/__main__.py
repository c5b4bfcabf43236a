"""cove-provisioner: builds and deletes clusters on the cloud; the authority on cluster state."""

from __future__ import annotations

from services.provisioner.service import build_service
from services.runtime.service import run


def main() -> None:
    run(build_service, name="provisioner")


if __name__ == "__main__":
    main()
