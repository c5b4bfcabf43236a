"""CADF audit records of API writes, in the shape keystonemiddleware's audit middleware gives Magnum's (pycadf's
``Event``): one ``activity`` event per write the API answered, published on ``subjects.AUDIT_API`` in the stream
``COVE_AUDIT`` (outside ``COVE_EVENTS``: no projection reads them; they are for auditors and SIEMs).

keystonemiddleware emits two records per request (the request, outcome ``pending``, then the reply); Cove emits the
reply's, which carries the outcome and the HTTP status as its reason. Requests refused before a token is validated
(401) are not audited, as with keystonemiddleware, which sits behind auth_token.
"""

from __future__ import annotations

from typing import Literal

import msgspec

CADF_EVENT_TYPE_URI = "http://schemas.dmtf.org/cloud/audit/1.0/event"
INITIATOR_TYPE_URI = "service/security/account/user"
OBSERVER_TYPE_URI = "service/container-infra"
"""Magnum's catalog type: keystonemiddleware names the observer and targets after it."""

Action = Literal["create", "update", "delete"]
Outcome = Literal["success", "failure", "pending"]


class CadfHost(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    address: str | None = None
    agent: str | None = None


class CadfCredential(msgspec.Struct, frozen=True, kw_only=True):
    token: str
    """Always masked (``***``): the token never leaves the API."""
    identity_status: str = "Confirmed"


class CadfResource(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A CADF resource: the initiator (the Keystone user in its project), the target or the observer."""

    typeURI: str
    id: str
    name: str | None = None
    project_id: str | None = None
    host: CadfHost | None = None
    credential: CadfCredential | None = None


class CadfReason(msgspec.Struct, frozen=True, kw_only=True):
    reasonType: str = "HTTP"
    reasonCode: str


class CadfAttachment(msgspec.Struct, frozen=True, kw_only=True):
    typeURI: str
    name: str
    content: str


class CadfEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A CADF ``activity`` event (DMTF DSP0262; pycadf's ``Event`` attribute names): who (``initiator``) did what
    (``action``) to which resource (``target``), with which ``outcome``, as seen by the API (``observer``). The
    request id is an attachment named ``request_id``; ``requestPath`` is the path the client called."""

    typeURI: str = CADF_EVENT_TYPE_URI
    id: str
    eventType: Literal["activity"] = "activity"
    eventTime: str
    """pycadf's format: ``2026-01-31T12:00:00.000000+0000``."""
    action: Action
    outcome: Outcome
    reason: CadfReason
    initiator: CadfResource
    target: CadfResource
    observer: CadfResource
    requestPath: str
    attachments: list[CadfAttachment] = msgspec.field(default_factory=list)


AUDIT_TYPES: dict[str, type[msgspec.Struct]] = {"CadfEvent": CadfEvent}
"""The public audit records, documented in docs/events.md with a JSON Schema each (docs/schemas/)."""
