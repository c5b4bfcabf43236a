"""Site add-ons (services/provisioner/drivers/addons.py): loading the operator's fragments, the merge rules, and
every driver's user data with the shipped CVMFS and EOS fragments still passing ``cloud-init schema`` (pure, plus the
real cloud-init from .venv/tools)."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from proto.labels import DEFAULT_NETWORK_DRIVERS
from proto.requests import AddonCatalog, ListAddons, decode_request, encode_request
from services.provisioner.drivers import DRIVERS
from services.provisioner.drivers.addons import (
    DEFAULT_DIR,
    Catalog,
    Fragment,
    apply,
    directory_of,
    load_fragment,
)
from services.provisioner.drivers.base import NodeContext
from tests.provisioner.userdata_checks import assert_valid_cloud_config, parse

CLUSTER = "0b6f3b8e-6a43-4d0e-9a53-5d1c2f0a1e77"
SHIPPED = Catalog.load(DEFAULT_DIR)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _certs() -> tuple[str, str, str, str]:
    """A CA and a server certificate it signed: (ca_pem, ca_key_pem, cert_pem, key_pem)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "addons-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now)
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "node")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("10.0.0.5"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return ca.public_bytes(pem).decode(), _pem_key(ca_key), leaf.public_bytes(pem).decode(), _pem_key(key)


CA, CA_KEY, CERT, KEY = _certs()


def context(coe: str, kind: str, labels: dict[str, str] | None = None) -> NodeContext:
    """``kind``: ``first`` (the master that initialises the control plane), ``master`` (one that joins), ``worker``."""
    driver = DRIVERS[coe]()
    role = "worker" if kind == "worker" else "master"
    cert = driver.needs_server_certificate(role)
    ca_key = driver.needs_ca_key(role) if hasattr(driver, "needs_ca_key") else role == "master"
    return NodeContext(
        cluster_id=CLUSTER, cluster_name="demo", node_name=f"demo-0b6f3b8e-{kind}-0", role=role,
        nodegroup=f"default-{role}", is_first_master=kind == "first", api_host="10.0.0.5",
        api_port=driver.default_api_port, ca_cert_pem=CA, bootstrap_token="abcdef.0123456789abcdef",
        labels=labels or {}, network_driver=DEFAULT_NETWORK_DRIVERS[coe], master_addresses=("10.0.0.5",),
        ca_key_pem=CA_KEY if ca_key else None, node_address="10.0.0.5" if kind == "first" else "10.0.0.9",
        server_cert_pem=CERT if cert else None, server_key_pem=KEY if cert else None,
    )


def fragment(name: str, text: str, tmp_path: Path) -> Fragment:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return load_fragment(path)


def test_the_shipped_catalog_is_cvmfs_and_eos_and_each_fragment_is_valid_cloud_config(tmp_path: Path) -> None:
    assert SHIPPED.names == ["cvmfs", "eos"]
    for name, frag in SHIPPED.fragments.items():
        text = frag.path.read_text()
        assert text.startswith("#cloud-config\n# Site add-on"), f"{name}: a comment header says what it does"
        assert_valid_cloud_config(text, tmp_path)
    cvmfs = SHIPPED.fragments["cvmfs"].config
    (local,) = [f for f in cvmfs["write_files"] if f["path"] == "/etc/cvmfs/default.local"]
    assert "CVMFS_REPOSITORIES=" in local["content"] and "CVMFS_HTTP_PROXY=" in local["content"]
    assert any("cvmrepo" in str(cmd) for cmd in cvmfs["runcmd"]), "the client comes from CERN's repository"
    eos = SHIPPED.fragments["eos"].config
    assert any(f["path"].startswith("/etc/eos/fuse.") for f in eos["write_files"])
    assert any("eos-fusex" in str(cmd) for cmd in eos["runcmd"]) and any("eosxd" in str(cmd) for cmd in eos["runcmd"])


ROLES = [(coe, kind) for coe in sorted(DRIVERS) for kind in ("first", "master", "worker")]


@pytest.mark.parametrize(("coe", "kind"), ROLES)
def test_every_role_of_every_driver_with_the_addons_passes_cloud_init_schema(coe: str, kind: str,
                                                                             tmp_path: Path) -> None:
    driver = DRIVERS[coe]()
    labels = {"addons": "cvmfs, eos"}
    plain = parse(driver.user_data(context(coe, kind, labels)))
    merged_text = SHIPPED.render(driver.user_data(context(coe, kind, labels)), labels)
    assert_valid_cloud_config(merged_text, tmp_path)
    merged = parse(merged_text)
    cvmfs, eos = SHIPPED.fragments["cvmfs"].config, SHIPPED.fragments["eos"].config
    # The driver's own files and commands first, unchanged, then each add-on's in the label's order.
    for key in ("write_files", "runcmd"):
        ours = plain.get(key, [])
        assert merged[key] == [*ours, *cvmfs.get(key, []), *eos.get(key, [])], key
    assert {k: v for k, v in merged.items() if k not in ("write_files", "runcmd")} == \
        {k: v for k, v in plain.items() if k not in ("write_files", "runcmd")}
    assert "/etc/cvmfs/default.local" in {f["path"] for f in merged["write_files"]}
    # Without the label the driver's user data is untouched.
    assert SHIPPED.render(driver.user_data(context(coe, kind)), {}) == driver.user_data(context(coe, kind))


DRIVER_DOC = """#cloud-config
hostname: node-1
package_update: true
packages: [containerd]
write_files:
  - {path: /etc/cove/node.env, content: "A=1\\n", permissions: "0600"}
bootcmd: [[mkdir, -p, /etc/cove]]
runcmd: [[/usr/local/bin/cove-bootstrap]]
mounts: [[/dev/vdb, /var/lib/containerd, ext4, defaults, "0", "2"]]
apt:
  sources:
    kubernetes: {source: "deb https://pkgs.k8s.io/ /"}
"""


def test_lists_are_appended_after_the_drivers_and_mappings_merged(tmp_path: Path) -> None:
    one = fragment("one", """#cloud-config
packages: [autofs]
write_files: [{path: /etc/one, content: "1"}]
bootcmd: [[echo, one]]
runcmd: [[echo, one]]
mounts: [[server:/export, /mnt/one, nfs, defaults, "0", "0"]]
apt:
  sources:
    one: {source: "deb https://one.example/ stable main"}
package_update: true
""", tmp_path)
    two = fragment("two", "#cloud-config\nruncmd: [[echo, two]]\nntp: {enabled: true}\n", tmp_path)
    doc = yaml.safe_load(apply(DRIVER_DOC, [one, two]))
    assert doc["packages"] == ["containerd", "autofs"]
    assert [f["path"] for f in doc["write_files"]] == ["/etc/cove/node.env", "/etc/one"]
    assert doc["bootcmd"] == [["mkdir", "-p", "/etc/cove"], ["echo", "one"]]
    assert doc["runcmd"] == [["/usr/local/bin/cove-bootstrap"], ["echo", "one"], ["echo", "two"]]
    assert doc["mounts"][1][1] == "/mnt/one" and len(doc["mounts"]) == 2
    assert set(doc["apt"]["sources"]) == {"kubernetes", "one"}
    assert doc["package_update"] is True, "a scalar equal to the driver's is no conflict"
    assert doc["ntp"] == {"enabled": True} and doc["hostname"] == "node-1"
    text = apply(DRIVER_DOC, [one, two])
    assert text.startswith("#cloud-config\n")
    assert_valid_cloud_config(text, tmp_path)
    assert apply(DRIVER_DOC, []) != DRIVER_DOC and yaml.safe_load(apply(DRIVER_DOC, [])) == yaml.safe_load(DRIVER_DOC)


@pytest.mark.parametrize(("text", "words"), [
    ("#cloud-config\nhostname: elsewhere\n", ["'bad'", "hostname", "'elsewhere'", "'node-1'"]),
    ("#cloud-config\napt: {sources: {kubernetes: {source: 'deb http://mirror/ /'}}}\n",
     ["'bad'", "apt.sources.kubernetes.source"]),
    ("#cloud-config\nruncmd: {a: b}\n", ["'bad'", "runcmd"]),
    ("#cloud-config\npackage_update: false\n", ["'bad'", "package_update"]),
])
def test_a_conflict_with_the_drivers_value_names_the_addon_and_the_key(text: str, words: list[str],
                                                                       tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        apply(DRIVER_DOC, [fragment("bad", text, tmp_path)])
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize(("name", "text", "why"), [
    ("list", "#cloud-config\n- runcmd\n", "mapping"),
    ("scalar", "#cloud-config\njust text\n", "mapping"),
    ("empty", "#cloud-config\n", "mapping"),
    ("noheader", "runcmd: [[echo, hi]]\n", "#cloud-config"),
    ("script", "#!/bin/sh\necho hi\n", "#cloud-config"),
    ("broken", "#cloud-config\nruncmd: [unclosed\n", "not YAML"),
    ("Upper", "#cloud-config\nruncmd: [[echo, hi]]\n", "must match"),
    ("-dash", "#cloud-config\nruncmd: [[echo, hi]]\n", "must match"),
])
def test_a_file_that_is_not_an_addon_is_refused_at_load_with_the_file_named(name: str, text: str, why: str,
                                                                            tmp_path: Path) -> None:
    (tmp_path / "fine.yaml").write_text("#cloud-config\nruncmd: [[echo, fine]]\n")
    bad = tmp_path / f"{name}.yaml"
    bad.write_text(text)
    with pytest.raises(ValueError) as info:
        Catalog.load(tmp_path)
    assert str(bad) in str(info.value) and why in str(info.value)


def test_catalog_selection_directory_and_rpc_answer(tmp_path: Path) -> None:
    (tmp_path / "b-two.yaml").write_text("#cloud-config\nruncmd: [[echo, two]]\n")
    (tmp_path / "a_one.yaml").write_text("#cloud-config\nruncmd: [[echo, one]]\n")
    (tmp_path / "README.md").write_text("not an add-on: only <name>.yaml files are\n")
    catalog = Catalog.load(tmp_path)
    assert catalog.names == ["a_one", "b-two"]
    assert [f.name for f in catalog.select({"addons": "b-two, a_one,,b-two"})] == ["b-two", "a_one"]
    assert catalog.select({"other": "x"}) == []
    with pytest.raises(ValueError, match="Unknown add-on 'nope'; this cloud offers: a_one, b-two"):
        catalog.select({"addons": "a_one,nope"})
    assert Catalog.load(tmp_path / "missing").names == []
    assert directory_of({"COVE_PROVISIONER_ADDONS_DIR": str(tmp_path)}) == tmp_path
    assert directory_of({}) == DEFAULT_DIR == Path(__file__).resolve().parents[2] / "deploy" / "addons"


async def test_the_rpc_answers_the_catalogs_names(tmp_path: Path) -> None:
    (tmp_path / "only.yaml").write_text("#cloud-config\nruncmd: [[echo, one]]\n")
    reply = await Catalog.load(tmp_path).answer(decode_request(encode_request(ListAddons())))
    assert reply == AddonCatalog(names=["only"])


async def test_the_provisioner_service_answers_the_rpc_from_its_directory_and_refuses_a_bad_one(
        tmp_path: Path) -> None:
    from proto import subjects
    from services.provisioner.service import build_service
    from services.runtime.service import ServiceConfig

    (tmp_path / "site.yaml").write_text("#cloud-config\nruncmd: [[echo, site]]\n")
    config = ServiceConfig(service="provisioner", extra={"COVE_PROVISIONER_ADDONS_DIR": str(tmp_path)})
    svc = build_service(config)
    (handler,) = [h for subject, h, queue in svc._rpc_specs
                  if subject == subjects.PROVISIONER_ADDONS == "cove.rpc.provisioner.addons" and queue == "provisioner"]
    assert await handler(ListAddons()) == AddonCatalog(names=["site"])
    (tmp_path / "broken.yaml").write_text("#cloud-config\n- not a mapping\n")
    with pytest.raises(ValueError, match=str(tmp_path / "broken.yaml")):
        build_service(config)
