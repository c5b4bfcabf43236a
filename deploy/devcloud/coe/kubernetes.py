"""The stand-in for a Kubernetes cluster's kube-apiserver (issue 17): TLS with the serving certificate kubeadm would
make on the first master (signed with the cluster CA key its user data carries), client-certificate authentication
against the cluster CA, and ``/version``, ``/healthz``, ``/api/v1/nodes`` (the cluster's ACTIVE servers, Ready; its
servers that stopped running, Ready Unknown as the node lifecycle controller marks them) and ``/api/v1/pods`` (empty).
A COE fault (``POST /admin/faults/coe``) makes ``/healthz`` fail or names nodes whose kubelet reports NotReady."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import uuid
from collections.abc import Iterable
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from deploy.devcloud.coe.base import Endpoint, StandIn, coe_fault, load_chain, runner
from deploy.devcloud.coe.plan import Binding, Key, Node, Plan, Rules
from deploy.devcloud.coe.userdata import NodeFiles
from deploy.devcloud.state import Cloud

ROLE_READS = {"cluster-admin": frozenset({"nodes", "pods"}), "admin": frozenset({"pods"}),
              "edit": frozenset({"pods"}), "view": frozenset({"pods"}), "system:heapster": frozenset({"nodes", "pods"})}
"""What Kubernetes' default ClusterRoles let a group read of what the stand-in serves (``view`` covers namespaced
resources only, so not nodes)."""
PUBLIC_PATHS = ("/healthz", "/livez", "/readyz", "/version", "/version/")  # system:public-info-viewer: anonymous may read


def _sign_hash(key: Any) -> hashes.HashAlgorithm | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey) else hashes.SHA256()


def serving_certificate(p: Plan, ips: Iterable[str], key: ec.EllipticCurvePrivateKey) -> bytes:
    """kube-apiserver's serving certificate as kubeadm makes it on the first master (signed by the cluster CA): SANs
    for the service names, the masters' names and fixed IPs, the first service IP, the control-plane endpoint and the
    kubeadm ``certSANs`` of the user data, and nothing else. An address the endpoint listens at (``ips``: a floating
    IP, a VIP) is in it only when the user data names it, as on a real node, so a kubeconfig pointing at an address
    the provisioner left out of ``certSANs`` fails verification here as it would in a real cloud."""
    first = p.first
    assert first.ca_key_pem is not None  # ready() asked for it
    ca = x509.load_pem_x509_certificate(first.ca_cert_pem.encode())
    ca_key = serialization.load_pem_private_key(first.ca_key_pem.encode(), password=None)
    dns = ["kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
           *(n.name for n in p.nodes if n.role == "master" and n.name)]
    addresses: set[str] = set(p.master_ips)
    if first.service_cidr:
        try:
            addresses.add(str(next(ipaddress.ip_network(first.service_cidr, strict=False).hosts())))
        except (ValueError, StopIteration):
            pass
    for extra in (first.api_host, *first.cert_sans):
        try:
            ipaddress.ip_address(extra)
            addresses.add(extra)
        except ValueError:
            if extra:
                dns.append(extra)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dict.fromkeys(dns)]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in sorted(addresses)]
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # as kubeadm's: names its CA's key, so a client trusting an old and a rotated CA of the same subject
        # (a CA rotation's roll) finds the right one
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()), critical=False)  # type: ignore[arg-type]
        .sign(ca_key, _sign_hash(ca_key))  # type: ignore[arg-type]
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def client_identity(der: bytes | None, ca_pem: str) -> tuple[str, list[str]] | None:
    """The user and groups of a client certificate the cluster CA signed and that is valid now; None otherwise
    (kube-apiserver's x509 authenticator)."""
    if not der:
        return None
    try:
        cert = x509.load_der_x509_certificate(der)
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem.encode()))
    except Exception:  # noqa: BLE001 - any failure: not a certificate of this cluster
        return None
    now = dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        return None
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    groups = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    return (str(cn[0].value) if cn else "", groups)


# ==================================================================================================== the API


def _status(code: int, reason: str, message: str) -> web.Response:
    return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                              "message": message, "reason": reason, "code": code}, status=code)


