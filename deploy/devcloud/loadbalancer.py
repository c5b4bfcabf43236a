"""Placeholder being written now; see docs/devcloud.md."""

from deploy.devcloud.web import Routes

routes = Routes("load-balancer")
