"""Placeholder being written now; see docs/devcloud.md."""

from deploy.devcloud.web import Routes

routes = Routes("compute")


def apply_server_fault(cloud, fault):  # type: ignore[no-untyped-def]
    raise NotImplementedError


def apply_zone_down(cloud, az):  # type: ignore[no-untyped-def]
    raise NotImplementedError
