"""The provisioner's hands on the cloud: openstacksdk (synchronous) behind a bounded thread pool.

Every ``ensure_*`` FINDS what exists (by the cluster's names, checking the ``cove_cluster_id`` metadata or
tag) before it creates anything, so it is safe to run twice and after a crash mid-create. The connection is the
Cove service user with the cluster's Keystone trust (impersonation): everything lands in the user's project.

Each ``ensure_*`` returns quickly with the current state and never waits for a long transition (a load balancer
or a volume being built): the caller polls by calling it again. Every single API request goes through
``ClusterCloud._api``, which retries transient answers (see ``RetryPolicy``) and turns the rest into a
``CloudError`` with a reason a user can act on.

What marks a resource as the cluster's: Neutron objects carry the tag ``cove-cluster-<uuid>`` and the
description ``Cove cluster <uuid>`` (set in the create call itself, so an object whose tagging a crash cut short
is still recognised); Octavia objects the tag (in the create call); Cinder volumes the metadata
``cove_cluster_id``; Nova servers the metadata; Nova server groups only their name (they have nothing else).
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import ipaddress
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import openstack.connection
import openstack.exceptions
import requests
import structlog
from keystoneauth1 import exceptions as ks_exceptions
from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3

from services.provisioner import model, observe
from services.provisioner.drivers.base import PortRule

log = structlog.get_logger(__name__)

T = TypeVar("T")

# 4xx answers that will not change by retrying: they end the operation with a reason the user can act on.
# (413 is Cinder's quota answer; a 413 WITH Retry-After is a rate limit and transient, see ``classify``.)
PERMANENT_STATUS = frozenset({400, 401, 403, 404, 413})

# Neutron names its quotas by resource key ("Quota exceeded for resources: ['floatingip']."): say it in words.
_NEUTRON_QUOTA_NAMES = {
    "floatingip": "floating IPs", "network": "networks", "subnet": "subnets", "port": "ports",
    "router": "routers", "security_group": "security groups", "security_group_rule": "security group rules",
}


SERVER_PAGE = 1000
"""Servers asked for per page when listing a cluster's (Nova's default ``max_limit``)."""


class CloudError(Exception):
    """A cloud call failed; ``permanent`` says retrying will not help. ``str()`` is a user-facing reason."""

    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


def _status_of(exc: BaseException) -> int | None:
    if isinstance(exc, openstack.exceptions.HttpException):
        return exc.status_code
    if isinstance(exc, ks_exceptions.HttpError):
        return exc.http_status
    if isinstance(exc, requests.HTTPError) and exc.response is not None:  # a raw request's raise_for_status()
        return exc.response.status_code
    return None


def _detail_of(exc: BaseException) -> str:
    if isinstance(exc, openstack.exceptions.HttpException):
        return str(exc.details or exc.message)
    if isinstance(exc, ks_exceptions.HttpError):
        return str(exc.message)
    return f"{exc.__class__.__name__}: {exc}"


def retry_after(exc: BaseException) -> float | None:
    """The answer's ``Retry-After`` in seconds (delta-seconds or an HTTP date), None when it has none."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    raw = headers.get("Retry-After") if headers is not None else None
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def is_quota(exc: BaseException) -> bool:
    detail = _detail_of(exc).lower()
    return "quota" in detail or "overquota" in detail or "limitexceeded" in detail


def classify(exc: BaseException, *, idempotent: bool = True) -> bool:
    """True when the answer is transient and the same request may be sent again:

    - 429 (rate limit); 413 only with ``Retry-After`` (without it, 413 is Cinder's quota answer: permanent);
    - 409 on an immutable / pending object (Octavia while a load balancer is ``PENDING_*``, Nova's task states);
      any other 409 (a duplicate, an object in use, Neutron's ``OverQuota``) is for the caller to judge;
    - 408, and 502/503/504 always; 500 and connection timeouts only for an ``idempotent`` request (a create that
      failed that way may have happened);
    - a refused connection, or a discovery that failed (the version document answered an error).

    400, 401, 403, 404 and quotas are permanent and never retried."""
    status = _status_of(exc)
    if status is None:
        if isinstance(exc, ks_exceptions.ConnectFailure):
            return True  # refused: the request never arrived
        if isinstance(exc, ks_exceptions.ConnectTimeout):
            return idempotent
        return isinstance(exc, ks_exceptions.DiscoveryFailure) and not isinstance(
            exc, ks_exceptions.VersionNotAvailable
        )
    if status == 429:
        return True
    if status == 413:
        return retry_after(exc) is not None
    if status == 409:
        detail = _detail_of(exc).lower()
        return not is_quota(exc) and ("immutable" in detail or "pending" in detail or "task_state" in detail)
    if status in (408, 502, 503, 504):
        return True
    if status >= 500:
        return idempotent
    return False


def _reason(what: str, exc: BaseException) -> str:
    detail = _detail_of(exc)
    if "Quota exceeded for resources" in detail:  # Neutron: name the resource in words and say what to do
        keys = [k for k in _NEUTRON_QUOTA_NAMES if f"'{k}'" in detail]
        if keys:
            names = ", ".join(_NEUTRON_QUOTA_NAMES[k] for k in keys)
            return (f"{what}: Quota exceeded for {names} (Neutron quota {', '.join(keys)} is used up); free some "
                    "or ask the cloud's administrator to raise the project's quota")
    return f"{what}: {detail}"


def explain(what: str, exc: BaseException) -> CloudError:
    """Turn an SDK/keystoneauth exception into a CloudError with a short reason."""
    if isinstance(exc, openstack.exceptions.NotFoundException):  # also find_*() misses, which have no status
        return CloudError(f"{what}: {exc.details or exc.message}", permanent=True)
    status = _status_of(exc)
    if status is not None:
        if is_quota(exc) and status in (403, 409, 413) and retry_after(exc) is None:
            return CloudError(_reason(what, exc), permanent=True)
        permanent = status in PERMANENT_STATUS and not classify(exc)
        return CloudError(_reason(what, exc), permanent=permanent)
    return CloudError(f"{what}: {exc.__class__.__name__}: {exc}", permanent=False)


@dataclass(frozen=True)
class RetryPolicy:
    """Back-off for transient answers (``classify``): at most ``attempts`` sends of one request; before send n+1
    a sleep of ``base * 2**(n-1)`` capped at ``cap`` seconds, with equal jitter (half fixed, half random), or the
    answer's ``Retry-After`` when that is longer. A ``Retry-After`` beyond ``max_retry_after`` ends the tries at
    once. After the last try the error is a non-permanent CloudError (the caller's next pass may succeed).
    The sleeps block one thread of the Cloud pool, which bounds the concurrency per cloud."""

    attempts: int = 5
    base: float = 0.25
    cap: float = 4.0
    max_retry_after: float = 10.0

    def delay(self, attempt: int, hinted: float | None = None) -> float:
        """The sleep before try ``attempt + 1`` (attempt counts from 1)."""
        ceiling = min(self.cap, self.base * 2 ** (attempt - 1))
        jittered = ceiling / 2 + random.uniform(0, ceiling / 2)
        return max(jittered, hinted or 0.0)


DEFAULT_RETRY = RetryPolicy()


# ------------------------------------------------------------------------------------------------ names and shapes


def role_security_group_name(prefix: str, role: str) -> str:
    """``<prefix>-master-sg`` / ``<prefix>-worker-sg``."""
    return f"{prefix}-{role}-sg"


def server_group_name(prefix: str) -> str:
    return f"{prefix}-masters"


def load_balancer_name(prefix: str) -> str:
    return f"{prefix}-api-lb"


def cluster_description(cluster_id: str) -> str:
    """The description every Neutron and Octavia object of the cluster is created with."""
    return f"Cove cluster {cluster_id}"


def _oldest(found: list[Any]) -> Any:
    """Of several objects a race made twice, the one every pass picks (the others go at teardown)."""
    return min(found, key=lambda o: (getattr(o, "created_at", None) or "", str(o.id)))


def _first_ipv4(port: Any) -> str | None:
    return next((str(f["ip_address"]) for f in port.fixed_ips or []
                 if ipaddress.ip_address(f["ip_address"]).version == 4), None)


def _owned(resource: Any, cluster_id: str) -> bool:
    """The object carries the cluster's tag, or was created with its description (before a crash cut tagging)."""
    tags = getattr(resource, "tags", None) or []
    description = getattr(resource, "description", None) or ""
    return model.cluster_tag(cluster_id) in tags or description.startswith(cluster_description(cluster_id))


@dataclass(frozen=True)
class PortRefs:
    id: str
    ip: str | None
    """The port's first IPv4 fixed address (None only if its subnet has no address left to give)."""


