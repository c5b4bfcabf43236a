"""The Swarm-mode driver (pure): port rules, API address, user data per role, certificates and refusals.

Every rendered document passes cloud-init's own schema check and its bootstrap script shellcheck (the real tools
from .venv/tools); hostile names, labels and proxies arrive on the node as data, read back by a real bash.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.certs import ca as certs_ca
from services.provisioner.certificates import node_csr
from services.provisioner.drivers import driver_for
from services.provisioner.drivers.base import NodeContext
from services.provisioner.drivers.render import CA_PATH, ENV_PATH, PROXY_ENV_PATH
from services.provisioner.drivers.swarm import (
    BOOTSTRAP_SCRIPT,
    DAEMON_JSON_PATH,
    HOSTS_DROP_IN_PATH,
    PROXY_DROP_IN_PATH,
    SCRIPT_PATH,
    TLS_CA_PATH,
    TLS_CERT_PATH,
    TLS_KEY_PATH,
    SwarmDriver,
)
from tests.provisioner.userdata_checks import (
    assert_shellcheck_clean,
    assert_valid_cloud_config,
    files,
    hostile,
    parse,
    source,
)

DRIVER = SwarmDriver()
CLUSTER = "9b0c7f3e-3c1e-4e84-9d0e-6c1b2f0e5a11"
NOW = datetime.datetime.now(datetime.UTC)


def _pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def make_ca(cn: str = "swarm-ca") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(NOW)
        .not_valid_after(NOW + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_node_cert(ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], name: str = "node",
                   usages: tuple[x509.ObjectIdentifier, ...] = (ExtendedKeyUsageOID.SERVER_AUTH,
                                                                ExtendedKeyUsageOID.CLIENT_AUTH)) -> tuple[str, str]:
    """A node certificate as the certs service issues it: signed by the cluster CA, server and client auth."""
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(NOW).not_valid_after(NOW + datetime.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), _pem(key)


CA_PAIR = make_ca()
CA = CA_PAIR[0].public_bytes(serialization.Encoding.PEM).decode()
CERT, KEY = make_node_cert(CA_PAIR)


def node(kind: str, **kw: Any) -> NodeContext:
    """``kind``: ``first`` (the manager that runs ``swarm init``), ``master`` (a manager that joins) or ``worker``."""
    role = "worker" if kind == "worker" else "master"
    args: dict[str, Any] = {
        "cluster_id": CLUSTER, "cluster_name": "demo", "node_name": f"demo-9b0c7f3e-{kind}-0", "role": role,
        "nodegroup": f"default-{role}", "is_first_master": kind == "first", "api_host": "10.0.0.5",
        "api_port": 2376, "ca_cert_pem": CA, "bootstrap_token": "", "network_driver": "docker",
        "master_addresses": ("10.0.0.5",), "node_address": "10.0.0.5" if kind == "first" else "10.0.0.9",
        "server_cert_pem": CERT, "server_key_pem": KEY,
    }
    args.update(kw)
    return NodeContext(**args)


VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "volume": {"docker_volume_device": "/dev/vdb"},
    "proxies": {"http_proxy": "http://proxy.example:3128", "https_proxy": "http://user:p%40ss@proxy:3128",
                "no_proxy": "169.254.169.254,.example"},
    "no-network-driver-no-address": {"network_driver": None, "node_address": None},
    "lb-hostname": {"api_host": "swarm.example.com", "api_port": 443, "api_sans": ("127.24.4.9",)},
    "labels": {"labels": {"swarm_strategy": "binpack", "docker_volume_type": "fast", "availability_zone": "nova"},
               "docker_volume_device": "/dev/vdb", "http_proxy": "http://proxy:3128"},
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("kind", ["first", "master", "worker"])
def test_user_data_passes_cloud_init_schema_and_shellcheck(kind: str, variant: str, tmp_path: Path) -> None:
    text = DRIVER.user_data(node(kind, **VARIANTS[variant]))
    assert_valid_cloud_config(text, tmp_path)
    doc = parse(text)
    written = files(doc)
    assert_shellcheck_clean(written[SCRIPT_PATH]["content"], tmp_path, "bootstrap.sh")
    for path_on_node in (ENV_PATH, PROXY_ENV_PATH):
        if path_on_node in written:
            assert_shellcheck_clean(written[path_on_node]["content"], tmp_path, Path(path_on_node).name,
                                    "--shell=bash", "--exclude=SC2034")
    assert written[SCRIPT_PATH]["content"] == BOOTSTRAP_SCRIPT and written[SCRIPT_PATH]["permissions"] == "0755"
    assert doc["runcmd"] == [[SCRIPT_PATH]]


def test_the_files_every_node_gets_with_their_permissions() -> None:
    for kind in ("first", "master", "worker"):
        cert, key = make_node_cert(CA_PAIR, kind)
        written = files(parse(DRIVER.user_data(node(kind, server_cert_pem=cert, server_key_pem=key))))
        expected = {CA_PATH: (CA, "0644"), TLS_CA_PATH: (CA, "0644"), TLS_CERT_PATH: (cert, "0644"),
                    TLS_KEY_PATH: (key, "0600")}
        for path, (content, mode) in expected.items():
            assert (written[path]["content"], written[path]["permissions"], written[path]["owner"]) == (
                content, mode, "root:root"), path
        assert written[ENV_PATH]["permissions"] == "0600"
        assert "PRIVATE KEY" not in "".join(f["content"] for p, f in written.items() if p != TLS_KEY_PATH)


def test_the_engine_serves_tls_on_the_api_port_and_verifies_clients() -> None:
    written = files(parse(DRIVER.user_data(node("worker", api_port=12376))))
    assert json.loads(written[DAEMON_JSON_PATH]["content"]) == {
        "tls": True, "tlsverify": True, "tlscacert": TLS_CA_PATH, "tlscert": TLS_CERT_PATH,
        "tlskey": TLS_KEY_PATH, "hosts": ["unix:///var/run/docker.sock", "tcp://0.0.0.0:12376"]}
    drop_in = written[HOSTS_DROP_IN_PATH]["content"].splitlines()
    assert drop_in[:2] == ["[Service]", "ExecStart="], "Debian's -H fd:// is cleared (it conflicts with hosts)"
    assert drop_in[2].startswith("ExecStart=dockerd ") and "-H" not in drop_in[2]


def test_env_values_round_trip_through_bash() -> None:
    names = ["COVE_COE", "COVE_CLUSTER_ID", "COVE_CLUSTER_NAME", "COVE_NODE_NAME", "COVE_NODEGROUP", "COVE_ROLE",
             "COVE_FIRST_MASTER", "API_HOST", "API_PORT", "API_ENDPOINT", "SWARM_ENDPOINT", "NODE_ADDRESS",
             "DOCKER_VOLUME_DEVICE"]
    first = source(files(parse(DRIVER.user_data(node("first", docker_volume_device="/dev/vdb"))))[ENV_PATH]
                   ["content"], names)
    assert first == {
        "COVE_COE": "swarm-mode", "COVE_CLUSTER_ID": CLUSTER, "COVE_CLUSTER_NAME": "demo",
        "COVE_NODE_NAME": "demo-9b0c7f3e-first-0", "COVE_NODEGROUP": "default-master", "COVE_ROLE": "master",
        "COVE_FIRST_MASTER": "true", "API_HOST": "10.0.0.5", "API_PORT": "2376", "API_ENDPOINT": "10.0.0.5:2376",
        "SWARM_ENDPOINT": "10.0.0.5:2377", "NODE_ADDRESS": "10.0.0.5", "DOCKER_VOLUME_DEVICE": "/dev/vdb"}
    worker = source(files(parse(DRIVER.user_data(node("worker", api_host="fd00::5", node_address=None))))
                    [ENV_PATH]["content"], names)
    assert worker["COVE_ROLE"] == "worker" and worker["COVE_FIRST_MASTER"] == "false"
    assert worker["API_ENDPOINT"] == "[fd00::5]:2376" and worker["SWARM_ENDPOINT"] == "[fd00::5]:2377"
    assert worker["NODE_ADDRESS"] == "" and worker["DOCKER_VOLUME_DEVICE"] == ""
    master = source(files(parse(DRIVER.user_data(node("master"))))[ENV_PATH]["content"], ["COVE_FIRST_MASTER"])
    assert master == {"COVE_FIRST_MASTER": "false"}


def test_init_on_the_first_manager_and_joins_through_the_api_address() -> None:
    """The script's decisions, read from the constant: init with the node's own address; joins read the token
    from the manager at the API address with the node's certificate, then join through API_HOST:2377."""
    assert 'docker swarm init --advertise-addr "$address"' in BOOTSTRAP_SCRIPT
    assert 'join_swarm manager "$address"' in BOOTSTRAP_SCRIPT and 'join_swarm worker "$address"' in BOOTSTRAP_SCRIPT
    assert 'manager swarm join-token -q "$kind"' in BOOTSTRAP_SCRIPT
    assert '--tlscert "$TLS_DIR/server-cert.pem"' in BOOTSTRAP_SCRIPT and '-H "tcp://${API_ENDPOINT}"' in BOOTSTRAP_SCRIPT
    assert 'docker swarm join --token "$token" --advertise-addr "$address" "$SWARM_ENDPOINT"' in BOOTSTRAP_SCRIPT
    assert '[ "$(swarm_state)" = active ]' in BOOTSTRAP_SCRIPT, "a node already in the swarm does nothing"
    assert "apt-get install -y -q ca-certificates docker.io" in BOOTSTRAP_SCRIPT


