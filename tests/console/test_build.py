"""The committed console build (console/dist, served by the API: make run needs no Node) is the build of the
committed sources: a rebuild into a temporary directory gives the same files, byte for byte, and the sources
type-check. Skipped where the console's npm packages are not installed (`make venv` installs them)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

CONSOLE = REPO_ROOT / "console"
NPX = shutil.which("npx")

pytestmark = pytest.mark.skipif(NPX is None or not (CONSOLE / "node_modules" / "vite").is_dir(),
                                reason="no Node.js or console/node_modules: run `make venv` (npm ci in console/)")


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_committed_build_is_the_build_of_the_sources(tmp_path: Path) -> None:
    assert NPX is not None
    check = subprocess.run([NPX, "tsc", "--noEmit"], cwd=CONSOLE, capture_output=True, text=True, timeout=300, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    out = tmp_path / "dist"
    build = subprocess.run([NPX, "vite", "build", "--outDir", str(out), "--emptyOutDir"], cwd=CONSOLE,
                           capture_output=True, text=True, timeout=300, check=False)
    assert build.returncode == 0, build.stdout + build.stderr
    built, committed = files(out), files(CONSOLE / "dist")
    assert sorted(built) == sorted(committed), "console/dist is stale: run `make console` and commit console/dist"
    assert built == committed, "console/dist is stale: run `make console` and commit console/dist"