@dataclass(frozen=True)
class VolumeState:
    id: str
    status: str
    """Cinder's status: ``creating`` -> ``available`` (boot the server now) -> ``in-use``; ``error`` raises."""
    size_gb: int = 0
    name: str = ""
    created_at: datetime | None = None
    """When it began to exist: the create call's return when this call made it, else Cinder's ``created_at``."""


@dataclass(frozen=True)
class FloatingIpRef:
    """A floating IP ``ensure_floating_ip`` made or found."""

    id: str
    address: str
    created_at: datetime | None = None
    """The create call's return when the call made it, else Neutron's ``created_at``."""


@dataclass
class Seen:
    """For accounting: what a teardown call saw of the billed resources (volumes, floating IPs, load balancers)."""

    present: dict[str, str] = field(default_factory=dict)
    """Id -> kind (``volume``, ``floating_ip``, ``load_balancer``) of what the listings showed still there (a delete
    sent but not finished included)."""
    deleted: dict[str, datetime] = field(default_factory=dict)
    """Floating IP id -> when its (synchronous) delete returned."""
    deleting: dict[str, datetime] = field(default_factory=dict)
    """Volume id -> when Cinder accepted its (asynchronous) delete: when the call returned, or the listing's
    ``updated_at`` of one already deleting. Its end lies a moment after."""
    before_delete: Callable[[str, str], None] | None = None
    """Called (id, kind) in the call's thread just before a volume's or load balancer's delete is sent: the caller
    writes it down, so that a process killed right after the cloud accepted the delete leaves when it was sent."""

    def sending_delete(self, rid: str, kind: str) -> None:
        if self.before_delete is not None:
            try:
                self.before_delete(rid, kind)
            except Exception as exc:  # noqa: BLE001 - a note is a billing detail: the delete goes on
                log.warning("delete_intent_unnoted", resource_id=rid, kind=kind, error=repr(exc)[:200])


def cloud_time(value: object) -> datetime | None:
    """A cloud's ``created_at`` (ISO 8601, ``Z`` or an offset, with or without microseconds) as an aware datetime."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


CLOUD_ROUNDING = timedelta(seconds=0.5)
"""How far before a cloud's whole-second ``created`` the resource may have been made: Nova stores it in a DATETIME
column that MySQL rounds to the second (the devcloud, like a cloud on PostgreSQL, truncates instead)."""


def made_at(sent: datetime, returned: datetime, created: object = None) -> datetime:
    """When the cloud made a resource whose create call was sent at ``sent`` and answered at ``returned``: the
    middle of what the call and the cloud's own ``created`` (if given) both allow. A microsecond ``created`` is
    that time; a whole second ``s`` allows [s - 0.5 s, s + 1 s) (``CLOUD_ROUNDING``). Without the cloud's time a
    call answered late (a cloud that hangs, make chaos: 4 s) is billed from its middle, at most half its length
    off, instead of from the answer: the whole hang short."""
    lo, hi = sent, max(sent, returned)
    at = cloud_time(created)
    if at is not None:
        whole = at.microsecond == 0 and not (isinstance(created, str) and "." in created)
        window = (at - CLOUD_ROUNDING, at + timedelta(seconds=1)) if whole else (at, at)
        if window[0] <= hi and window[1] >= lo:  # else a clock apart from ours: the call alone
            lo, hi = max(lo, window[0]), min(hi, window[1])
    return lo + (hi - lo) / 2


@dataclass(frozen=True)
class LoadBalancerState:
    lb_id: str
    listener_id: str | None
    pool_id: str | None
    monitor_id: str | None
    vip_address: str | None
    vip_port_id: str | None
    provisioning_status: str
    """The load balancer's own provisioning status (``PENDING_CREATE``, ``PENDING_UPDATE``, ``ACTIVE``)."""
    ready: bool
    """The load balancer and every port's listener, pool and monitor exist and are ACTIVE, as asked."""
    pools: tuple[tuple[int, str], ...] = ()
    """(port, pool id) of every port's pool made so far, the API port's first."""
    created_at: datetime | None = None
    """For accounting: the create call's return when the call made it, else Octavia's ``created_at``."""
    name: str = ""


@dataclass(frozen=True)
class _RuleKey:
    """An ingress rule as Neutron compares them (0.0.0.0/0 and ::/0 are "any", as no prefix)."""

    ethertype: str
    protocol: str | None
    port_min: int | None
    port_max: int | None
    remote_ip_prefix: str | None
    remote_group_id: str | None


_PORTED = frozenset({"tcp", "udp", "sctp", "dccp", "udplite"})


def _rule_key(
    *, ethertype: str | None, protocol: str | None, port_min: int | None, port_max: int | None,
    remote_ip_prefix: str | None, remote_group_id: str | None,
) -> _RuleKey:
    proto = str(protocol).lower() if protocol is not None else None
    if proto == "any":
        proto = None
    pmin = int(port_min) if port_min is not None else None
    pmax = int(port_max) if port_max is not None else None
    if proto in _PORTED and pmin is not None and pmax is None:
        pmax = pmin
    prefix = None
    if remote_ip_prefix:
        net = ipaddress.ip_network(remote_ip_prefix, strict=False)
        ethertype = "IPv4" if net.version == 4 else "IPv6"
        prefix = None if net.prefixlen == 0 else str(net)
    return _RuleKey(ethertype or "IPv4", proto, pmin, pmax, prefix, remote_group_id or None)


def _normalized_cidrs(cidrs: Iterable[str]) -> list[str]:
    out = []
    for cidr in cidrs:
        try:
            out.append(str(ipaddress.ip_network(str(cidr).strip(), strict=False)))
        except ValueError:
            raise CloudError(f"The allowed CIDR {cidr!r} is not an IP network (e.g. 192.0.2.0/24)",
                             permanent=True) from None
    return sorted(dict.fromkeys(out))


@dataclass(frozen=True)
class CloudSettings:
    auth_url: str
    username: str = "cove"
    password: str = "cove-pass"
    user_domain_name: str = "Default"
    project_name: str = "service"
    """The service user's own project: its project-scoped token deletes trusts (it has the admin role there)."""
    project_domain_name: str = "Default"
    threads: int = 8

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> CloudSettings:
        e = dict(os.environ if env is None else env)
        auth_url = e.get("COVE_AUTH_URL") or e.get("COVE_CLOUD_AUTH_URL") or "http://127.0.0.1:8775/identity"
        return cls(
            auth_url=auth_url,
            username=e.get("COVE_SERVICE_USER", "cove"),
            password=e.get("COVE_SERVICE_PASSWORD", "cove-pass"),
            user_domain_name=e.get("COVE_SERVICE_USER_DOMAIN", "Default"),
            project_name=e.get("COVE_SERVICE_PROJECT", "service"),
            project_domain_name=e.get("COVE_SERVICE_PROJECT_DOMAIN", "Default"),
            threads=int(e.get("COVE_PROVISIONER_CLOUD_THREADS", "8")),
        )


@dataclass(frozen=True)
class Flavor:
    id: str
    name: str
    vcpus: int
    ram_mb: int
    disk_gb: int


@dataclass(frozen=True)
class NetworkRefs:
    network_id: str
    subnet_id: str | None
    router_id: str | None