def _list(kind: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}


NOT_READY = {"status": "False", "reason": "KubeletNotReady",
             "message": "container runtime network not ready: NetworkReady=false (devcloud injected COE fault)"}
UNKNOWN = {"status": "Unknown", "reason": "NodeStatusUnknown", "message": "Kubelet stopped posting node status."}
"""What the node lifecycle controller sets once a node's kubelet stops posting (its server no longer runs)."""


def _node(p: Plan, n: Node, condition: dict[str, str] | None = None) -> dict[str, Any]:
    labels = {"kubernetes.io/hostname": n.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
    if n.role == "master":
        labels["node-role.kubernetes.io/control-plane"] = ""
    ready = {"type": "Ready", "status": "True", "reason": "KubeletReady",
             "message": "kubelet is posting ready status", "lastHeartbeatTime": n.created,
             "lastTransitionTime": n.created, **(condition or {})}
    return {
        "kind": "Node", "apiVersion": "v1",
        "metadata": {"name": n.name, "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, n.server_id)), "resourceVersion": "1",
                     "creationTimestamp": n.created, "labels": labels},
        "spec": {"providerID": f"openstack:///{n.server_id}"},
        "status": {
            "conditions": [ready],
            "addresses": [*({"type": "InternalIP", "address": a} for a in n.addresses),
                          {"type": "Hostname", "address": n.name}],
            "nodeInfo": {"machineID": n.server_id.replace("-", ""), "systemUUID": n.server_id, "bootID": n.server_id,
                         "kernelVersion": "6.1.0-devcloud", "osImage": "devcloud", "containerRuntimeVersion":
                         "containerd://1.7.0", "kubeletVersion": p.first.kube_tag, "kubeProxyVersion": p.first.kube_tag,
                         "operatingSystem": "linux", "architecture": "amd64"},
        },
    }


class KubernetesEndpoint(Endpoint):
    """One cluster's stand-in kube-apiserver: one aiohttp application, one TLS context, a site per address."""

    def __init__(self, p: Plan, cloud: Cloud) -> None:
        super().__init__(p, cloud)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        # kube-apiserver requests a client certificate and verifies it in its authenticator (401 when it fails);
        # Python's TLS verifies at the handshake, so every cluster CA the devcloud knows is trusted there and the
        # authenticator below accepts only this cluster's.
        self.ssl.verify_mode = ssl.CERT_OPTIONAL
        self.cas: set[str] = set()
        self.sans: frozenset[str] = frozenset()
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/livez", self.healthz)
        app.router.add_get("/readyz", self.healthz)
        app.router.add_get("/version", self.version)
        app.router.add_get("/version/", self.version)  # the Python client's VersionApi().get_code()
        app.router.add_get("/api", self.api)
        app.router.add_get("/api/v1", self.api_v1)
        app.router.add_get("/apis", self.apis)
        app.router.add_get("/api/v1/nodes", self.nodes)
        app.router.add_get("/api/v1/nodes/{name}", self.node)
        app.router.add_get("/api/v1/pods", self.pods)
        app.router.add_get("/api/v1/namespaces/{ns}/pods", self.pods)
        app.middlewares.append(self.authenticate)
        self.runner = runner(app)
        self.runners.append(self.runner)

    def update(self, p: Plan, cas: Iterable[str], wanted: dict[Key, Binding]) -> None:
        super().update(p, cas, wanted)
        self.trust(cas)
        self.certify(ip for ip, _ in wanted)

    def serving(self, key: Key, binding: Binding) -> tuple[web.AppRunner, ssl.SSLContext | None]:
        return self.runner, self.ssl

    def trust(self, cas: Iterable[str]) -> None:
        for ca in cas:
            if ca not in self.cas:
                self.ssl.load_verify_locations(cadata=ca)
                self.cas.add(ca)

    def certify(self, ips: Iterable[str]) -> None:
        """(Re)issue the serving certificate when the addresses changed; new handshakes present the new one."""
        wanted = frozenset(ips) | frozenset(self.plan.master_ips)
        if wanted == self.sans:
            return
        cert = serving_certificate(self.plan, wanted, self.key)
        key = self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
        load_chain(self.ssl, cert, key)
        self.sans = wanted

    @web.middleware
    async def authenticate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der:
            who = next((w for ca in self.plan.trusted_cas if (w := client_identity(der, ca)) is not None), None)
            if who is None:
                return _status(401, "Unauthorized", "Unauthorized")
            request["user"] = who
        elif request.path not in PUBLIC_PATHS:
            return _status(401, "Unauthorized", "Unauthorized")
        return await handler(request)

    def _may_read(self, request: web.Request, resource: str) -> bool:
        """system:masters reads everything; another group what the ClusterRoleBindings of the first master's user
        data (``/etc/cove/rbac.yaml``) give it."""
        user, groups = request.get("user", ("", []))
        if "system:masters" in groups:
            return True
        return any(g in groups and resource in ROLE_READS.get(role, frozenset())
                   for g, role in self.plan.first.group_roles) or any(
            u == user and resource in ROLE_READS.get(role, frozenset()) for u, role in self.plan.first.user_roles)

    async def healthz(self, request: web.Request) -> web.Response:
        fault = coe_fault(self.cloud, self.plan.cluster_id)
        if fault is not None and fault.api_status:
            return web.Response(status=fault.api_status, text="[-]etcd failed: reason withheld\nhealthz check failed")
        return web.Response(text="ok")

    def listed(self) -> list[dict[str, Any]]:
        """The node objects: each running server's (Ready unless a COE fault names it), then each server that no
        longer runs (Ready Unknown: its kubelet stopped posting)."""
        fault = coe_fault(self.cloud, self.plan.cluster_id)
        not_ready = set(fault.not_ready) if fault is not None else set()
        return [*(_node(self.plan, n, NOT_READY if n.name in not_ready else None) for n in self.plan.nodes),
                *(_node(self.plan, n, UNKNOWN) for n in self.plan.down)]

    async def version(self, request: web.Request) -> web.Response:
        tag = self.plan.first.kube_tag
        major, minor = (tag.lstrip("v").split(".") + ["0", "0"])[:2]
        return web.json_response({"major": major, "minor": minor, "gitVersion": tag, "gitCommit": "devcloud",
                                  "gitTreeState": "clean", "buildDate": "2024-01-01T00:00:00Z",
                                  "goVersion": "go1.22.5", "compiler": "gc", "platform": "linux/amd64"})

    async def api(self, request: web.Request) -> web.Response:
        return web.json_response({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})

    async def apis(self, request: web.Request) -> web.Response:
        return web.json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})

    async def api_v1(self, request: web.Request) -> web.Response:
        resources = [{"name": name, "singularName": single, "namespaced": ns, "kind": kind, "verbs": ["get", "list"]}
                     for name, single, ns, kind in (("nodes", "node", False, "Node"), ("pods", "pod", True, "Pod"))]
        return web.json_response({"kind": "APIResourceList", "groupVersion": "v1", "resources": resources})

    async def nodes(self, request: web.Request) -> web.Response:
        if not self._may_read(request, "nodes"):
            return _status(403, "Forbidden", 'nodes is forbidden: User cannot list resource "nodes"')
        return web.json_response(_list("NodeList", self.listed()))

    async def node(self, request: web.Request) -> web.Response:
        if not self._may_read(request, "nodes"):
            return _status(403, "Forbidden", 'nodes is forbidden: User cannot get resource "nodes"')
        name = request.match_info["name"]
        for node in self.listed():
            if node["metadata"]["name"] == name:
                return web.json_response(node)
        return _status(404, "NotFound", f'nodes "{name}" not found')

    async def pods(self, request: web.Request) -> web.Response:
        if not self._may_read(request, "pods"):
            return _status(403, "Forbidden", 'pods is forbidden: User cannot list resource "pods"')
        return web.json_response(_list("PodList", []))


def _ready(first: NodeFiles) -> bool:
    return first.ca_key_pem is not None  # the first master's CA key signs kube-apiserver's certificate


def _ports(files: NodeFiles) -> tuple[int, ...]:
    return (files.api_port,) if files.role == "master" else ()


STAND_IN = StandIn("kubernetes", Rules(_ready, _ports), KubernetesEndpoint)
