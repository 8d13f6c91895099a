"""The distribution as a user gets it: ``python -m build`` of a copy of the checkout's tracked
files gives an sdist and a wheel named ``dsm-uffd``, the wheel puts nothing but ``dsm`` at the top
level of site-packages, and every file of the package (the trace page's static files too) is in
it. (``.ci/run`` then installs that wheel into a fresh virtual environment and runs ``dsm doctor``
and ``dsm demo`` from another directory.)"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DIST_NAME = "dsm-uffd"
#: building the sdist, then the wheel from it, in isolated environments
BUILD_TIMEOUT_S = 240


def _tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True,
                         timeout=30).stdout.decode()
    return [f for f in out.split("\0") if f and (ROOT / f).is_file()]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """(sdist, wheel) built from a copy of the tracked files (the checkout is left alone)."""
    src = tmp_path_factory.mktemp("src")
    for f in _tracked_files():
        dest = src / f
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes((ROOT / f).read_bytes())
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(src)],
                          capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return sdist, wheel


def test_distribution_name_is_not_the_index_s_other_dsm():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == DIST_NAME
    assert set(project["scripts"]) == {"dsm", "dsm-node", "dsm-entrypoint"}
    readme = (ROOT / "README.md").read_text()
    assert f"pip install {DIST_NAME}" in readme
    assert DIST_NAME in (ROOT / "Dockerfile").read_text()


@pytest.mark.timeout(BUILD_TIMEOUT_S + 30)
def test_wheel_puts_only_dsm_at_the_top_level(built):
    _, wheel = built
    assert wheel.name.startswith("dsm_uffd-")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names}
    assert top == {"dsm", f"dsm_uffd-{wheel.name.split('-')[1]}.dist-info"}, top


@pytest.mark.timeout(BUILD_TIMEOUT_S + 30)
def test_wheel_holds_every_file_of_the_package(built):
    _, wheel = built
    names = set(zipfile.ZipFile(wheel).namelist())
    package = [f for f in _tracked_files() if f.startswith("dsm/")]
    assert "dsm/viz/static/view.js" in package
    missing = [f for f in package if f not in names]
    assert missing == []
    for module in ("dsm/workloads/jacobi.py", "dsm/programs/node.py", "dsm/launchers.py"):
        assert module in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "dsm-node = dsm.programs.node:main" in text


@pytest.mark.timeout(BUILD_TIMEOUT_S + 30)
def test_sdist_builds_the_same_package(built):
    sdist, _ = built
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in ("pyproject.toml", "README.md", "dsm/__init__.py", "dsm/viz/static/view.html"):
        assert needed in names, needed