class ClusterCloud:
    """Synchronous openstacksdk calls for one trust (one cluster). Call only from the Cloud thread pool.

    Every request is sent through ``_api``: transient answers are retried with back-off (``retry``), anything
    else becomes a CloudError at once. Each method is one idempotent step: it finds what exists before it
    creates anything, does at most what one pass needs, and returns the current state without waiting."""

    def __init__(self, conn: openstack.connection.Connection, *, retry: RetryPolicy = DEFAULT_RETRY) -> None:
        self.conn = conn
        self.retry = retry
        self._flavors: dict[str, Flavor] = {}
        self._images: dict[str, str] = {}

    # -------------------------------------------------------------------------------------- requests

    def _api(
        self,
        what: str,
        fn: Callable[[], T],
        *,
        idempotent: bool = True,
        passthrough: tuple[type[BaseException], ...] = (),
    ) -> T:
        """``fn()`` (ONE request, or a list materialised), retried while its answer is transient (``classify``,
        with ``RetryPolicy`` back-off). ``idempotent=False`` for a create: a 500 or a timeout is not retried, since
        the object may exist (the caller's next pass finds it). An exception of a ``passthrough`` type that is
        not transient reaches the caller as it is (e.g. NotFound on a delete); anything else is a CloudError
        whose reason starts with ``what``."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except CloudError:
                raise
            except Exception as exc:
                transient = classify(exc, idempotent=idempotent)
                if not transient and passthrough and isinstance(exc, passthrough):
                    raise
                if not transient:
                    raise explain(what, exc) from exc
                hinted = retry_after(exc)
                if attempt >= self.retry.attempts or (hinted or 0.0) > self.retry.max_retry_after:
                    err = explain(what, exc)
                    raise CloudError(f"{err.reason} (still failing after {attempt} tries)", permanent=False) from exc
                delay = self.retry.delay(attempt, hinted)
                log.info("cloud_call_retry", what=what, status=_status_of(exc), attempt=attempt,
                         delay=round(delay, 3), error=_detail_of(exc)[:200])
                time.sleep(delay)

    def _list(self, what: str, fn: Callable[[], Iterable[T]]) -> list[T]:
        return self._api(what, lambda: list(fn()))

    def _create(self, what: str, fn: Callable[[], T]) -> tuple[T, datetime]:
        """``fn()``, a create (``_api(idempotent=False)``), and when the cloud made what it answers (``made_at``:
        the middle of the call, narrowed by the answer's own ``created_at``)."""
        sent = datetime.now(UTC)
        made = self._api(what, fn, idempotent=False)
        return made, made_at(sent, datetime.now(UTC), getattr(made, "created_at", None))

    # -------------------------------------------------------------------------------------- lookups

    def flavor(self, name_or_id: str) -> Flavor:
        if name_or_id not in self._flavors:
            f = self._api(f"Flavor {name_or_id} not found",
                          lambda: self.conn.compute.find_flavor(name_or_id, ignore_missing=False))
            self._flavors[name_or_id] = Flavor(
                id=f.id, name=f.name, vcpus=int(f.vcpus or 0), ram_mb=int(f.ram or 0), disk_gb=int(f.disk or 0)
            )
        return self._flavors[name_or_id]

    def image(self, name_or_id: str) -> str:
        if name_or_id not in self._images:
            self._images[name_or_id] = self._api(
                f"Image {name_or_id} not found",
                lambda: self.conn.image.find_image(name_or_id, ignore_missing=False).id,
            )
        return self._images[name_or_id]

    # -------------------------------------------------------------------------------------- network

    def _one(self, items: Any) -> Any | None:
        found = list(items)
        return found[0] if found else None

    def find_network(self, name_or_id: str) -> str:
        return str(self._api(f"Network {name_or_id} not found",
                             lambda: self.conn.network.find_network(name_or_id, ignore_missing=False).id))

    def ensure_network(
        self,
        prefix: str,
        cluster_id: str,
        *,
        fixed_network: str | None,
        fixed_subnet: str | None,
        external_network: str | None,
        cidr: str,
        dns_nameserver: str | None,
    ) -> NetworkRefs:
        """The cluster's private network + subnet (+ router to the external network), unless the template names
        an existing fixed network/subnet, which are used as they are."""
        if fixed_subnet:
            fixed = self._api(f"Subnet {fixed_subnet} not found",
                              lambda: self.conn.network.find_subnet(fixed_subnet, ignore_missing=False))
            return NetworkRefs(network_id=fixed.network_id, subnet_id=fixed.id, router_id=None)
        if fixed_network:
            return NetworkRefs(network_id=self.find_network(fixed_network), subnet_id=None, router_id=None)
        tag = model.cluster_tag(cluster_id)
        what = f"Creating the cluster network {model.network_name(prefix)} failed"
        net = self._one(self._list(what, lambda: self.conn.network.networks(name=model.network_name(prefix))))
        if net is None:
            net = self._api(what, lambda: self.conn.network.create_network(
                name=model.network_name(prefix), description=cluster_description(cluster_id)
            ), idempotent=False)
            log.info("network_created", cluster_id=cluster_id, network_id=net.id)
            self._tag(net, tag)
        subnet: Any = self._one(self._list(
            what, lambda: self.conn.network.subnets(name=model.subnet_name(prefix), network_id=net.id)
        ))
        if subnet is None:
            subnet = self._api(what, lambda: self.conn.network.create_subnet(
                name=model.subnet_name(prefix), network_id=net.id, ip_version=4, cidr=cidr,
                dns_nameservers=[dns_nameserver] if dns_nameserver else [],
                description=cluster_description(cluster_id),
            ), idempotent=False)
            log.info("subnet_created", cluster_id=cluster_id, subnet_id=subnet.id)
            self._tag(subnet, tag)
        router_id = None
        if external_network:
            router_id = self._ensure_router(prefix, cluster_id, external_network, subnet.id, tag)
        return NetworkRefs(network_id=net.id, subnet_id=subnet.id, router_id=router_id)

    def _ensure_router(self, prefix: str, cluster_id: str, external: str, subnet_id: str, tag: str) -> str:
        ext_id = self.find_network(external)
        what = f"Creating the cluster router {model.router_name(prefix)} failed"
        router = self._one(self._list(what, lambda: self.conn.network.routers(name=model.router_name(prefix))))
        if router is None:
            router = self._api(what, lambda: self.conn.network.create_router(
                name=model.router_name(prefix), external_gateway_info={"network_id": ext_id},
                description=cluster_description(cluster_id),
            ), idempotent=False)
            log.info("router_created", cluster_id=cluster_id, router_id=router.id)
            self._tag(router, tag)
        attached = any(
            any(ip.get("subnet_id") == subnet_id for ip in (port.fixed_ips or []))
            for port in self._list(what, lambda: self.conn.network.ports(device_id=router.id))
        )
        if not attached:
            self._api(what, lambda: self.conn.network.add_interface_to_router(router, subnet=subnet_id))
        return str(router.id)

    def _tag(self, resource: Any, tag: str) -> None:
        try:
            self._api(f"Tagging {resource.id}", lambda: self.conn.network.set_tags(resource, [tag]))
        except CloudError as exc:  # tags help operators; names and descriptions are what we find by
            log.warning("tagging_failed", resource_id=resource.id, error=exc.reason)

    def _ensure_group(self, name: str, cluster_id: str) -> Any:
        """The security group ``name`` of the cluster (found by name, owned by tag/description), made if missing."""
        what = f"Creating the security group {name} failed"
        found = [g for g in self._list(what, lambda: self.conn.network.security_groups(name=name))
                 if _owned(g, cluster_id)]
        if found:
            return _oldest(found)
        sg = self._api(what, lambda: self.conn.network.create_security_group(
            name=name, description=cluster_description(cluster_id)
        ), idempotent=False)
        log.info("security_group_created", cluster_id=cluster_id, security_group_id=sg.id, name=name)
        self._tag(sg, model.cluster_tag(cluster_id))
        return sg

    def ensure_security_groups(
        self, prefix: str, cluster_id: str, rules: Mapping[str, list[PortRule]], allowed_cidrs: list[str]
    ) -> dict[str, str]:
        """One security group per role of ``rules`` (``<prefix>-master-sg``, ``<prefix>-worker-sg``), each
        holding exactly the ingress rules asked for, and returns ``{role: security group id}``.

        A rule with source ``"allowed"`` is made once per CIDR of ``allowed_cidrs`` (``0.0.0.0/0`` when the list
        is empty); one with source ``"cluster"`` once per group of the cluster (``remote_group_id``: every role's
        group, so masters and workers reach each other). Converges: missing rules are added, any other ingress
        rule is deleted (after the allow-list or the COE's ports changed); egress rules are left as Neutron made
        them. Synchronous (Neutron's API is): the groups are complete when it returns. An invalid CIDR is a
        permanent CloudError."""
        cidrs = _normalized_cidrs(allowed_cidrs) or ["0.0.0.0/0"]
        groups = {role: self._ensure_group(role_security_group_name(prefix, role), cluster_id) for role in rules}
        cluster_ids = sorted(str(g.id) for g in groups.values())
        for role, role_rules in rules.items():
            sg = groups[role]
            what = f"Updating the rules of security group {sg.name} failed"
            wanted: dict[_RuleKey, dict[str, Any]] = {}
            for rule in role_rules:
                sources: list[dict[str, Any]] = (
                    [{"remote_ip_prefix": c} for c in cidrs] if rule.source == "allowed"
                    else [{"remote_group_id": gid} for gid in cluster_ids]
                )
                for source in sources:
                    key = _rule_key(ethertype=None, protocol=rule.protocol, port_min=rule.port_min,
                                    port_max=rule.port_max, remote_ip_prefix=source.get("remote_ip_prefix"),
                                    remote_group_id=source.get("remote_group_id"))
                    body = {"protocol": key.protocol, "ethertype": key.ethertype, "description": rule.description,
                            **source}
                    if key.port_min is not None:
                        body["port_range_min"], body["port_range_max"] = key.port_min, key.port_max
                    wanted.setdefault(key, body)
            current = self._api(what, lambda sg=sg: self.conn.network.get_security_group(sg.id))  # type: ignore[misc]
            have: dict[_RuleKey, list[str]] = {}
            for r in current.security_group_rules or []:
                if r.get("direction") != "ingress":
                    continue
                key = _rule_key(ethertype=r.get("ethertype"), protocol=r.get("protocol"),
                                port_min=r.get("port_range_min"), port_max=r.get("port_range_max"),
                                remote_ip_prefix=r.get("remote_ip_prefix"), remote_group_id=r.get("remote_group_id"))
                have.setdefault(key, []).append(str(r["id"]))
            for key, ids in have.items():
                keep = ids[:1] if key in wanted else []
                for rule_id in ids[len(keep):]:
                    self._api(what, lambda rule_id=rule_id: self.conn.network.delete_security_group_rule(  # type: ignore[misc]
                        rule_id, ignore_missing=True))
                    log.info("security_group_rule_deleted", cluster_id=cluster_id, security_group=sg.name,
                             rule_id=rule_id)
            missing = [{"security_group_id": sg.id, "direction": "ingress", **body}
                       for key, body in wanted.items() if key not in have]
            if not missing:
                continue
            try:  # one bulk request for the group's rules (a new cluster's two groups: two requests, not thirty)
                self._api(what, lambda missing=missing: list(  # type: ignore[misc]
                    self.conn.network.create_security_group_rules(missing)),
                    passthrough=(openstack.exceptions.ConflictException,))
                continue
            except openstack.exceptions.ConflictException as exc:
                if is_quota(exc):
                    raise explain(what, exc) from exc
                # some exist already (a pass cut short): Neutron's bulk create is all or nothing, so one by one
            for body in missing:
                try:
                    self._api(what, lambda body=body: self.conn.network.create_security_group_rule(  # type: ignore[misc]
                        **body), passthrough=(openstack.exceptions.ConflictException,))
                except openstack.exceptions.ConflictException as exc:
                    if is_quota(exc):
                        raise explain(what, exc) from exc
                    # SecurityGroupRuleExists: another pass made it meanwhile, which is what we wanted
        return {role: str(g.id) for role, g in groups.items()}

    def ensure_port(
        self,
        prefix: str,
        cluster_id: str,
        name: str,
        *,
        network_id: str,
        subnet_id: str | None,
        security_group_ids: list[str],
    ) -> PortRefs:
        """A Neutron port for a node, made before its server boots so that its fixed IP is known when the user
        data is rendered (the first master's IP is the API address of a cluster without a load balancer).

        ``name`` is the port's name, conventionally the node's name (``model.node_name``); a name that does not
        start with ``<prefix>-`` gets that prefix. Found again by that name and the cluster's tag/description;
        an existing port's security groups are set to ``security_group_ids`` if they differ. The address comes
        from ``subnet_id`` when given, else from any subnet of ``network_id``. Synchronous: the IP is final.
        Boot the server with ``create_server(port_id=...)``; the port outlives the server (Neutron keeps ports
        it did not make), so ``delete_cluster_resources`` deletes it."""
        port_name = name if name.startswith(f"{prefix}-") else f"{prefix}-{name}"
        what = f"Creating the port {port_name} failed"
        found = [p for p in self._list(what, lambda: self.conn.network.ports(name=port_name))
                 if _owned(p, cluster_id)]
        if found:
            port = _oldest(found)
            if set(port.security_group_ids or []) != set(security_group_ids):
                port = self._api(what, lambda: self.conn.network.update_port(
                    port, security_group_ids=list(security_group_ids)))
        else:
            attrs: dict[str, Any] = {
                "name": port_name, "network_id": network_id, "security_group_ids": list(security_group_ids),
                "description": cluster_description(cluster_id),
            }
            if subnet_id:
                attrs["fixed_ips"] = [{"subnet_id": subnet_id}]
            port = self._api(what, lambda: self.conn.network.create_port(**attrs), idempotent=False)
            log.info("port_created", cluster_id=cluster_id, port_id=port.id, name=port_name)
            self._tag(port, model.cluster_tag(cluster_id))
        return PortRefs(id=str(port.id), ip=_first_ipv4(port))

    def ensure_floating_ip(
        self, prefix: str, cluster_id: str, *, external_network: str, port_id: str, name: str
    ) -> FloatingIpRef:
        """A floating IP from ``external_network`` (name or id) associated to ``port_id``; returns its id, address
        and when it was made (for accounting).

        Floating IPs have no name: it is found again by its description ``Cove cluster <uuid>: <name>`` (and
        the cluster's tag), and re-associated if it points elsewhere. Synchronous. The port's subnet must be
        routed to the external network (``ensure_network(external_network=...)``), else a permanent CloudError
        says so; an exhausted floating IP quota is permanent too."""
        description = f"{cluster_description(cluster_id)}: {name}"
        what = f"Allocating the floating IP {name} of {prefix} failed"
        found = [f for f in self._list(what, lambda: self.conn.network.ips(description=description))
                 if _owned(f, cluster_id)]
        if found:
            fip = _oldest(found)
            if fip.port_id != port_id:
                fip = self._api(what, lambda: self.conn.network.update_ip(fip, port_id=port_id))
                log.info("floating_ip_associated", cluster_id=cluster_id, floating_ip_id=fip.id, port_id=port_id)
            return FloatingIpRef(str(fip.id), str(fip.floating_ip_address), cloud_time(fip.created_at))
        ext_id = self.find_network(external_network)
        fip, made = self._create(what, lambda: self.conn.network.create_ip(
            floating_network_id=ext_id, port_id=port_id, description=description
        ))
        log.info("floating_ip_created", cluster_id=cluster_id, floating_ip_id=fip.id, port_id=port_id)
        self._tag(fip, model.cluster_tag(cluster_id))
        return FloatingIpRef(str(fip.id), str(fip.floating_ip_address), made)

    # -------------------------------------------------------------------------------------- load balancer

    def _lb_failed(self, kind: str, obj: Any) -> None:
        if (obj.provisioning_status or "").upper() == "ERROR":
            raise CloudError(
                f"The cluster's API load balancer failed: its {kind} {obj.name or obj.id} went to ERROR in Octavia "
                "(it could not be provisioned); the load balancer must be deleted and made again", permanent=True)

    def _find_lb(self, prefix: str, cluster_id: str) -> Any | None:
        name = load_balancer_name(prefix)
        found = [lb for lb in self._list(f"Listing the load balancer {name} failed",
                                         lambda: self.conn.load_balancer.load_balancers(name=name))
                 if _owned(lb, cluster_id)]
        return _oldest(found) if found else None

    def ensure_load_balancer(
        self, prefix: str, cluster_id: str, *, subnet_id: str, api_port: int, allowed_cidrs: list[str],
        extra_ports: Sequence[int] = (), subnet_cidr: str | None = None,
    ) -> LoadBalancerState:
        """The cluster's API load balancer (``<prefix>-api-lb``): a VIP on ``subnet_id``, and for ``api_port`` and
        each of ``extra_ports`` (what the COE's driver forwards besides its API, e.g. Swarm's 2377) a TCP listener,
        a TCP ROUND_ROBIN pool and a TCP health monitor, all tagged with the cluster. The API port's listener takes
        Octavia's ``allowed_cidrs`` = ``allowed_cidrs`` (none = from anywhere); an extra port's listener is for the
        nodes as well, so its allow-list adds ``subnet_cidr`` when there is one.

        Octavia refuses every write while the load balancer is ``PENDING_*``, so each call makes at most ONE
        write (create the load balancer, or a listener, a pool or a monitor, or update a listener's CIDRs) and
        returns. Call it again until ``ready``; meanwhile the state carries the ids found so far, the VIP (known
        from the first call) and the load balancer's ``provisioning_status``. An object in ERROR is a permanent
        CloudError. The members are ``ensure_lb_members``' business. Objects are found by their names
        (``<prefix>-api-lb``, ``-api-listener``, ``-api-pool``, ``-api-monitor``, with ``-<port>`` appended for
        an extra port) and the cluster's tag; a listener found on another port than asked is kept (ports do not
        change after create)."""
        tag = model.cluster_tag(cluster_id)
        description = cluster_description(cluster_id)
        lbs = self.conn.load_balancer
        name = load_balancer_name(prefix)
        what = f"Creating the load balancer {name} failed"
        lb = self._find_lb(prefix, cluster_id)
        if lb is None:
            new, made = self._create(what, lambda: lbs.create_load_balancer(
                name=name, vip_subnet_id=subnet_id, description=description, tags=[tag]))
            log.info("load_balancer_created", cluster_id=cluster_id, lb_id=new.id)
            return LoadBalancerState(new.id, None, None, None, new.vip_address, new.vip_port_id,
                                     new.provisioning_status or "PENDING_CREATE", False, created_at=made, name=name)
        self._lb_failed("load balancer", lb)
        allowed = _normalized_cidrs(allowed_cidrs)
        ports = [(api_port, "", allowed)] + [
            (p, f"-{p}", _normalized_cidrs([*allowed, subnet_cidr]) if allowed and subnet_cidr else allowed)
            for p in extra_ports if p != api_port
        ]
        found = [self._lb_port_objects(prefix, cluster_id, lb.id, suffix) for _, suffix, _ in ports]
        for objects in found:
            for kind, child in zip(("listener", "pool", "health monitor"), objects, strict=True):
                if child is not None:
                    self._lb_failed(kind, child)

        def state(ready: bool = False) -> LoadBalancerState:
            listener, pool, monitor = found[0]
            return LoadBalancerState(
                lb.id, listener.id if listener else None, pool.id if pool else None, monitor.id if monitor else None,
                lb.vip_address, lb.vip_port_id, lb.provisioning_status or "", ready,
                pools=tuple((port, objs[1].id) for (port, _, _), objs in zip(ports, found, strict=True) if objs[1]),
                created_at=cloud_time(lb.created_at), name=name,
            )

        if lb.provisioning_status != "ACTIVE":
            return state()
        for i, ((port, suffix, cidrs), (listener, pool, monitor)) in enumerate(zip(ports, found, strict=True)):
            if listener is None:
                created = self._api(what, lambda port=port, suffix=suffix, cidrs=cidrs: lbs.create_listener(  # type: ignore[misc]
                    name=f"{prefix}-api-listener{suffix}", loadbalancer_id=lb.id, protocol="TCP",
                    protocol_port=port, allowed_cidrs=cidrs or None, description=description, tags=[tag]),
                    idempotent=False)
                log.info("lb_listener_created", cluster_id=cluster_id, listener_id=created.id, port=port)
                found[i] = (created, None, None)
                lb.provisioning_status = "PENDING_UPDATE"
                return state()
            if _normalized_cidrs(listener.allowed_cidrs or []) != cidrs:
                updated = self._api(what, lambda listener=listener, cidrs=cidrs: lbs.update_listener(  # type: ignore[misc]
                    listener, allowed_cidrs=cidrs or None))
                log.info("lb_listener_cidrs_updated", cluster_id=cluster_id, listener_id=updated.id, cidrs=cidrs)
                found[i] = (updated, pool, monitor)
                lb.provisioning_status = "PENDING_UPDATE"
                return state()
            if pool is None:
                new_pool = self._api(what, lambda suffix=suffix, listener=listener: lbs.create_pool(  # type: ignore[misc]
                    name=f"{prefix}-api-pool{suffix}", listener_id=listener.id, protocol="TCP",
                    lb_algorithm="ROUND_ROBIN", description=description, tags=[tag]), idempotent=False)
                log.info("lb_pool_created", cluster_id=cluster_id, pool_id=new_pool.id, port=port)
                found[i] = (listener, new_pool, None)
                lb.provisioning_status = "PENDING_UPDATE"
                return state()
            if monitor is None:
                new_monitor = self._api(what, lambda suffix=suffix, pool=pool: lbs.create_health_monitor(  # type: ignore[misc]
                    name=f"{prefix}-api-monitor{suffix}", pool_id=pool.id, type="TCP", delay=10, timeout=5,
                    max_retries=3, tags=[tag]), idempotent=False)
                log.info("lb_monitor_created", cluster_id=cluster_id, monitor_id=new_monitor.id, port=port)
                found[i] = (listener, pool, new_monitor)
                lb.provisioning_status = "PENDING_UPDATE"
                return state()
        ready = all((c.provisioning_status or "") == "ACTIVE" for objs in found for c in objs if c is not None)
        return state(ready)

    def _lb_port_objects(self, prefix: str, cluster_id: str, lb_id: str, suffix: str) -> tuple[Any, Any, Any]:
        """The listener, pool and monitor of one of the load balancer's ports (``suffix`` "" for the API's, else
        ``-<port>``), each None until made."""
        lbs = self.conn.load_balancer
        what = f"Reading the load balancer {load_balancer_name(prefix)} failed"
        listener = next((
            li for li in self._list(what, lambda: lbs.listeners(name=f"{prefix}-api-listener{suffix}"))
            if _owned(li, cluster_id) and any(ref.get("id") == lb_id for ref in li.load_balancers or [])
        ), None)
        pool = None
        if listener is not None:
            pool = next((
                p for p in self._list(what, lambda: lbs.pools(name=f"{prefix}-api-pool{suffix}"))
                if _owned(p, cluster_id) and any(ref.get("id") == listener.id for ref in p.listeners or [])
            ), None)
        monitor = None
        if pool is not None:
            monitor = next((
                m for m in self._list(what, lambda: lbs.health_monitors(name=f"{prefix}-api-monitor{suffix}"))
                if _owned(m, cluster_id) and any(ref.get("id") == pool.id for ref in m.pools or [])
            ), None)
        return listener, pool, monitor

    def ensure_lb_members(self, state: LoadBalancerState, members: Mapping[str, str], port: int) -> bool:
        """Make every pool of ``state`` (from a ready ``ensure_load_balancer``) hold exactly ``members`` (name ->
        fixed IP), the API's pool on ``port`` and each extra port's pool on its own port. One write per call
        (Octavia's immutability again): deletes a member not wanted, else adds a missing one, and returns False;
        True once every pool holds exactly those members and the load balancer and every member are ACTIVE. False
        too while the load balancer is PENDING_*; ERROR raises a permanent CloudError."""
        if state.pool_id is None:
            raise CloudError("The cluster's API load balancer has no pool yet: ensure_load_balancer first",
                             permanent=False)
        lbs = self.conn.load_balancer
        what = "Updating the members of the cluster's API load balancer failed"
        lb = self._api(what, lambda: lbs.get_load_balancer(state.lb_id))
        self._lb_failed("load balancer", lb)
        pools = [(state.pool_id, int(port))] + [(pid, p) for p, pid in state.pools if pid != state.pool_id]
        have = {pid: self._list(what, lambda pid=pid: lbs.members(pid)) for pid, _ in pools}  # type: ignore[misc]
        for member in (m for ms in have.values() for m in ms):
            self._lb_failed("member", member)
        if lb.provisioning_status != "ACTIVE":
            return False
        tag = next((t for t in lb.tags or [] if t.startswith("cove-cluster-")), None)
        for pool_id, member_port in pools:
            wanted = {(ip, member_port): name for name, ip in members.items()}
            for member in have[pool_id]:
                if (member.address, member.protocol_port) not in wanted:
                    self._api(what, lambda member=member, pool_id=pool_id: lbs.delete_member(  # type: ignore[misc]
                        member, pool_id, ignore_missing=True))
                    log.info("lb_member_deleted", lb_id=state.lb_id, address=member.address, port=member_port)
                    return False
            present = {(m.address, m.protocol_port) for m in have[pool_id]}
            for (ip, p), name in sorted(wanted.items()):
                if (ip, p) not in present:
                    self._api(what, lambda pool_id=pool_id, name=name, ip=ip, p=p: lbs.create_member(  # type: ignore[misc]
                        pool_id, name=name, address=ip, protocol_port=p,
                        tags=[tag] if tag else []), idempotent=False)
                    log.info("lb_member_created", lb_id=state.lb_id, address=ip, name=name, port=p)
                    return False
        return all((m.provisioning_status or "") == "ACTIVE" for ms in have.values() for m in ms)

    # -------------------------------------------------------------------------------------- compute extras

    def ensure_server_group(self, prefix: str, cluster_id: str, policy: str = "anti-affinity") -> str:
        """The Nova server group of the masters (``<prefix>-masters``), found by name (server groups carry
        nothing else); returns its id, to boot the masters with ``create_server(server_group=...)``.

        ``anti-affinity`` is a hard rule: a master that finds no hypervisor without another master of the group
        goes to ERROR ("No valid host was found"), and the devcloud enforces it that way at placement (first
        fit over the zone's hypervisors, skipping those that hold a member). Choose ``soft-anti-affinity`` when
        the masters may outnumber the hypervisors they can land on (a small cloud or test configuration with
        fewer hosts than masters, an availability zone with few hosts, hosts full), or when a replacement master
        must boot while the one it replaces still holds a host: soft spreads when it can and packs when it must.
        The policy of an existing group cannot change (Nova), so a group found is returned as it is."""
        if policy not in ("affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity"):
            raise CloudError(f"Unknown server group policy {policy!r}", permanent=True)
        name = server_group_name(prefix)
        what = f"Creating the server group {name} failed"
        found = [g for g in self._list(what, lambda: self.conn.compute.server_groups()) if g.name == name]
        if found:
            group = min(found, key=lambda g: str(g.id))
            if group.policy and group.policy != policy:
                log.warning("server_group_policy_differs", cluster_id=cluster_id, group=name, policy=group.policy,
                            wanted=policy)
            return str(group.id)
        group = self._api(what, lambda: self.conn.compute.create_server_group(name=name, policy=policy),
                          idempotent=False)
        log.info("server_group_created", cluster_id=cluster_id, server_group_id=group.id, policy=policy)
        return str(group.id)

    def ensure_volume(
        self, prefix: str, cluster_id: str, name: str, *, size_gb: int, availability_zone: str | None = None
    ) -> VolumeState:
        """A Cinder volume ``name`` (a name not starting with ``<prefix>-`` gets that prefix) with the metadata
        ``cove_cluster_id``, found again by name and metadata. Returns at once with its status: ``creating``
        while Cinder builds it; boot the server with ``create_server(volume_ids=[...])`` once it is
        ``available`` (it is then ``in-use``, attached to the server). A volume in ``error`` is a permanent
        CloudError; so is an exhausted volume or gigabyte quota. The size of an existing volume is not changed."""
        vol_name = name if name.startswith(f"{prefix}-") else f"{prefix}-{name}"
        what = f"Creating the volume {vol_name} failed"
        found = [v for v in self._list(what, lambda: self.conn.block_storage.volumes(details=True, name=vol_name))
                 if (v.metadata or {}).get("cove_cluster_id") == cluster_id]
        made: datetime | None = None
        if found:
            vol = _oldest(found)
        else:
            attrs: dict[str, Any] = {
                "name": vol_name, "size": int(size_gb), "description": cluster_description(cluster_id),
                "metadata": {"cove_cluster_id": cluster_id},
            }
            if availability_zone:
                attrs["availability_zone"] = availability_zone
            vol, made = self._create(what, lambda: self.conn.block_storage.create_volume(**attrs))
            log.info("volume_created", cluster_id=cluster_id, volume_id=vol.id, size_gb=size_gb)
        status = (vol.status or "creating").lower()
        if status.startswith("error"):
            raise CloudError(f"The volume {vol_name} ({vol.id}) went to {status} in Cinder", permanent=True)
        return VolumeState(id=str(vol.id), status=status, size_gb=int(vol.size or size_gb), name=vol_name,
                           created_at=made or cloud_time(vol.created_at))

    # -------------------------------------------------------------------------------------- servers

    def list_servers(self, prefix: str, cluster_id: str) -> list[model.ServerView]:
        """ONE list call (pages of up to 1,000): the cluster's servers (name prefix, then the cove_cluster_id
        metadata). Read as plain JSON: at a thousand servers, building openstacksdk's Server objects cost more than
        the HTTP call itself, on every pass of a cluster that is being built."""

        def fetch() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = []
            url: str | None = "/servers/detail"
            params: dict[str, Any] | None = {"name": model.server_name_filter(prefix), "limit": SERVER_PAGE}
            while url:
                response = self.conn.compute.get(url, params=params)
                # an error answer (the SDK does not raise it here) is no empty listing: every node would look gone
                openstack.exceptions.raise_from_response(response)
                body = response.json()
                found.extend(body.get("servers") or [])
                url = next((link.get("href") for link in body.get("servers_links") or []
                            if link.get("rel") == "next"), None)
                params = None  # the next link carries them
            return found

        views = [
            model.ServerView(
                id=s["id"], name=s.get("name") or "", status=(s.get("status") or "").upper(),
                metadata=dict(s.get("metadata") or {}),
                fault=(s.get("fault") or {}).get("message") if isinstance(s.get("fault"), dict) else None,
                addresses=model.addresses_of(s.get("addresses")),
                floating_ip=model.floating_address_of(s.get("addresses")),
            )
            for s in self._api("Listing the cluster's servers failed", fetch)
        ]
        return model.owned_servers(views, cluster_id)

    def create_server(
        self,
        *,
        name: str,
        flavor_id: str,
        image_id: str,
        network_id: str | None = None,
        key_name: str | None,
        metadata: dict[str, str],
        user_data: str,
        port_id: str | None = None,
        security_group_ids: list[str] | None = None,
        volume_ids: list[str] | None = None,
        server_group: str | None = None,
        availability_zone: str | None = None,
    ) -> str:
        """Send the server create (returns its id at once; the server is in BUILD).

        Its NIC is ``port_id`` when given (a port from ``ensure_port``, which carries its own security groups:
        ``network_id`` and the groups are then not sent), else a new port on ``network_id`` in the groups
        ``security_group_ids`` (ids, e.g. from ``ensure_security_groups``);
        Nova deletes that port with the server.
        ``volume_ids`` (each ``available``) are attached before boot (block_device_mapping_v2: source and
        destination volume, boot_index -1, delete_on_termination False: the volume outlives the server and
        ``delete_cluster_resources`` deletes it), in the order given (/dev/vdb, /dev/vdc...). ``server_group``
        (an id from ``ensure_server_group``) is sent as the scheduler hint ``group``; ``availability_zone``
        pins the zone. Not idempotent: find the server by name (``list_servers``) before calling again."""
        if not port_id and not network_id:
            raise CloudError(f"Creating server {name} failed: it needs a network or a port", permanent=True)
        kwargs: dict[str, Any] = {
            "name": name, "flavor_id": flavor_id, "image_id": image_id,
            "networks": [{"port": port_id}] if port_id else [{"uuid": network_id}], "metadata": metadata,
            "user_data": base64.b64encode(user_data.encode()).decode(),
        }
        groups = list(security_group_ids or [])
        if groups and not port_id:
            kwargs["security_groups"] = [{"name": g} for g in dict.fromkeys(groups)]  # Nova takes names or ids
        if key_name:
            kwargs["key_name"] = key_name
        if volume_ids:
            kwargs["block_device_mapping"] = [
                {"uuid": image_id, "source_type": "image", "destination_type": "local", "boot_index": 0,
                 "delete_on_termination": True},
                *({"uuid": vid, "source_type": "volume", "destination_type": "volume", "boot_index": -1,
                   "delete_on_termination": False} for vid in volume_ids),
            ]
        if server_group:
            kwargs["scheduler_hints"] = {"group": server_group}
        if availability_zone:
            kwargs["availability_zone"] = availability_zone
        server = self._api(f"Creating server {name} failed", lambda: self.conn.compute.create_server(**kwargs),
                           idempotent=False)
        log.info("server_create_sent", server=name, server_id=server.id)
        return str(server.id)

    def server_port(self, server_id: str) -> PortRefs | None:
        """The server's first port (Neutron ``ports?device_id=``) with its first IPv4 address, e.g. to give it a
        floating IP; None while it has none (Nova binds it during BUILD)."""
        ports = self._list(f"Listing the ports of server {server_id} failed",
                           lambda: self.conn.network.ports(device_id=server_id))
        if not ports:
            return None
        port = _oldest(ports)
        return PortRefs(id=str(port.id), ip=_first_ipv4(port))

    def delete_server(self, server_id: str) -> None:
        self._api(f"Deleting server {server_id} failed",
                  lambda: self.conn.compute.delete_server(server_id, ignore_missing=True))

    # -------------------------------------------------------------------------------------- teardown

    def delete_cluster_resources(self, prefix: str, cluster_id: str, seen: Seen | None = None) -> bool:
        """Delete every cloud resource of the cluster but its servers, in order, as far as one pass can go; True
        when nothing is left, False when something is still going away or still in use (call again).

        Order: the API load balancer (cascade; waits out PENDING_*), floating IPs, volumes (only those no server
        holds: detaching is the server delete's business, so delete the servers first), the cluster's ports
        (those still bound to a server are left for its delete), the masters' server group, the router
        (interfaces, gateway), subnet and network, and the security groups (per role and the old single
        ``<prefix>-sg``). Tolerant of anything already gone and of a create that stopped half-way; an object in
        use (Neutron's 409) is left for the next pass. A fixed network/subnet named by the template is never
        touched (it carries neither the cluster's names nor its tag). Raises CloudError only for a failure a
        further pass would not fix by itself (or transient answers that outlasted the back-off). ``seen`` is told
        which load balancers, floating IPs and volumes were still there and which floating IPs went."""
        tag = model.cluster_tag(cluster_id)
        what = f"Deleting the cloud resources of {prefix} failed"
        left = False
        seen = seen if seen is not None else Seen()
        net = self.conn.network
        lbs = self.conn.load_balancer

        def gone(fn: Callable[[], Any], label: str) -> bool:
            """Run one delete; True when done (or already gone), False when the object is still in use."""
            try:
                self._api(f"{what} ({label})", fn, passthrough=(openstack.exceptions.NotFoundException,
                                                              openstack.exceptions.ConflictException,
                                                              openstack.exceptions.BadRequestException))
            except openstack.exceptions.NotFoundException:
                return True
            except (openstack.exceptions.ConflictException, openstack.exceptions.BadRequestException) as exc:
                if isinstance(exc, openstack.exceptions.BadRequestException) and "attached" not in _detail_of(exc) \
                        and "status" not in _detail_of(exc):
                    raise explain(f"{what} ({label})", exc) from exc
                log.info("cloud_resource_in_use", cluster_id=cluster_id, resource=label, error=_detail_of(exc)[:200])
                return False
            return True

        # 1. the load balancer: cascade delete takes its listener, pool, members, monitor and VIP port
        found_lbs = {lb.id: lb for lb in self._list(what, lambda: lbs.load_balancers(tags=tag))}
        lb = self._find_lb(prefix, cluster_id)
        if lb is not None:
            found_lbs.setdefault(lb.id, lb)
        for lb in found_lbs.values():
            left = True  # even a delete sent now takes a while
            seen.present[str(lb.id)] = "load_balancer"
            if lb.provisioning_status in ("ACTIVE", "ERROR"):
                seen.sending_delete(str(lb.id), "load_balancer")
                gone(lambda lb=lb: lbs.delete_load_balancer(lb, cascade=True, ignore_missing=True),  # type: ignore[misc]
                     f"load balancer {lb.name}")
                log.info("load_balancer_deleting", cluster_id=cluster_id, lb_id=lb.id)

        # 2. floating IPs (tag or description; they have no name)
        for fip in self._list(what, lambda: net.ips()):
            if _owned(fip, cluster_id):
                if gone(lambda fip=fip: net.delete_ip(fip, ignore_missing=True),  # type: ignore[misc]
                        f"floating IP {fip.floating_ip_address}"):
                    seen.deleted[str(fip.id)] = datetime.now(UTC)
                    log.info("floating_ip_deleted", cluster_id=cluster_id, floating_ip_id=fip.id)
                else:
                    seen.present[str(fip.id)] = "floating_ip"
                    left = True

        # 3. volumes no server holds
        for vol in self._list(what, lambda: self.conn.block_storage.volumes(details=True)):
            if (vol.metadata or {}).get("cove_cluster_id") != cluster_id:
                continue
            left = True  # Cinder deletes asynchronously
            seen.present[str(vol.id)] = "volume"
            status = (vol.status or "").lower()
            if status == "deleting" and (accepted := cloud_time(vol.updated_at)) is not None:
                seen.deleting.setdefault(str(vol.id), accepted)
            if vol.attachments or status in ("in-use", "attaching", "detaching", "deleting", "creating",
                                             "extending"):
                continue
            seen.sending_delete(str(vol.id), "volume")
            if gone(lambda vol=vol: self.conn.block_storage.delete_volume(vol, ignore_missing=True),  # type: ignore[misc]
                    f"volume {vol.name}"):
                seen.deleting[str(vol.id)] = datetime.now(UTC)
                log.info("volume_deleting", cluster_id=cluster_id, volume_id=vol.id)

        # 4. the cluster's ports: tagged or described as the cluster's, and unbound ports on its own network
        own_nets = self._list(what, lambda: net.networks(name=model.network_name(prefix)))
        ports: dict[str, Any] = {}
        for p in self._list(what, lambda: net.ports(tags=tag)):
            ports[p.id] = p
        for p in self._list(what, lambda: net.ports(description=cluster_description(cluster_id))):
            ports[p.id] = p
        for n in own_nets:
            for p in self._list(what, lambda n=n: net.ports(network_id=n.id)):  # type: ignore[misc]
                if not p.device_id and not (p.device_owner or "").startswith("network:"):
                    ports[p.id] = p
        for p in ports.values():
            if p.device_id and (p.device_owner or "").startswith("compute:"):
                left = True  # its server is still there: its delete unbinds the port
                continue
            if gone(lambda p=p: net.delete_port(p, ignore_missing=True), f"port {p.name or p.id}"):  # type: ignore[misc]
                log.info("port_deleted", cluster_id=cluster_id, port_id=p.id)
            else:
                left = True

        # 5. the masters' server group
        group_name = server_group_name(prefix)
        for group in self._list(what, lambda: self.conn.compute.server_groups()):
            if group.name == group_name:
                gone(lambda group=group: self.conn.compute.delete_server_group(  # type: ignore[misc]
                    group, ignore_missing=True), f"server group {group_name}")
                log.info("server_group_deleted", cluster_id=cluster_id, server_group_id=group.id)

        # 6. router: interfaces, gateway, router
        for router in self._list(what, lambda: net.routers(name=model.router_name(prefix))):
            in_use = False
            for port in self._list(what, lambda router=router: net.ports(device_id=router.id)):  # type: ignore[misc]
                if port.device_owner != "network:router_interface":
                    continue
                for ip in port.fixed_ips or []:
                    if not gone(lambda router=router, ip=ip: net.remove_interface_from_router(  # type: ignore[misc]
                            router, subnet=ip["subnet_id"]), f"router interface on {ip['subnet_id']}"):
                        in_use = True
            if in_use:
                left = True
                continue
            if router.external_gateway_info and not gone(
                    lambda router=router: net.update_router(router, external_gateway_info={}),  # type: ignore[misc]
                    f"router gateway of {router.name}"):
                left = True
                continue
            if gone(lambda router=router: net.delete_router(router, ignore_missing=True), f"router {router.name}"):  # type: ignore[misc]
                log.info("router_deleted", cluster_id=cluster_id, router_id=router.id)
            else:
                left = True

        # 7. subnet and network (only the cluster's own, by name)
        for n in own_nets:
            subnets_gone = True
            for subnet in self._list(what, lambda n=n: net.subnets(network_id=n.id)):  # type: ignore[misc]
                if not gone(lambda subnet=subnet: net.delete_subnet(subnet, ignore_missing=True),  # type: ignore[misc]
                            f"subnet {subnet.name}"):
                    subnets_gone = False
            if subnets_gone and gone(lambda n=n: net.delete_network(n, ignore_missing=True), f"network {n.name}"):  # type: ignore[misc]
                log.info("network_deleted", cluster_id=cluster_id, network_id=n.id)
            else:
                left = True

        # 8. security groups: per role, and the old single group
        names = [role_security_group_name(prefix, r) for r in model.ROLES] + [model.security_group_name(prefix)]
        for name in names:
            for sg in self._list(what, lambda name=name: net.security_groups(name=name)):  # type: ignore[misc]
                if gone(lambda sg=sg: net.delete_security_group(sg, ignore_missing=True), f"security group {name}"):  # type: ignore[misc]
                    log.info("security_group_deleted", cluster_id=cluster_id, security_group_id=sg.id)
                else:
                    left = True
        return not left

    def release_node(
        self, prefix: str, cluster_id: str, node_name: str, *, keep_port: bool = False, seen: Seen | None = None,
    ) -> bool:
        """What one node had beside its server, once the server is gone (a resize down, a nodegroup deleted, an
        upgrade's replaced node): its volumes (``<node>-docker``, ``<node>-etcd``), its floating IP and the port
        it booted on when that was made first (``<node>-port``). True when nothing of it is left; False while a
        volume still detaches or the port is still bound (call again). ``keep_port``: the port carries the cluster's
        API address (the first master's without a load balancer) and stays for the node's replacement. ``seen`` is
        told which of the node's volumes were still there and which floating IPs went."""
        what = f"Releasing the resources of {node_name} failed"
        done = True
        seen = seen if seen is not None else Seen()
        port_name = model.node_port_name(node_name)
        for port in [] if keep_port else self._list(what, lambda: self.conn.network.ports(name=port_name)):
            if not _owned(port, cluster_id):
                continue
            if port.device_id:
                done = False  # Nova unbinds it as the server goes
                continue
            self._api(what, lambda port=port: self.conn.network.delete_port(port, ignore_missing=True))  # type: ignore[misc]
            log.info("port_deleted", cluster_id=cluster_id, node=node_name, port_id=port.id)
        description = f"{cluster_description(cluster_id)}: {node_name}-fip"
        for fip in self._list(what, lambda: self.conn.network.ips(description=description)):
            if _owned(fip, cluster_id):
                self._api(what, lambda fip=fip: self.conn.network.delete_ip(fip, ignore_missing=True))  # type: ignore[misc]
                seen.deleted[str(fip.id)] = datetime.now(UTC)
                log.info("floating_ip_deleted", cluster_id=cluster_id, node=node_name, floating_ip_id=fip.id)
        for kind in model.VOLUME_KINDS:
            name = model.volume_name(node_name, kind)
            for vol in self._list(what, lambda name=name: self.conn.block_storage.volumes(  # type: ignore[misc]
                    details=True, name=name)):
                if (vol.metadata or {}).get("cove_cluster_id") != cluster_id:
                    continue
                seen.present[str(vol.id)] = "volume"
                status = (vol.status or "").lower()
                if status == "deleting":
                    done = False
                elif vol.attachments or status not in ("available", "error"):
                    done = False  # still attached to the going server, or still being made
                else:
                    self._api(what, lambda vol=vol: self.conn.block_storage.delete_volume(  # type: ignore[misc]
                        vol, ignore_missing=True))
                    log.info("volume_deleting", cluster_id=cluster_id, node=node_name, volume_id=vol.id)
                    done = False  # gone once Cinder says so
        return done


CHANGES_PAGE = 1000
CHANGES_MICROVERSION = "2.16"
"""Nova's microversion for changes-since listings: ``host_status`` and the deleted servers' ``terminated_at``."""


def fetch_changes(conn: openstack.connection.Connection, since: datetime, *, all_tenants: bool) -> list[dict[str, Any]]:
    """Every server changed since ``since`` (pages of ``CHANGES_PAGE``), as plain JSON."""
    found: list[dict[str, Any]] = []
    params: dict[str, Any] | None = {"changes-since": since.strftime("%Y-%m-%dT%H:%M:%SZ"), "limit": CHANGES_PAGE}
    if all_tenants:
        params["all_tenants"] = "1"  # type: ignore[index]
    url: str | None = "/servers/detail"
    while url:
        try:
            response = conn.compute.get(url, params=params, microversion=CHANGES_MICROVERSION)
        except ks_exceptions.Forbidden as exc:
            raise PermissionError("the Cove service user may not list every project's servers (all_tenants)") from exc
        if response.status_code == 403:
            raise PermissionError("the Cove service user may not list every project's servers (all_tenants)")
        response.raise_for_status()
        body = response.json()
        found.extend(body.get("servers") or [])
        url = next((link.get("href") for link in body.get("servers_links") or [] if link.get("rel") == "next"), None)
        params = None
    return found


class Cloud:
    """A bounded thread pool for openstacksdk plus one cached connection per trust."""

    def __init__(self, settings: CloudSettings) -> None:
        self.settings = settings
        self.executor = ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="cove-cloud")
        self._clients: dict[str, ClusterCloud] = {}
        self._service: openstack.connection.Connection | None = None
        self._lock = threading.Lock()

    def _connect(self, trust_id: str) -> ClusterCloud:
        with self._lock:
            client = self._clients.get(trust_id)
            if client is not None:
                return client
        auth = v3.Password(
            auth_url=self.settings.auth_url, username=self.settings.username, password=self.settings.password,
            user_domain_name=self.settings.user_domain_name, trust_id=trust_id,
        )
        conn = openstack.connection.Connection(session=ks_session.Session(auth=auth), app_name="cove-provisioner")
        client = ClusterCloud(conn)
        with self._lock:
            return self._clients.setdefault(trust_id, client)

    async def call(self, trust_id: str, fn: Callable[[ClusterCloud], T], *,
                   executor: ThreadPoolExecutor | None = None) -> T:
        """Run ``fn(client)`` in the pool with the trust's cached connection. Each request ``fn`` sends is
        retried there on transient answers (``ClusterCloud._api``, ``RetryPolicy``); the pool's size
        (``COVE_PROVISIONER_CLOUD_THREADS``) bounds the requests in flight, back-off sleeps included. ``executor``:
        another pool, for short looks whose timing matters and must not queue behind the pool's backlog."""

        def work() -> T:
            try:
                return fn(self._connect(trust_id))
            except CloudError:
                raise
            except Exception as exc:
                raise explain("Cloud call failed", exc) from exc

        with observe.cloud_call(fn, ClusterCloud):  # a span, latency and errors per call
            return await asyncio.get_running_loop().run_in_executor(executor or self.executor, work)

    def _service_connection(self) -> openstack.connection.Connection:
        """The Cove service user's own connection, scoped to its project (no trust)."""
        with self._lock:
            if self._service is not None:
                return self._service
        auth = v3.Password(
            auth_url=self.settings.auth_url, username=self.settings.username, password=self.settings.password,
            user_domain_name=self.settings.user_domain_name, project_name=self.settings.project_name,
            project_domain_name=self.settings.project_domain_name,
        )
        conn = openstack.connection.Connection(session=ks_session.Session(auth=auth), app_name="cove-provisioner")
        with self._lock:
            if self._service is None:
                self._service = conn
            return self._service

    async def delete_trust(self, trust_id: str) -> bool:
        """Delete a Keystone trust with the service user's own credentials (Keystone lets an admin or the trustor
        delete one). True: deleted now; False: it was already gone (404). Raises CloudError otherwise."""

        def work() -> bool:
            try:
                identity = self._service_connection().identity
                identity.delete_trust(trust_id, ignore_missing=False)  # type: ignore[union-attr]
            except openstack.exceptions.NotFoundException:
                return False
            except Exception as exc:
                raise explain(f"Deleting trust {trust_id} failed", exc) from exc
            return True

        deleted = await asyncio.get_running_loop().run_in_executor(self.executor, work)
        self.forget(trust_id)
        return deleted

    def forget(self, trust_id: str) -> None:
        with self._lock:
            client = self._clients.pop(trust_id, None)
        if client is not None:
            try:
                client.conn.close()
            except Exception as exc:  # noqa: BLE001
                log.debug("connection_close_failed", error=repr(exc))

    def close(self) -> None:
        for trust_id in list(self._clients):
            self.forget(trust_id)
        if self._service is not None:
            try:
                self._service.close()
            except Exception as exc:  # noqa: BLE001
                log.debug("connection_close_failed", error=repr(exc))
            self._service = None
        self.executor.shutdown(wait=False, cancel_futures=True)