def test_the_container_volume_is_mounted_where_docker_keeps_its_data() -> None:
    doc = parse(DRIVER.user_data(node("worker", docker_volume_device="/dev/vdb")))
    assert doc["mounts"] == [["/dev/vdb", "/var/lib/docker", "ext4", "defaults,nofail,x-systemd.device-timeout=120",
                              "0", "2"]]
    assert doc["fs_setup"] == [{"label": "docker", "filesystem": "ext4", "device": "/dev/vdb", "partition": "none",
                                "overwrite": False}]
    assert "mounts" not in parse(DRIVER.user_data(node("worker")))


def test_proxies_reach_the_engine() -> None:
    written = files(parse(DRIVER.user_data(node("master", http_proxy="http://proxy:3128", no_proxy="10.1.0.0/16"))))
    assert written[PROXY_DROP_IN_PATH]["content"] == f"[Service]\nEnvironmentFile={PROXY_ENV_PATH}\n"
    env = source(written[PROXY_ENV_PATH]["content"], ["HTTP_PROXY", "https_proxy", "NO_PROXY"])
    assert env["HTTP_PROXY"] == "http://proxy:3128" and env["https_proxy"] == ""
    no_proxy = env["NO_PROXY"].split(",")
    assert no_proxy[:3] == ["10.1.0.0/16", "localhost", "127.0.0.1"]
    assert {"10.0.0.5", "10.0.0.9"} <= set(no_proxy), "the API host and the node itself are never proxied"
    assert PROXY_DROP_IN_PATH not in files(parse(DRIVER.user_data(node("master"))))


