"""Stand-ins for the API endpoints of the Kubernetes clusters booted on the devcloud (issue 17).

A real node runs what its user data tells it to; the devcloud plays that part for the control plane: once a
cluster's first master is ACTIVE, the devcloud serves what kube-apiserver would serve at every address the API is
reached at (each ACTIVE master's fixed IPs and floating IPs, and a load balancer's VIP and floating IPs while its
listener routes to an ACTIVE master). Everything comes from the servers' user data (the cluster CA certificate and
key the first master writes, the environment file's kube_tag, API host and port, the node names), never from Cove.

Driven by the cloud's own state changes: every change the ledger records (server status, deletion, load balancer
objects, floating IP association) pokes a reconciler, which compares the endpoints the cloud's state calls for
with those listening and starts or stops listeners. Only 127.0.0.0/8 addresses are ever bound.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import functools
import ipaddress
import os
import shlex
import ssl
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog
import yaml
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from deploy.devcloud.state import CLOUD, Cloud

log = structlog.get_logger("devcloud.coe_endpoints")

CA_CERT_PATH = "/etc/kubernetes/pki/ca.crt"
CA_KEY_PATH = "/etc/kubernetes/pki/ca.key"
ENV_PATH = "/etc/cove/node.env"
KUBEADM_CONFIG_PATH = "/etc/cove/kubeadm.yaml"
DEFAULT_KUBE_TAG = "v1.30.4"  # what the driver's labels default to when the environment file names none
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
ENDPOINT_KINDS = frozenset({"server", "port", "floating_ip", "load_balancer", "listener", "pool", "member"})
"""Ledger kinds whose changes can move an endpoint."""
ROUTING = ("ACTIVE", "PENDING_UPDATE")  # an Octavia object whose data plane forwards traffic
PUBLIC_PATHS = ("/healthz", "/livez", "/readyz", "/version", "/version/")  # system:public-info-viewer: anonymous may read


# ==================================================================================================== user data


@dataclass(frozen=True)
class NodeFiles:
    """What a node's user data gives it, as far as the API endpoint is concerned."""

    node_name: str
    role: str
    first_master: bool
    api_host: str
    api_port: int
    kube_tag: str
    service_cidr: str
    ca_cert_pem: str
    ca_key_pem: str | None
    cert_sans: tuple[str, ...]


@functools.lru_cache(maxsize=8192)  # every reconcile reads every cluster server's: parse each user data once
def read_user_data(raw: str | None) -> NodeFiles | None:
    """The node's files from its (base64, as Nova takes it, or plain) #cloud-config; None when it is not one of
    Cove's Kubernetes nodes."""
    if not raw:
        return None
    text = raw
    try:
        text = base64.b64decode(raw, validate=True).decode()
    except (binascii.Error, ValueError):
        pass
    if not text.startswith("#cloud-config"):
        return None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    if not isinstance(doc, dict):
        return None
    files = {f.get("path"): f.get("content", "") for f in doc.get("write_files") or [] if isinstance(f, dict)}
    if CA_CERT_PATH not in files or ENV_PATH not in files:
        return None
    env = _shell_env(str(files[ENV_PATH]))
    sans: list[str] = []
    try:
        for part in yaml.safe_load_all(str(files.get(KUBEADM_CONFIG_PATH, ""))):
            if isinstance(part, dict) and part.get("kind") == "ClusterConfiguration":
                sans += [str(s) for s in (part.get("apiServer") or {}).get("certSANs") or []]
    except yaml.YAMLError:
        pass
    try:
        api_port = int(env.get("API_PORT", "6443"))
    except ValueError:
        return None
    return NodeFiles(
        node_name=env.get("KUBE_NODE_NAME") or str(doc.get("hostname") or ""),
        role=env.get("COVE_ROLE", ""),
        first_master=env.get("COVE_FIRST_MASTER") == "true",
        api_host=env.get("API_HOST", ""),
        api_port=api_port,
        kube_tag=env.get("KUBE_TAG") or DEFAULT_KUBE_TAG,
        service_cidr=env.get("SERVICE_CIDR", ""),
        ca_cert_pem=str(files[CA_CERT_PATH]),
        ca_key_pem=str(files[CA_KEY_PATH]) if CA_KEY_PATH in files else None,
        cert_sans=tuple(sans),
    )