# ------------------------------------------------------------------------------------------- the watch's and health's


def find_api_host(c: ClusterCloud, prefix: str, cluster_id: str, *, master_lb: bool) -> str | None:
    """Where the cluster's API is reached, found without changing anything (``infra.ensure`` makes what is missing,
    a health pass must not): the floating IP in front of it, else the load balancer's VIP (``master_lb``) or the
    first master's port's fixed IP. None when none of them exists."""
    port_id: str | None = None
    address: str | None = None
    if master_lb:
        lb = c._find_lb(prefix, cluster_id)
        if lb is None:
            return None
        port_id, address = lb.vip_port_id, lb.vip_address
    else:
        name = model.node_port_name(model.node_name(prefix, model.MASTER, 0))
        ports = [p for p in c._list(f"Listing the port {name} failed", lambda: c.conn.network.ports(name=name))
                 if _owned(p, cluster_id)]
        if not ports:
            return None
        port = _oldest(ports)
        port_id, address = port.id, _first_ipv4(port)
    if port_id:
        ips = c._list("Listing the API's floating IP failed", lambda: c.conn.network.ips(port_id=port_id))
        fip = next((str(ip.floating_ip_address) for ip in ips if ip.floating_ip_address), None)
        if fip:
            return fip
    return str(address) if address else None


