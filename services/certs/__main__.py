"""cove-certs: per-cluster certificate authorities and CSR signing."""

from __future__ import annotations

from services.certs.service import build_service
from services.runtime.service import run


def main() -> None:
    run(build_service, name="certs")


if __name__ == "__main__":
    main()
