"""Magnum's microversions: ``OpenStack-API-Version: container-infra 1.x`` (min 1.1, max 1.14, none = 1.1)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.api.errors import MICROVERSION_HELP, ApiError

SERVICE_NAMES = ("container-infra", "container-infrastructure", "container-infrastructure-management")
HEADER = "OpenStack-API-Version"
MIN_VERSION = (1, 1)
MAX_VERSION = (1, 14)
DEFAULT_SERVICE = "container-infra"

_VERSION = re.compile(r"^(\d+)\.(\d+)$")


@dataclass(frozen=True, order=True)
class Microversion:
    major: int
    minor: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"

    def at_least(self, major: int, minor: int) -> bool:
        return (self.major, self.minor) >= (major, minor)


MIN = Microversion(*MIN_VERSION)
MAX = Microversion(*MAX_VERSION)


def unsupported(detail: str) -> ApiError:
    return ApiError(
        406,
        detail,
        extra={
            "code": "magnum.microversion-unsupported",
            "title": "Requested microversion is unsupported",
            "min_version": str(MIN),
            "max_version": str(MAX),
            "links": [{"rel": "help", "href": MICROVERSION_HELP}],
        },
    )


def parse(header: str | None) -> tuple[Microversion, str]:
    """The negotiated version and the service name to echo. Raises ``ApiError(406)`` when unacceptable.

    Several comma-separated entries may be sent; the one naming a Magnum service is used.
    """
    if header is None or not header.strip():
        return MIN, DEFAULT_SERVICE
    entries = [e.strip().split() for e in header.split(",") if e.strip()]
    ours = [e for e in entries if e and e[0].lower() in SERVICE_NAMES]
    if not ours:
        if any(len(e) == 2 for e in entries):
            # A header for other services only: as good as none for us.
            return MIN, DEFAULT_SERVICE
        raise unsupported(f"Invalid value for {HEADER} header: {header!r}.")
    entry = ours[0]
    if len(entry) != 2:
        raise unsupported(f"Invalid value for {HEADER} header: {header!r}.")
    service, value = entry[0].lower(), entry[1].lower()
    if value == "latest":
        return MAX, service
    m = _VERSION.match(value)
    if not m:
        raise unsupported(f"Invalid value for {HEADER} header: {header!r}.")
    version = Microversion(int(m.group(1)), int(m.group(2)))
    if not MIN <= version <= MAX:
        raise unsupported(
            f"Version {version} was requested but the minor version is not supported by this service. "
            f"The supported version range is: [{MIN}, {MAX}]."
        )
    return version, service


def response_headers(version: Microversion, service: str) -> dict[str, str]:
    return {
        "OpenStack-API-Minimum-Version": f"{service} {MIN}",
        "OpenStack-API-Maximum-Version": f"{service} {MAX}",
        HEADER: f"{service} {version}",
        "Vary": HEADER,
    }
