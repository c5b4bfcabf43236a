"""The provisioner's hands on the cloud: openstacksdk (synchronous) behind a bounded thread pool.

Every ``ensure_*`` FINDS what exists (by the cluster's names, checking the ``cove_cluster_id`` metadata or
tag) before it creates anything, so it is safe to run twice and after a crash mid-create. The connection is the
Cove service user with the cluster's Keystone trust (impersonation): everything lands in the user's project.
"""

from __future__ import annotations

import asyncio
import base64
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import openstack.connection
import openstack.exceptions
import structlog
from keystoneauth1 import exceptions as ks_exceptions
from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3

from services.provisioner import reconcile as rc

log = structlog.get_logger(__name__)

T = TypeVar("T")

# 4xx answers that will not change by retrying: they end the operation with a reason the user can act on.
PERMANENT_STATUS = frozenset({400, 401, 403, 404, 413})


class CloudError(Exception):
    """A cloud call failed; ``permanent`` says retrying will not help. ``str()`` is a user-facing reason."""

    def __init__(self, reason: str, *, permanent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


def explain(what: str, exc: BaseException) -> CloudError:
    """Turn an SDK/keystoneauth exception into a CloudError with a short reason."""
    if isinstance(exc, openstack.exceptions.NotFoundException):  # also find_*() misses, which have no status
        return CloudError(f"{what}: {exc.details or exc.message}", permanent=True)
    if isinstance(exc, openstack.exceptions.HttpException):
        detail = exc.details or exc.message
        status = exc.status_code
        return CloudError(f"{what}: {detail}", permanent=status in PERMANENT_STATUS)
    if isinstance(exc, ks_exceptions.HttpError):
        return CloudError(f"{what}: {exc.message}", permanent=exc.http_status in PERMANENT_STATUS)
    return CloudError(f"{what}: {exc.__class__.__name__}: {exc}", permanent=False)


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
    """Synchronous openstacksdk calls for one trust (one cluster). Call only from the Cloud thread pool."""

    def __init__(self, conn: openstack.connection.Connection) -> None:
        self.conn = conn
        self._flavors: dict[str, Flavor] = {}
        self._images: dict[str, str] = {}

    # -------------------------------------------------------------------------------------- lookups

    def flavor(self, name_or_id: str) -> Flavor:
        if name_or_id not in self._flavors:
            try:
                f = self.conn.compute.find_flavor(name_or_id, ignore_missing=False)
            except Exception as exc:
                raise explain(f"Flavor {name_or_id} not found", exc) from exc
            self._flavors[name_or_id] = Flavor(
                id=f.id, name=f.name, vcpus=int(f.vcpus or 0), ram_mb=int(f.ram or 0), disk_gb=int(f.disk or 0)
            )
        return self._flavors[name_or_id]

    def image(self, name_or_id: str) -> str:
        if name_or_id not in self._images:
            try:
                self._images[name_or_id] = self.conn.image.find_image(name_or_id, ignore_missing=False).id
            except Exception as exc:
                raise explain(f"Image {name_or_id} not found", exc) from exc
        return self._images[name_or_id]

    # -------------------------------------------------------------------------------------- network

    def _one(self, items: Any) -> Any | None:
        found = list(items)
        return found[0] if found else None

    def find_network(self, name_or_id: str) -> str:
        try:
            return str(self.conn.network.find_network(name_or_id, ignore_missing=False).id)
        except Exception as exc:
            raise explain(f"Network {name_or_id} not found", exc) from exc

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
            try:
                fixed = self.conn.network.find_subnet(fixed_subnet, ignore_missing=False)
            except Exception as exc:
                raise explain(f"Subnet {fixed_subnet} not found", exc) from exc
            return NetworkRefs(network_id=fixed.network_id, subnet_id=fixed.id, router_id=None)
        if fixed_network:
            return NetworkRefs(network_id=self.find_network(fixed_network), subnet_id=None, router_id=None)
        tag = rc.cluster_tag(cluster_id)
        try:
            net = self._one(self.conn.network.networks(name=rc.network_name(prefix)))
            if net is None:
                net = self.conn.network.create_network(
                    name=rc.network_name(prefix), description=f"Cove cluster {cluster_id}"
                )
                log.info("network_created", cluster_id=cluster_id, network_id=net.id)
                self._tag(net, tag)
            subnet: Any = self._one(self.conn.network.subnets(name=rc.subnet_name(prefix), network_id=net.id))
            if subnet is None:
                subnet = self.conn.network.create_subnet(
                    name=rc.subnet_name(prefix), network_id=net.id, ip_version=4, cidr=cidr,
                    dns_nameservers=[dns_nameserver] if dns_nameserver else [],
                    description=f"Cove cluster {cluster_id}",
                )
                log.info("subnet_created", cluster_id=cluster_id, subnet_id=subnet.id)
                self._tag(subnet, tag)
        except openstack.exceptions.SDKException as exc:
            raise explain(f"Creating the cluster network {rc.network_name(prefix)} failed", exc) from exc
        router_id = None
        if external_network:
            router_id = self._ensure_router(prefix, cluster_id, external_network, subnet.id, tag)
        return NetworkRefs(network_id=net.id, subnet_id=subnet.id, router_id=router_id)

    def _ensure_router(self, prefix: str, cluster_id: str, external: str, subnet_id: str, tag: str) -> str:
        ext_id = self.find_network(external)
        try:
            router = self._one(self.conn.network.routers(name=rc.router_name(prefix)))
            if router is None:
                router = self.conn.network.create_router(
                    name=rc.router_name(prefix), external_gateway_info={"network_id": ext_id},
                    description=f"Cove cluster {cluster_id}",
                )
                log.info("router_created", cluster_id=cluster_id, router_id=router.id)
                self._tag(router, tag)
            attached = any(
                any(ip.get("subnet_id") == subnet_id for ip in (port.fixed_ips or []))
                for port in self.conn.network.ports(device_id=router.id)
            )
            if not attached:
                self.conn.network.add_interface_to_router(router, subnet=subnet_id)
        except openstack.exceptions.SDKException as exc:
            raise explain(f"Creating the cluster router {rc.router_name(prefix)} failed", exc) from exc
        return str(router.id)

    def _tag(self, resource: Any, tag: str) -> None:
        try:
            self.conn.network.set_tags(resource, [tag])
        except openstack.exceptions.SDKException as exc:  # tags help operators; names are what we find by
            log.warning("tagging_failed", resource_id=resource.id, error=str(exc))

    def ensure_security_group(self, prefix: str, cluster_id: str, api_port: int) -> str:
        """The cluster's security group: SSH and the API from anywhere, everything between the cluster's nodes."""
        name = rc.security_group_name(prefix)
        try:
            sg = self._one(self.conn.network.security_groups(name=name))
            if sg is None:
                sg = self.conn.network.create_security_group(name=name, description=f"Cove cluster {cluster_id}")
                log.info("security_group_created", cluster_id=cluster_id, security_group_id=sg.id)
                self._tag(sg, rc.cluster_tag(cluster_id))
            have = {
                (r.get("direction"), r.get("protocol"), r.get("port_range_min"), r.get("remote_group_id"))
                for r in (sg.security_group_rules or [])
            }
            wanted = [
                {"protocol": "tcp", "port_range_min": 22, "port_range_max": 22, "remote_ip_prefix": "0.0.0.0/0"},
                {"protocol": "tcp", "port_range_min": api_port, "port_range_max": api_port,
                 "remote_ip_prefix": "0.0.0.0/0"},
                {"protocol": None, "remote_group_id": sg.id},
            ]
            for rule in wanted:
                key = ("ingress", rule.get("protocol"), rule.get("port_range_min"), rule.get("remote_group_id"))
                if key in have:
                    continue
                try:
                    self.conn.network.create_security_group_rule(
                        security_group_id=sg.id, direction="ingress", ethertype="IPv4", **rule
                    )
                except openstack.exceptions.ConflictException:
                    pass  # the rule exists already: what we wanted
        except openstack.exceptions.SDKException as exc:
            raise explain(f"Creating the security group {name} failed", exc) from exc
        return str(sg.id)

    # -------------------------------------------------------------------------------------- servers

    def list_servers(self, prefix: str, cluster_id: str) -> list[rc.ServerView]:
        """ONE list call: the cluster's servers (name prefix, then the cove_cluster_id metadata)."""
        try:
            raw = list(self.conn.compute.servers(details=True, name=rc.server_name_filter(prefix)))
        except openstack.exceptions.SDKException as exc:
            raise explain("Listing the cluster's servers failed", exc) from exc
        views = [
            rc.ServerView(
                id=s.id, name=s.name, status=(s.status or "").upper(), metadata=dict(s.metadata or {}),
                fault=(s.fault or {}).get("message") if isinstance(s.fault, dict) else None,
                addresses=rc.addresses_of(s.addresses),
            )
            for s in raw
        ]
        return rc.owned_servers(views, cluster_id)

    def create_server(
        self,
        *,
        name: str,
        flavor_id: str,
        image_id: str,
        network_id: str,
        security_group: str | None,
        key_name: str | None,
        metadata: dict[str, str],
        user_data: str,
    ) -> str:
        kwargs: dict[str, Any] = {
            "name": name, "flavor_id": flavor_id, "image_id": image_id,
            "networks": [{"uuid": network_id}], "metadata": metadata,
            "user_data": base64.b64encode(user_data.encode()).decode(),
        }
        if security_group:
            kwargs["security_groups"] = [{"name": security_group}]
        if key_name:
            kwargs["key_name"] = key_name
        try:
            server = self.conn.compute.create_server(**kwargs)
        except openstack.exceptions.SDKException as exc:
            raise explain(f"Creating server {name} failed", exc) from exc
        log.info("server_create_sent", server=name, server_id=server.id)
        return str(server.id)

    def delete_server(self, server_id: str) -> None:
        try:
            self.conn.compute.delete_server(server_id, ignore_missing=True)
        except openstack.exceptions.SDKException as exc:
            raise explain(f"Deleting server {server_id} failed", exc) from exc

    # -------------------------------------------------------------------------------------- teardown

    def delete_network_resources(self, prefix: str, cluster_id: str) -> None:
        """Router (interfaces, gateway), subnet, network and security group named for the cluster; missing is fine.
        A fixed network/subnet named by the template is never touched (it does not carry the cluster's names)."""
        try:
            for router in list(self.conn.network.routers(name=rc.router_name(prefix))):
                for port in list(self.conn.network.ports(device_id=router.id)):
                    for ip in port.fixed_ips or []:
                        try:
                            self.conn.network.remove_interface_from_router(router, subnet=ip["subnet_id"])
                        except openstack.exceptions.NotFoundException:
                            pass
                self.conn.network.delete_router(router, ignore_missing=True)
            for net in list(self.conn.network.networks(name=rc.network_name(prefix))):
                for subnet in list(self.conn.network.subnets(network_id=net.id)):
                    self.conn.network.delete_subnet(subnet, ignore_missing=True)
                self.conn.network.delete_network(net, ignore_missing=True)
            for sg in list(self.conn.network.security_groups(name=rc.security_group_name(prefix))):
                self.conn.network.delete_security_group(sg, ignore_missing=True)
        except openstack.exceptions.SDKException as exc:
            err = explain(f"Deleting the network resources of {prefix} failed", exc)
            # 409 (in use) settles once the servers' ports are gone: retry
            raise CloudError(err.reason, permanent=err.permanent and getattr(exc, "status_code", 0) != 409) from exc


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

    async def call(self, trust_id: str, fn: Callable[[ClusterCloud], T]) -> T:
        """Run ``fn(client)`` in the pool with the trust's cached connection."""

        def work() -> T:
            try:
                return fn(self._connect(trust_id))
            except CloudError:
                raise
            except Exception as exc:
                raise explain("Cloud call failed", exc) from exc

        return await asyncio.get_running_loop().run_in_executor(self.executor, work)

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