LB_FIELDS = ("id", "name", "provisioning_status", "operating_status", "tags")


def fetch_load_balancers(conn: openstack.connection.Connection) -> list[dict[str, Any]]:
    """Every load balancer the service user sees (Octavia shows an admin every project's), as plain JSON of only
    the fields the watch reads (Octavia's ``fields``), pages of ``CHANGES_PAGE``. Octavia has no changes-since: this
    is a full listing, made at the watch's slower interval (plain JSON: openstacksdk's resource objects cost ~1 ms of
    CPU each, a second per listing at 1,000 clusters)."""
    found: list[dict[str, Any]] = []
    params: dict[str, Any] | None = {"fields": list(LB_FIELDS), "limit": CHANGES_PAGE}
    url: str | None = "/lbaas/loadbalancers"
    while url:
        response = conn.load_balancer.get(url, params=params)
        response.raise_for_status()
        body = response.json()
        found.extend(body.get("loadbalancers") or [])
        url = next((link.get("href") for link in body.get("loadbalancers_links") or [] if link.get("rel") == "next"),
                   None)
        params = None
    return found


VOLUMES_MICROVERSION = "3.60"
"""Cinder's microversion that filters volume lists on ``updated_at`` with comparison operators (``gte:``)."""


def fetch_volumes(conn: openstack.connection.Connection, since: datetime | None) -> list[dict[str, Any]]:
    """Every project's volumes (the service user's admin role, ``all_tenants``) updated since ``since``, or all of
    them when ``since`` is None (the sweep that notices deleted volumes, which no filtered listing shows), as plain
    JSON, pages of ``CHANGES_PAGE``."""
    found: list[dict[str, Any]] = []
    params: dict[str, Any] | None = {"all_tenants": "1", "limit": CHANGES_PAGE}
    if since is not None:
        params["updated_at"] = "gte:" + since.strftime("%Y-%m-%dT%H:%M:%S")  # type: ignore[index]
    url: str | None = "/volumes/detail"
    while url:
        response = conn.block_storage.get(url, params=params, microversion=VOLUMES_MICROVERSION)
        if response.status_code == 403:
            raise PermissionError("the Cove service user may not list every project's volumes (all_tenants)")
        response.raise_for_status()
        body = response.json()
        found.extend(body.get("volumes") or [])
        url = next((link.get("href") for link in body.get("volumes_links") or [] if link.get("rel") == "next"), None)
        params = None
    return found
