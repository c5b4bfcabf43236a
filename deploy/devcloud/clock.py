"""Timestamps in the shapes OpenStack services print."""

from __future__ import annotations

from datetime import UTC, datetime


def now() -> datetime:
    return datetime.now(UTC)


def now_iso() -> str:
    """Nova/Neutron style: 2026-11-27T05:14:49Z."""
    return now().strftime("%Y-%m-%dT%H:%M:%SZ")


def now_iso_micro() -> str:
    """Keystone/Cinder style with microseconds: 2026-11-27T05:14:49.123456Z."""
    return now().strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
