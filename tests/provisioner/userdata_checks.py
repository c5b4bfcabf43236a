"""The real tools every driver's user data is checked with, and the helpers that read it back.

``cloud-init schema`` and ``shellcheck`` come from Debian's packages, unpacked by ``make venv`` into .venv/tools (no
root needed). ``source`` reads an environment file the way a node does: sourced by bash, the values printed back.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".venv" / "tools"
CLOUD_INIT = TOOLS / "usr" / "bin" / "cloud-init"
CLOUD_INIT_PYTHONPATH = TOOLS / "usr" / "lib" / "python3" / "dist-packages"
SHELLCHECK = TOOLS / "usr" / "bin" / "shellcheck"


def tool(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"{path} is missing: `make venv` installs cloud-init and shellcheck into {TOOLS}")
    return path


def cloud_init_schema(path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tool(CLOUD_INIT_PYTHONPATH))}
    return subprocess.run([sys.executable, str(tool(CLOUD_INIT)), "schema", "--config-file", str(path)],
                          env=env, capture_output=True, text=True, timeout=120, check=False)


def shellcheck(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(tool(SHELLCHECK)), *args, str(path)], capture_output=True, text=True, timeout=120,
                          check=False)


def assert_valid_cloud_config(text: str, tmp_path: Path) -> None:
    """``text`` passes ``cloud-init schema``."""
    path = tmp_path / "user-data.yaml"
    path.write_text(text)
    result = cloud_init_schema(path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid cloud-config" in result.stdout


def assert_shellcheck_clean(text: str, tmp_path: Path, name: str, *args: str) -> None:
    """``text`` (a script, or with ``--shell=bash`` an environment file) passes shellcheck."""
    path = tmp_path / name
    path.write_text(text)
    result = shellcheck(path, *args)
    assert result.returncode == 0, f"{name}:\n{result.stdout}"


def parse(text: str) -> dict[str, Any]:
    assert text.startswith("#cloud-config\n")
    doc = yaml.safe_load(text)
    assert isinstance(doc, dict)
    return doc


def files(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in doc["write_files"]}


def source(env_text: str, names: list[str], tmp: Path | None = None) -> dict[str, str]:
    """Source ``env_text`` in ``bash -c`` with ``set -u`` and read the named variables back (NUL-separated)."""
    script = 'set -eu; . "$1"; shift; for n in "$@"; do printf "%s\\0" "${!n}"; done'
    folder = tmp or Path(os.environ.get("TMPDIR", "/tmp"))
    path = folder / f"cove-env-{os.getpid()}-{abs(hash(env_text))}"
    path.write_text(env_text)
    try:
        out = subprocess.run(["bash", "-c", script, "bash", str(path), *names], capture_output=True, check=True,
                             timeout=30).stdout.decode()
    finally:
        path.unlink()
    return dict(zip(names, out.split("\0")[:-1], strict=True))


def hostile(marker: Path) -> str:
    """Text that would run ``touch marker`` if any shell, YAML or systemd reader took it as code."""
    return (f"x'\"; $(touch {marker}) `touch {marker}` ${{HOME}} \\\n"
            f"line two: - [a] {{b: c}} # &anchor *alias ! % @ \r\t\x1b[31m \u2028 é ; touch {marker}")