def _shell_env(text: str) -> dict[str, str]:
    """``NAME='value'`` lines as a shell's ``.`` reads them (values quoted by shlex)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if not sep:
            continue
        try:
            words = shlex.split(value)
        except ValueError:
            continue
        out[name.strip()] = words[0] if words else ""
    return out


# ==================================================================================================== the plan


@dataclass(frozen=True)
class Node:
    server_id: str
    name: str
    role: str
    addresses: tuple[str, ...]
    created: str


@dataclass
class Plan:
    """One cluster's endpoint as the cloud's state calls for it."""

    cluster_id: str
    ca_cert_pem: str
    ca_key_pem: str
    kube_tag: str
    api_host: str
    service_cidr: str
    cert_sans: tuple[str, ...]
    created: str
    nodes: list[Node] = field(default_factory=list)
    bindings: dict[tuple[str, int], int] = field(default_factory=dict)  # (ip, port) -> rank (0: the API host)
    master_ips: set[str] = field(default_factory=set)


def _server_ports(cloud: Cloud, server_id: str) -> list[dict[str, Any]]:
    from deploy.devcloud.network import net_state

    table = cloud.table("port")
    ports = [table.get(pid) for pid in net_state(cloud).ports_by_device.get(server_id, ())]
    return [p for p in ports if p is not None]


def _floating_ips(cloud: Cloud, port_id: str) -> list[str]:
    from deploy.devcloud.network import net_state

    table = cloud.table("floating_ip")
    fips = [table.get(fid) for fid in net_state(cloud).fips_by_port.get(port_id, ())]
    return [f["floating_ip_address"] for f in fips if f is not None and f.get("fixed_ip_address")]


def plan(cloud: Cloud, known: dict[str, NodeFiles]) -> dict[str, Plan]:
    """The endpoints the cloud's state calls for, by cluster id. `known` remembers each cluster's first master's
    files once it was ACTIVE (the other masters downloaded the control plane's certificates from it); it is
    updated here, and forgets clusters that have no server left."""
    by_cluster: dict[str, list[dict[str, Any]]] = {}
    for s in cloud.table("server").items.values():
        cid = (s.get("metadata") or {}).get("cove_cluster_id")
        if cid:
            by_cluster.setdefault(cid, []).append(s)
    for cid in [c for c in known if c not in by_cluster]:
        del known[cid]
    plans: dict[str, Plan] = {}
    member_index: dict[tuple[str, str], str] = {}  # (subnet id, fixed ip) of an ACTIVE master -> cluster id
    for cid, servers in by_cluster.items():
        parsed = [(s, read_user_data(s.get("_user_data"))) for s in servers]
        for s, files in parsed:
            if files is not None and files.first_master and files.ca_key_pem and s["status"] == "ACTIVE":
                known[cid] = files
        first = known.get(cid)
        if first is None or first.ca_key_pem is None:
            continue
        p = Plan(cid, first.ca_cert_pem, first.ca_key_pem, first.kube_tag, first.api_host, first.service_cidr,
                 first.cert_sans, min(str(s.get("created") or "") for s in servers))
        for s, files in parsed:
            if files is None or s["status"] != "ACTIVE":
                continue
            ports = _server_ports(cloud, s["id"])
            fixed = [ip for port in ports for ip in port.get("fixed_ips") or []]
            p.nodes.append(Node(s["id"], files.node_name, files.role, tuple(ip["ip_address"] for ip in fixed),
                                str(s.get("created") or "")))
            if files.role != "master" or files.ca_cert_pem.strip() != first.ca_cert_pem.strip():
                continue
            for port in ports:
                for ip in port.get("fixed_ips") or []:
                    p.master_ips.add(ip["ip_address"])
                    p.bindings[(ip["ip_address"], first.api_port)] = 0 if ip["ip_address"] == first.api_host else 1
                    member_index[(ip.get("subnet_id") or "", ip["ip_address"])] = cid
                for fip in _floating_ips(cloud, port["id"]):
                    p.bindings[(fip, first.api_port)] = 0
        if p.master_ips:
            plans[cid] = p
    _load_balancers(cloud, plans, member_index, known)
    return plans


def _load_balancers(cloud: Cloud, plans: dict[str, Plan], member_index: dict[tuple[str, str], str],
                    known: dict[str, NodeFiles]) -> None:
    """A load balancer's VIP (and its floating IPs) serve a cluster while one of its listeners forwards, through
    its default pool, to an ACTIVE master of the cluster on the API port."""
    listeners: dict[str, list[dict[str, Any]]] = {}
    for listener in cloud.table("listener").items.values():
        listeners.setdefault(listener["_lb_id"], []).append(listener)
    for lb in cloud.table("load_balancer").items.values():
        if lb["provisioning_status"] not in ROUTING or not lb.get("admin_state_up", True) or not lb.get("vip_address"):
            continue
        for listener in listeners.get(lb["id"], []):
            if listener["provisioning_status"] not in ROUTING or not listener.get("admin_state_up", True):
                continue
            pool = cloud.table("pool").get(listener.get("default_pool_id") or "")
            if pool is None or pool["provisioning_status"] not in ROUTING:
                continue
            for ref in pool["members"]:
                m = cloud.table("member").get(ref["id"])
                if m is None or m["provisioning_status"] not in ROUTING or not m.get("admin_state_up", True):
                    continue
                cid = member_index.get((m.get("subnet_id") or lb.get("vip_subnet_id") or "", m["address"]))
                if cid is None or m["protocol_port"] != known[cid].api_port:
                    continue
                p = plans[cid]
                port = listener["protocol_port"]
                p.bindings[(lb["vip_address"], port)] = 0 if lb["vip_address"] == p.api_host else 1
                for fip in _floating_ips(cloud, lb.get("vip_port_id") or ""):
                    p.bindings[(fip, port)] = 0
                break


def assign(plans: dict[str, Plan], held: dict[tuple[str, int], str]) -> dict[tuple[str, int], str]:
    """Which cluster listens at each (ip, port). Clusters' private networks may reuse the same fixed IPs, which
    one machine's loopback cannot tell apart: the cluster whose API host the address is wins, then the one that
    already listens there, then the older cluster."""
    best: dict[tuple[str, int], tuple[int, int, str, str]] = {}
    for cid, p in plans.items():
        for key, rank in p.bindings.items():
            candidate = (rank, 0 if held.get(key) == cid else 1, p.created, cid)
            if key not in best or candidate < best[key]:
                best[key] = candidate
    return {key: c[3] for key, c in best.items()}


def is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip) in LOOPBACK
    except ValueError:
        return False


# ==================================================================================================== certificates


def _sign_hash(key: Any) -> hashes.HashAlgorithm | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey) else hashes.SHA256()


def serving_certificate(p: Plan, ips: Iterable[str], key: ec.EllipticCurvePrivateKey) -> bytes:
    """kube-apiserver's serving certificate as kubeadm makes it on the first master (signed by the cluster CA): SANs
    for the service names, the masters' names and fixed IPs, the first service IP, the control-plane endpoint and the
    kubeadm ``certSANs`` of the user data, and nothing else. An address the endpoint listens at (``ips``: a floating
    IP, a VIP) is in it only when the user data names it, as on a real node, so a kubeconfig pointing at an address
    the provisioner left out of ``certSANs`` fails verification here as it would in a real cloud."""
    ca = x509.load_pem_x509_certificate(p.ca_cert_pem.encode())
    ca_key = serialization.load_pem_private_key(p.ca_key_pem.encode(), password=None)
    dns = ["kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
           *(n.name for n in p.nodes if n.role == "master" and n.name)]
    addresses: set[str] = set(p.master_ips)
    if p.service_cidr:
        try:
            addresses.add(str(next(ipaddress.ip_network(p.service_cidr, strict=False).hosts())))
        except (ValueError, StopIteration):
            pass
    for extra in (p.api_host, *p.cert_sans):
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


def _node(p: Plan, n: Node) -> dict[str, Any]:
    labels = {"kubernetes.io/hostname": n.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"}
    if n.role == "master":
        labels["node-role.kubernetes.io/control-plane"] = ""
    ready = {"type": "Ready", "status": "True", "reason": "KubeletReady",
             "message": "kubelet is posting ready status", "lastHeartbeatTime": n.created,
             "lastTransitionTime": n.created}
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
                         "containerd://1.7.0", "kubeletVersion": p.kube_tag, "kubeProxyVersion": p.kube_tag,
                         "operatingSystem": "linux", "architecture": "amd64"},
        },
    }


class Endpoint:
    """One cluster's stand-in kube-apiserver: one aiohttp application, one TLS context, a site per address."""

    def __init__(self, p: Plan, cas: Iterable[str]) -> None:
        self.plan = p
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        # kube-apiserver requests a client certificate and verifies it in its authenticator (401 when it fails);
        # Python's TLS verifies at the handshake, so every cluster CA the devcloud knows is trusted there and the
        # authenticator below accepts only this cluster's.
        self.ssl.verify_mode = ssl.CERT_OPTIONAL
        self.cas: set[str] = set()
        self.trust(cas)
        self.sans: frozenset[str] = frozenset()
        self.sites: dict[tuple[str, int], web.TCPSite] = {}
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
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)

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
        with tempfile.TemporaryDirectory(prefix="coe-endpoint-") as tmp:
            path = os.path.join(tmp, "apiserver.pem")
            with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
                f.write(cert + key)
            self.ssl.load_cert_chain(path)
        self.sans = wanted

    @web.middleware
    async def authenticate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der:
            who = client_identity(der, self.plan.ca_cert_pem)
            if who is None:
                return _status(401, "Unauthorized", "Unauthorized")
            request["user"] = who
        elif request.path not in PUBLIC_PATHS:
            return _status(401, "Unauthorized", "Unauthorized")
        return await handler(request)

    def _may_read(self, request: web.Request) -> bool:
        return "system:masters" in request.get("user", ("", []))[1]

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def version(self, request: web.Request) -> web.Response:
        tag = self.plan.kube_tag
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
        if not self._may_read(request):
            return _status(403, "Forbidden", 'nodes is forbidden: User cannot list resource "nodes"')
        return web.json_response(_list("NodeList", [_node(self.plan, n) for n in self.plan.nodes]))

    async def node(self, request: web.Request) -> web.Response:
        if not self._may_read(request):
            return _status(403, "Forbidden", 'nodes is forbidden: User cannot get resource "nodes"')
        name = request.match_info["name"]
        for n in self.plan.nodes:
            if n.name == name:
                return web.json_response(_node(self.plan, n))
        return _status(404, "NotFound", f'nodes "{name}" not found')

    async def pods(self, request: web.Request) -> web.Response:
        if not self._may_read(request):
            return _status(403, "Forbidden", 'pods is forbidden: User cannot list resource "pods"')
        return web.json_response(_list("PodList", []))


