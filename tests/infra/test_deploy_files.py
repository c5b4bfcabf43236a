"""What deploy/ ships for production: a systemd unit per service (none for the devcloud) and one container image."""

from __future__ import annotations

import configparser
import tomllib

from deploy.local.stack import SERVICES
from services.runtime.service import EX_CONFIG
from tests.conftest import REPO_ROOT

SYSTEMD = REPO_ROOT / "deploy/systemd"


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((SYSTEMD / name).read_text())
    return parser


def test_a_unit_per_service_runs_its_console_script_in_production() -> None:
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert sorted(p.name for p in SYSTEMD.glob("*.service")) == sorted(f"cove-{s.name}@.service" for s in SERVICES)
    for spec in SERVICES:
        service = unit(f"cove-{spec.name}@.service")["Service"]
        assert service["ExecStart"] == f"/opt/cove/bin/{spec.script}" and spec.script in scripts
        assert service["Environment"] == "COVE_ENV=production"
        assert service["RestartPreventExitStatus"] == str(EX_CONFIG)  # a refused secret is not restarted
        assert service["User"] == "cove"
    assert not any("devcloud" in p.read_text().split("[Unit]")[1] for p in SYSTEMD.glob("*.service"))


def test_the_container_image_runs_any_service_in_production() -> None:
    text = (REPO_ROOT / "deploy/container/Containerfile").read_text()
    assert "COVE_ENV=production" in text
    for spec in SERVICES:
        assert spec.script in text
    assert "cove-devcloud" not in text