def test_hostile_names_labels_and_proxies_arrive_as_data(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = hostile(marker)
    n = node("master", cluster_name=evil, node_name=f"demo{evil}", nodegroup=evil, http_proxy=evil,
             https_proxy=evil, no_proxy=evil, labels={"availability_zone": evil, "docker_volume_type": "fast",
                                                     "unknown": evil})
    text = DRIVER.user_data(n)
    assert_valid_cloud_config(text, tmp_path)
    written = files(parse(text))
    holders = {path for path, f in written.items() if "$(touch" in f["content"] or "`touch" in f["content"]}
    assert holders == {ENV_PATH, PROXY_ENV_PATH}, "the hostile text is only in the two environment files"
    assert written[SCRIPT_PATH]["content"] == BOOTSTRAP_SCRIPT
    env = source(written[ENV_PATH]["content"], ["COVE_CLUSTER_NAME", "COVE_NODE_NAME", "COVE_NODEGROUP",
                                                 "HTTP_PROXY", "HTTPS_PROXY"], tmp_path)
    assert env == {"COVE_CLUSTER_NAME": evil, "COVE_NODE_NAME": f"demo{evil}", "COVE_NODEGROUP": evil,
                   "HTTP_PROXY": evil, "HTTPS_PROXY": evil}
    proxy = source(written[PROXY_ENV_PATH]["content"], ["HTTP_PROXY", "https_proxy"], tmp_path)
    assert proxy == {"HTTP_PROXY": evil, "https_proxy": evil}
    # SC2016 says "expressions don't expand in single quotes": exactly what keeps them data
    assert_shellcheck_clean(written[ENV_PATH]["content"], tmp_path, "node.env", "--shell=bash",
                            "--exclude=SC2034,SC2016")
    assert not marker.exists(), "no command substitution ran"
    for label in ("swarm_strategy", "docker_volume_type"):
        with pytest.raises(ValueError, match=label):
            DRIVER.user_data(node("worker", labels={label: evil}))
    with pytest.raises(ValueError, match="api_host"):
        DRIVER.user_data(node("worker", api_host="10.0.0.5\n$(id)"))


# --------------------------------------------------------------------------- certificates and refusals


def test_a_node_without_its_certificate_is_refused() -> None:
    for kind in ("first", "master", "worker"):
        assert DRIVER.needs_server_certificate("master" if kind != "worker" else "worker")
        with pytest.raises(ValueError, match="its own TLS certificate"):
            DRIVER.user_data(node(kind, server_cert_pem=None))
        with pytest.raises(ValueError, match="its own TLS certificate"):
            DRIVER.user_data(node(kind, server_key_pem=None))
    assert not DRIVER.needs_ca_key("master") and not DRIVER.needs_ca_key("worker")


def test_certificates_that_would_not_work_are_refused() -> None:
    other_ca = make_ca("another cluster")
    foreign_cert, foreign_key = make_node_cert(other_ca)
    with pytest.raises(ValueError, match="not issued by the cluster CA"):
        DRIVER.user_data(node("worker", server_cert_pem=foreign_cert, server_key_pem=foreign_key))
    with pytest.raises(ValueError, match="not the key of server_cert_pem"):
        DRIVER.user_data(node("worker", server_key_pem=make_node_cert(CA_PAIR)[1]))
    server_only = make_node_cert(CA_PAIR, usages=(ExtendedKeyUsageOID.SERVER_AUTH,))
    with pytest.raises(ValueError, match="clientAuth"):
        DRIVER.user_data(node("master", server_cert_pem=server_only[0], server_key_pem=server_only[1]))
    with pytest.raises(ValueError, match="server_cert_pem is not a PEM certificate"):
        DRIVER.user_data(node("worker", server_cert_pem="garbage"))
    with pytest.raises(ValueError, match="server_key_pem"):
        DRIVER.user_data(node("worker", server_key_pem="garbage"))


def test_refusals() -> None:
    with pytest.raises(ValueError, match=r"never receives a CA's key \(ca_key_pem\)"):
        DRIVER.user_data(node("first", ca_key_pem=KEY))

    @dataclasses.dataclass(frozen=True)
    class WithEtcdCA(NodeContext):
        etcd_ca_key_pem: str | None = None

    with pytest.raises(ValueError, match=r"never receives a CA's key \(etcd_ca_key_pem\)"):
        DRIVER.user_data(WithEtcdCA(**{**dataclasses.asdict(node("first")), "etcd_ca_key_pem": KEY}))
    with pytest.raises(ValueError, match="flannel"):
        DRIVER.user_data(node("worker", network_driver="flannel"))
    with pytest.raises(ValueError, match="'calico'"):
        DRIVER.user_data(node("worker", network_driver="calico"))
    with pytest.raises(ValueError, match="first master"):
        DRIVER.user_data(node("worker", is_first_master=True))
    with pytest.raises(ValueError, match="etcd volume"):
        DRIVER.user_data(node("master", etcd_volume_device="/dev/vdc"))
    with pytest.raises(ValueError, match="node_address"):
        DRIVER.user_data(node("master", node_address="10.0.0.9; id"))
    with pytest.raises(ValueError, match="api_port"):
        DRIVER.user_data(node("master", api_port=0))
    with pytest.raises(ValueError, match="NUL"):
        DRIVER.user_data(node("worker", cluster_name="a\0b"))
    with pytest.raises(ValueError, match="swarm_strategy"):
        DRIVER.user_data(node("worker", labels={"swarm_strategy": "fastest"}))


def test_both_names_pick_the_swarm_driver() -> None:
    for coe in ("swarm-mode", "swarm"):
        driver = driver_for(coe)
        assert isinstance(driver, SwarmDriver) and driver.coe == "swarm-mode"


# --------------------------------------------------------------------------- port rules, API address, health


def rules(role: str, api_port: int = 2376, network_driver: str | None = "docker") -> set[tuple[Any, ...]]:
    return {(r.protocol, r.port_min, r.port_max, r.source)
            for r in DRIVER.port_rules(role, api_port=api_port, network_driver=network_driver)}  # type: ignore[arg-type]


def test_port_rules_per_role() -> None:
    common = {("tcp", 2376, 2376, "allowed"), ("tcp", 2376, 2376, "cluster"), ("tcp", 22, 22, "allowed"),
              ("tcp", 7946, 7946, "cluster"), ("udp", 7946, 7946, "cluster"), ("udp", 4789, 4789, "cluster")}
    assert rules("master") == common | {("tcp", 2377, 2377, "cluster")}
    assert rules("worker") == common, "workers only connect to the managers' 2377, they never serve it"
    assert rules("master", network_driver=None) == rules("master"), "docker is the default network driver"
    assert len(DRIVER.port_rules("master", api_port=2376, network_driver=None)) == 7, "no rule twice"
    moved = rules("master", api_port=12376)
    assert ("tcp", 12376, 12376, "allowed") in moved and ("tcp", 2376, 2376, "allowed") not in moved
    assert all(r.description for r in DRIVER.port_rules("worker", api_port=2376, network_driver=None))
    with pytest.raises(ValueError, match="flannel"):
        DRIVER.port_rules("master", api_port=2376, network_driver="flannel")
    with pytest.raises(ValueError):
        DRIVER.port_rules("master", api_port=70000, network_driver=None)
    with pytest.raises(ValueError, match="role"):
        DRIVER.port_rules("minion", api_port=2376, network_driver=None)  # type: ignore[arg-type]


def test_api_address_and_load_balancer() -> None:
    assert DRIVER.default_api_port == 2376
    assert DRIVER.api_address("127.24.4.9", 2376) == "tcp://127.24.4.9:2376"
    assert DRIVER.api_address("fd00::9", 2376) == "tcp://[fd00::9]:2376"
    assert DRIVER.load_balancer_ports(2376) == [2376, 2377]
    assert DRIVER.load_balancer_ports(443) == [443, 2377]


def test_health_checks_and_cluster_config() -> None:
    checks = {(c.name, c.role): c for c in DRIVER.health_checks()}
    assert set(checks) == {("swarm-managers", "cluster"), ("docker-engine", "master"), ("docker-engine", "worker")}
    assert checks[("docker-engine", "worker")].path == checks[("docker-engine", "master")].path == "/_ping"
    assert "quorum" in checks[("swarm-managers", "cluster")].description
    config = DRIVER.cluster_config()
    for word in ("DOCKER_HOST", "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY", "ca.pem", "cert.pem", "key.pem"):
        assert word in config


# --------------------------------------------------------------------------- with Cove's real certificates and dockerd

TOOLS_DOCKER = Path(__file__).resolve().parents[2] / ".venv" / "tools" / "docker" / "bin"
DOCKER_CLI = shutil.which("docker")
DOCKERD = shutil.which("dockerd") or (str(TOOLS_DOCKER / "dockerd") if (TOOLS_DOCKER / "dockerd").exists() else None)


def cove_node_tls(ca_cert_pem: str, ca_key_pem: bytes, name: str, addresses: list[str]) -> tuple[str, str]:
    """A node's certificate as Cove makes it: the provisioner's key and CSR, signed as the certs service signs it."""
    key_pem, csr_pem, sans = node_csr(name, addresses)
    cert = certs_ca.issue(ca_cert_pem, ca_key_pem, csr_pem, subject=certs_ca.node_subject(name),
                          sans=certs_ca.node_sans(sans), server=True)
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem


def test_the_certificates_cove_issues_are_what_the_driver_needs() -> None:
    ca_cert, ca_key = certs_ca.generate_ca("swarm-cluster")
    cert, key = cove_node_tls(ca_cert, ca_key, "demo-9b0c7f3e-master-0", ["10.0.0.5", "10.0.0.100"])
    written = files(parse(DRIVER.user_data(node("first", ca_cert_pem=ca_cert, server_cert_pem=cert,
                                                server_key_pem=key))))
    assert written[TLS_CERT_PATH]["content"] == cert and written[TLS_KEY_PATH]["content"] == key
    other_cert, other_key = certs_ca.generate_ca("another-cluster")
    foreign = cove_node_tls(other_cert, other_key, "demo-9b0c7f3e-master-0", ["10.0.0.5"])
    with pytest.raises(ValueError, match="not issued by the cluster CA"):
        DRIVER.user_data(node("first", ca_cert_pem=ca_cert, server_cert_pem=foreign[0], server_key_pem=foreign[1]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(DOCKER_CLI is None or DOCKERD is None,
                    reason="the docker CLI or dockerd is missing (`make venv` fetches Debian's docker.io dockerd)")
def test_a_real_engine_with_the_rendered_daemon_json_serves_the_nodes_own_certificate_as_a_client(
        tmp_path: Path) -> None:
    """dockerd 20.10 (Debian 12's docker.io) starts from the driver's daemon.json with no -H flag (as the drop-in
    leaves it), paths and listeners moved to a temporary directory and 127.0.0.1; a node's own certificate, used as
    the bootstrap's ``manager`` function uses it (``--tlsverify --tlscert server-cert.pem``), reads the engine's
    swarm state; another cluster's node certificate is refused."""
    assert DOCKERD is not None and DOCKER_CLI is not None
    ca_cert, ca_key = certs_ca.generate_ca("swarm-cluster")
    cert, key = cove_node_tls(ca_cert, ca_key, "demo-9b0c7f3e-first-0", ["127.0.0.1"])
    written = files(parse(DRIVER.user_data(node("first", ca_cert_pem=ca_cert, server_cert_pem=cert,
                                                server_key_pem=key, node_address="127.0.0.1"))))
    tls = tmp_path / "tls"
    tls.mkdir()
    for path in (TLS_CA_PATH, TLS_CERT_PATH, TLS_KEY_PATH):
        (tls / Path(path).name).write_text(written[path]["content"])
        (tls / Path(path).name).chmod(int(written[path]["permissions"], 8))
    config = json.loads(written[DAEMON_JSON_PATH]["content"])
    port = _free_port()
    assert config["hosts"] == ["unix:///var/run/docker.sock", "tcp://0.0.0.0:2376"]
    config["hosts"] = [f"unix://{tmp_path}/docker.sock", f"tcp://127.0.0.1:{port}"]  # loopback only, here
    for name in ("tlscacert", "tlscert", "tlskey"):
        config[name] = str(tls / Path(config[name]).name)
    (tmp_path / "daemon.json").write_text(json.dumps(config))
    log = tmp_path / "dockerd.log"
    env = {**os.environ, "PATH": f"{Path(DOCKERD).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [DOCKERD, "--config-file", str(tmp_path / "daemon.json"), "--iptables=false", "--bridge=none",
             "--storage-driver=vfs", "--data-root", str(tmp_path / "data"), "--exec-root", str(tmp_path / "exec"),
             "--pidfile", str(tmp_path / "dockerd.pid")],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def manager(tls_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [DOCKER_CLI, "--tlsverify", "--tlscacert", str(tls_dir / "ca.pem"), "--tlscert",
             str(tls_dir / "server-cert.pem"), "--tlskey", str(tls_dir / "server-key.pem"), "-H",
             f"tcp://127.0.0.1:{port}", *args],
            env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "DOCKER_CONFIG": str(tmp_path / "cfg")},
            capture_output=True, text=True, timeout=60, check=False)

    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                text = log.read_text(errors="replace")
                if "is not a known option" in text or "conflict" in text.lower():
                    pytest.fail(f"dockerd refused the driver's daemon.json: {text[-2000:]}")
                pytest.skip(f"dockerd cannot start here (exit {proc.returncode}): {text[-500:]}")
            info = manager(tls, "info", "--format", "{{.Swarm.LocalNodeState}}")
            if info.returncode == 0:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"dockerd did not answer within 60 s: {info.stderr} {log.read_text()[-1000:]}")
            time.sleep(0.2)
        assert info.stdout.strip() == "inactive", "the node's certificate is a client the engine accepts"
        other_cert, other_key = certs_ca.generate_ca("another-cluster")
        foreign = tmp_path / "foreign"
        foreign.mkdir()
        (foreign / "ca.pem").write_text(ca_cert)  # it trusts the engine; the engine must not trust it
        foreign_cert, foreign_key = cove_node_tls(other_cert, other_key, "x", ["127.0.0.1"])
        (foreign / "server-cert.pem").write_text(foreign_cert)
        (foreign / "server-key.pem").write_text(foreign_key)
        refused = manager(foreign, "info")
        assert refused.returncode != 0 and "Swarm" not in refused.stdout, refused.stdout
        assert "tls" in refused.stderr.lower() or "eof" in refused.stderr.lower(), refused.stderr
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