class CoeEndpoints:
    """The reconciler: poked by every ledger change, it makes the listening endpoints match `plan`."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.known: dict[str, NodeFiles] = {}
        self.endpoints: dict[str, Endpoint] = {}
        self.held: dict[tuple[str, int], str] = {}
        self.refused: set[tuple[str, int]] = set()
        self.dirty = asyncio.Event()

    def poke(self, kind: str | None, resource_id: str) -> None:
        """A ledger change: plan again only for the kinds an endpoint depends on (not a volume, a keypair, a
        security group), so a busy cloud does not replan on every change."""
        if kind is None or kind in ENDPOINT_KINDS:
            self.dirty.set()

    async def run(self) -> None:
        while True:
            await self.dirty.wait()
            self.dirty.clear()
            try:
                await self.reconcile()
            except Exception:  # the next change tries again; the cloud itself goes on
                log.exception("coe_endpoint_reconcile_failed")

    async def reconcile(self) -> None:
        plans = plan(self.cloud, self.known)
        wanted = {k: cid for k, cid in assign(plans, self.held).items() if self._allowed(k, cid)}
        for key, cid in list(self.held.items()):
            if wanted.get(key) != cid:
                await self._unbind(key, cid)
        for cid in [c for c in self.endpoints if c not in plans]:
            endpoint = self.endpoints.pop(cid)
            await endpoint.runner.cleanup()
            log.info("coe_endpoint_stopped", cluster_id=cid)
        cas = {p.ca_cert_pem for p in plans.values()}
        for cid, p in plans.items():
            old = self.endpoints.get(cid)
            if old is None or old.plan.ca_key_pem != p.ca_key_pem:
                if old is not None:
                    await old.runner.cleanup()
                    for key in [k for k, c in self.held.items() if c == cid]:
                        del self.held[key]
                self.endpoints[cid] = Endpoint(p, cas)
                await self.endpoints[cid].runner.setup()
            endpoint = self.endpoints[cid]
            endpoint.plan = p
            endpoint.trust(cas)
            endpoint.certify(ip for (ip, _), c in wanted.items() if c == cid)
        for key, cid in wanted.items():
            if self.held.get(key) != cid:
                await self._bind(key, cid)

    def _allowed(self, key: tuple[str, int], cid: str) -> bool:
        if is_loopback(key[0]):
            return True
        if key not in self.refused:
            self.refused.add(key)
            log.warning("coe_endpoint_address_refused", cluster_id=cid, address=key[0], port=key[1],
                        reason="the devcloud binds only 127.0.0.0/8")
        return False

    async def _bind(self, key: tuple[str, int], cid: str) -> None:
        endpoint = self.endpoints[cid]
        site = web.TCPSite(endpoint.runner, key[0], key[1], ssl_context=endpoint.ssl, reuse_address=True,
                           shutdown_timeout=0.5)
        try:
            await site.start()
        except OSError as e:
            log.warning("coe_endpoint_bind_failed", cluster_id=cid, address=key[0], port=key[1], error=str(e))
            return
        endpoint.sites[key] = site
        self.held[key] = cid
        log.info("coe_endpoint_listening", cluster_id=cid, address=key[0], port=key[1])

    async def _unbind(self, key: tuple[str, int], cid: str) -> None:
        del self.held[key]
        endpoint = self.endpoints.get(cid)
        site = endpoint.sites.pop(key, None) if endpoint is not None else None
        if site is not None:
            await site.stop()
        log.info("coe_endpoint_unbound", cluster_id=cid, address=key[0], port=key[1])

    async def close(self) -> None:
        for endpoint in self.endpoints.values():
            await endpoint.runner.cleanup()
        self.endpoints.clear()
        self.held.clear()


async def serve(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the reconciler runs beside the cloud, poked by each change the ledger records."""
    cloud = app[CLOUD]
    endpoints = CoeEndpoints(cloud)
    cloud.ledger.listeners.append(endpoints.poke)
    task = asyncio.create_task(endpoints.run())
    yield
    cloud.ledger.listeners.remove(endpoints.poke)
    task.cancel()
    await endpoints.close()
