"""``dsm doctor``: real runs of the command, as this user and with privileges taken away.

The refused runs use ``setpriv`` (util-linux): once dropping only CAP_SYS_PTRACE from root, once as
``nobody`` without any capability. ``nobody`` must be able to execute the interpreter and import
``dsm``: the package is copied to a world-readable temporary directory, and when this interpreter
lives where ``nobody`` cannot reach it (e.g. under /root/.pyenv) a system python3 is used instead.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from dsm import doctor

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 30
SETPRIV = shutil.which("setpriv")
DROP_PTRACE = ["--bounding-set=-sys_ptrace", "--inh-caps=-sys_ptrace"]
AS_NOBODY = [
    "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all",
]


def _cap_eff() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def _needs_setpriv_as_root() -> None:
    if SETPRIV is None:
        pytest.skip("setpriv (util-linux) is not installed: cannot drop privileges for the test")
    if os.geteuid() != 0 or not _cap_eff() >> doctor.CAP_SYS_PTRACE & 1:
        pytest.skip("the test runner is not root with CAP_SYS_PTRACE: nothing to take away")


def _sysctl() -> int | None:
    try:
        return int(Path(doctor.SYSCTL_PATH).read_text())
    except (OSError, ValueError):
        return None


def _run(
    *args: str,
    prefix: list[str] | None = None,
    python: str = sys.executable,
    pythonpath: Path = REPO,
    env: dict[str, str] | None = None,
    cwd: Path = REPO,
) -> subprocess.CompletedProcess:
    if env is None:
        env = dict(os.environ)
    env = dict(env, PYTHONPATH=str(pythonpath), PYTHONDONTWRITEBYTECODE="1", COLUMNS="120")
    return subprocess.run(
        [*(prefix or []), python, "-s", "-m", "dsm", "doctor", *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S,
    )


def _show(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def _verdict(stdout: str) -> str:
    """The last line, after checking it is the one and only verdict line."""
    lines = stdout.rstrip("\n").splitlines()
    verdicts = [line for line in lines if line.startswith("verdict:")]
    assert verdicts == [lines[-1]], "exactly one verdict line, and it is the last"
    return lines[-1]


def _rows(stdout: str) -> dict[str, str]:
    """check name -> "ok" / "FAIL", from the printed table."""
    rows = {}
    for name in doctor.CHECK_NAMES:
        match = re.search(rf"^{re.escape(name)}\s+(ok|FAIL)\s", stdout, re.MULTILINE)
        assert match, f"no row for {name!r}"
        rows[name] = match.group(1)
    return rows


def _json_checks(proc: subprocess.CompletedProcess) -> dict[str, dict]:
    data = json.loads(proc.stdout)
    assert set(data) == {"ok", "verdict", "checks"}
    checks = {c["name"]: c for c in data["checks"]}
    assert [c["name"] for c in data["checks"]] == list(doctor.CHECK_NAMES)
    for check in data["checks"]:
        assert set(check) == {"name", "ok", "detail", "fix"}
        assert isinstance(check["ok"], bool) and check["detail"]
        assert (check["fix"] == "") == check["ok"], check
    assert data["ok"] == all(c["ok"] for c in data["checks"])
    assert data["verdict"].startswith("verdict: OK" if data["ok"] else "verdict: FAIL")
    assert (proc.returncode == 0) == data["ok"]
    return checks


# --- in process ---------------------------------------------------------------------------------
def test_run_checks_returns_frozen_rows_in_order():
    results = doctor.run_checks()
    assert [r.name for r in results] == list(doctor.CHECK_NAMES)
    for r in results:
        assert isinstance(r, doctor.CheckResult) and r.detail
        assert (r.fix == "") == r.ok, r
    with pytest.raises(dataclasses.FrozenInstanceError):
        results[0].ok = False  # type: ignore[misc]
    text = doctor.render_text(results)
    assert _verdict(text) == doctor.verdict(results)


def test_verdict_line_names_the_failed_checks():
    rows = [doctor.CheckResult("a", True, "fine"), doctor.CheckResult("b", False, "bad", "do x")]
    assert doctor.verdict(rows[:1]).startswith("verdict: OK")
    line = doctor.verdict(rows)
    assert line.startswith("verdict: FAIL") and "(b)" in line
    text = doctor.render_text(rows)
    assert "[b] do x" in text and _verdict(text) == line


def test_kernel_version_parsing():
    assert doctor.kernel_version("6.18.44-fc-v595") == (6, 18)
    assert doctor.kernel_version("5.4.0-150-generic") == (5, 4)
    assert doctor.kernel_version("weird") is None


# --- real runs on this machine ------------------------------------------------------------------
def test_doctor_ok_on_this_machine():
    proc = _run()
    assert proc.returncode == 0, _show(proc)
    assert set(_rows(proc.stdout).values()) == {"ok"}, _show(proc)
    assert _verdict(proc.stdout).startswith("verdict: OK"), _show(proc)


def test_doctor_json_parses():
    proc = _run("--json")
    checks = _json_checks(proc)
    assert proc.returncode == 0, _show(proc)
    assert all(c["ok"] for c in checks.values())
    assert "EVENT_FORK" in checks[doctor.CHECK_API]["detail"]


# --- refused runs -------------------------------------------------------------------------------
def test_root_without_cap_sys_ptrace_fails_on_event_fork():
    """Root keeps /dev/userfaultfd (its file mode is the only gate), loses the syscall when the
    sysctl is 0, and the kernel refuses EVENT_FORK: no node."""
    _needs_setpriv_as_root()
    prefix = [SETPRIV, *DROP_PTRACE, "--"]
    proc = _run("--json", prefix=prefix)
    assert proc.returncode != 0, _show(proc)
    checks = _json_checks(proc)
    assert not checks[doctor.CHECK_CAP]["ok"]
    assert not checks[doctor.CHECK_FORK]["ok"]
    assert "SYS_PTRACE" in checks[doctor.CHECK_FORK]["fix"]
    open_detail = checks[doctor.CHECK_OPEN]["detail"]
    if os.path.exists("/dev/userfaultfd"):
        assert "device: yes" in open_detail, open_detail
        assert "refused (EPERM)" in checks[doctor.CHECK_FORK]["detail"]
    if _sysctl() == 0:
        assert "syscall: no (EPERM" in open_detail, open_detail

    text = _run(prefix=prefix)
    assert text.returncode == proc.returncode, _show(text)
    assert _verdict(text.stdout).startswith("verdict: FAIL"), _show(text)
    rows = _rows(text.stdout)
    assert rows[doctor.CHECK_CAP] == rows[doctor.CHECK_FORK] == "FAIL"
    assert "to fix:" in text.stdout and "SYS_PTRACE" in text.stdout


@pytest.fixture
def nobody_python():
    """(interpreter, directory holding a world-readable copy of dsm) usable by uid 65534."""
    _needs_setpriv_as_root()
    copy = Path(tempfile.mkdtemp(prefix="dsm-doctor-nobody-"))
    try:
        shutil.copytree(REPO / "dsm", copy / "dsm", ignore=shutil.ignore_patterns("__pycache__"))
        for path in [copy, *copy.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        candidates = [sys.executable, os.path.realpath(sys.executable)]
        system = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
        if system:
            candidates.append(system)
        env = _nobody_env()
        tried = []
        for python in dict.fromkeys(candidates):
            probe = subprocess.run(
                [SETPRIV, *AS_NOBODY, "--", python, "-s", "-c",
                 "import sys, dsm.doctor; assert sys.version_info >= (3, 11)"],
                env=dict(env, PYTHONPATH=str(copy)), cwd=copy, capture_output=True, text=True,
                timeout=TIMEOUT_S,
            )
            if probe.returncode == 0:
                yield python, copy
                return
            tried.append(f"{python}: {(probe.stderr.strip().splitlines() or ['?'])[-1]}")
        pytest.skip("no python that uid 65534 can run with dsm importable: " + "; ".join(tried))
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def _nobody_env() -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/"}


def test_nobody_cannot_run_a_node(nobody_python):
    """As nobody without capabilities: /dev/userfaultfd (0600 root) refuses, the syscall refuses
    with vm.unprivileged_userfaultfd=0, EVENT_FORK refuses; the fixes name the remedies."""
    python, copy = nobody_python
    prefix = [SETPRIV, *AS_NOBODY, "--"]
    run = dict(prefix=prefix, python=python, pythonpath=copy, env=_nobody_env(), cwd=copy)
    proc = _run("--json", **run)
    assert proc.returncode != 0, _show(proc)
    checks = _json_checks(proc)
    assert not checks[doctor.CHECK_CAP]["ok"]
    assert not checks[doctor.CHECK_FORK]["ok"]
    assert "SYS_PTRACE" in checks[doctor.CHECK_FORK]["fix"]
    try:
        device_mode = os.stat("/dev/userfaultfd").st_mode
    except FileNotFoundError:
        device_mode = None
    device_closed = device_mode is None or device_mode & 0o006 != 0o006
    if _sysctl() == 0 and device_closed:
        opened = checks[doctor.CHECK_OPEN]
        assert not opened["ok"], opened
        assert "SYS_PTRACE" in opened["fix"], opened
        if device_mode is not None:
            assert "/dev/userfaultfd" in opened["fix"], opened
            assert "device: no (EACCES" in opened["detail"], opened

    text = _run(**run)
    assert text.returncode == proc.returncode, _show(text)
    assert _verdict(text.stdout).startswith("verdict: FAIL"), _show(text)
    assert _rows(text.stdout)[doctor.CHECK_FORK] == "FAIL"
    assert "SYS_PTRACE" in text.stdout and "to fix:" in text.stdout


def test_fix_texts_follow_the_probes():
    """The fixes are chosen from what the probes answered: compose settings in a container, the
    sysctl only where the syscall was refused for want of privilege and not by a filter."""
    host = doctor.HostFacts(
        release="6.18.0", version=(6, 18), container=None, seccomp=0, user_namespace=False,
        uid=65534, cap_eff=0, sysctl=0, sysctl_error="",
    )
    device = doctor.OpenProbe("device", False, False, errno.EACCES, "EACCES")
    refused = doctor.OpenProbe("syscall", False, False, errno.EPERM, "EPERM")
    umo_ok = doctor.OpenProbe("syscall", True, True)
    umo_refused = doctor.OpenProbe("syscall", True, False, errno.EPERM, "EPERM")

    row = doctor.check_open(host, device, refused, umo_ok)
    assert not row.ok
    assert "CAP_SYS_PTRACE" in row.fix and "/dev/userfaultfd" in row.fix
    assert "sysctl vm.unprivileged_userfaultfd=1" in row.fix

    filtered = dataclasses.replace(host, seccomp=2)
    row = doctor.check_open(filtered, device, refused, umo_refused)
    assert "seccomp filter blocks" in row.detail and "sysctl" not in row.fix

    in_container = dataclasses.replace(host, container="/.dockerenv", uid=0)
    row = doctor.check_open(in_container, device, refused, umo_refused)
    assert row.fix == doctor.container_fix(in_container) and "sysctl" not in row.fix
    # which way applies, from the kernel: 6.1 has the device, older ones need the profile
    assert "devices: ['/dev/userfaultfd:/dev/userfaultfd']" in row.fix
    assert "the device way applies" in row.detail
    old = dataclasses.replace(in_container, release="5.15.0", version=(5, 15))
    row = doctor.check_open(old, device, refused, umo_refused)
    assert "the seccomp way applies" in row.detail and doctor.SECCOMP_PROFILE in row.fix
    assert "devices:" not in row.fix and "docker-compose.seccomp.yml" in row.fix
    # a container that opens one says by which way
    syscall_ok = doctor.OpenProbe("syscall", False, True)
    assert "by the seccomp way" in doctor.check_open(old, device, syscall_ok, umo_ok).detail
    device_ok = doctor.OpenProbe("device", False, True)
    assert "by the device way" in doctor.check_open(in_container, device_ok, refused,
                                                    umo_refused).detail

    assert not doctor.check_cap(host).ok
    assert "cap_add: [SYS_PTRACE]" in doctor.check_cap(in_container).fix
