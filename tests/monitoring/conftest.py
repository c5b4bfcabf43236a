"""Monitoring tests: the API in-process (tests/api's ``api`` fixture) against real NATS, PostgreSQL and the devcloud."""

from __future__ import annotations

from tests.api.conftest import api  # noqa: F401 - the fixture, shared with tests/api
