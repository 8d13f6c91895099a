"""``dsm doctor``: the preflight a user runs first, on a host or in a container.

Every row comes from a real probe of this process on this kernel: the kernel release, the
container markers, ``CapEff`` in ``/proc/self/status``, ``vm.unprivileged_userfaultfd``, opening
``/dev/userfaultfd`` and calling ``userfaultfd(2)``, the UFFDIO_API handshake, asking for
``EVENT_FORK``, and registering a memfd ``MAP_SHARED`` region ``MISSING|WP`` (then resolving one
page of it with ``UFFDIO_COPY`` and lifting its write protection, without ever touching the mapping,
so no fault can block the doctor).

``run_checks()`` returns the rows; ``render_text()`` / ``render_json()`` print them. The exit status
is 0 when a node can run here, 1 otherwise, and each failed row carries the concrete fix.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import shutil
import stat
import textwrap
from dataclasses import asdict, dataclass
from typing import Callable

from dsm import libc
from dsm.needs import REGION_REGISTER_MODE, REQUIRED_RANGE_IOCTLS, WORKLOAD_FEATURES
from dsm.uffd import Feature, FeatureUnavailable, Ioctl, Uffd, UffdError, abi

#: write-protect faults (PAGEFAULT_FLAG_WP) arrived in Linux 5.7
MIN_KERNEL = (5, 7)
#: write-protect on shmem (WP_HUGETLBFS_SHMEM) arrived in Linux 5.19
SHMEM_WP_KERNEL = (5, 19)
#: /dev/userfaultfd arrived in Linux 6.1
DEVICE_KERNEL = (6, 1)
#: bit of CAP_SYS_PTRACE in the capability sets (<linux/capability.h>)
CAP_SYS_PTRACE = 19

#: what a node's handshake asks for and how it registers (see dsm/needs.py)
REQUIRED_FEATURES = WORKLOAD_FEATURES
NODE_REGISTER_MODE = REGION_REGISTER_MODE

SYSCTL_PATH = "/proc/sys/vm/unprivileged_userfaultfd"
CONTAINER_MARKERS = ("/.dockerenv", "/run/.containerenv")
_CGROUP_CONTAINER_WORDS = ("docker", "kubepods", "containerd", "libpod", "podman", "lxc", "garden")

COMPOSE_FIX = (
    "add to the compose service: cap_add: [SYS_PTRACE], "
    "devices: ['/dev/userfaultfd:/dev/userfaultfd'] (kernel >= 6.1), "
    "or security_opt: ['seccomp=...'] with a profile allowing userfaultfd"
)

# check names, in the order they are printed
CHECK_KERNEL = "kernel"
CHECK_ENVIRONMENT = "environment"
CHECK_CAP = "CAP_SYS_PTRACE"
CHECK_SYSCTL = "vm.unprivileged_userfaultfd"
CHECK_OPEN = "uffd open"
CHECK_API = "UFFDIO_API"
CHECK_FEATURES = "required features"
CHECK_FORK = "EVENT_FORK"
CHECK_MEMFD = "memfd MISSING|WP"
CHECK_NAMES = (
    CHECK_KERNEL, CHECK_ENVIRONMENT, CHECK_CAP, CHECK_SYSCTL, CHECK_OPEN, CHECK_API,
    CHECK_FEATURES, CHECK_FORK, CHECK_MEMFD,
)


@dataclass(frozen=True)
class CheckResult:
    """One row of the doctor's table. ``fix`` is empty when ``ok``."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


# --- facts about this process and host ----------------------------------------------------------
@dataclass(frozen=True)
class HostFacts:
    release: str
    version: tuple[int, int] | None
    container: str | None  #: the evidence that this runs in a container, or None
    seccomp: int | None  #: 0 none, 1 strict, 2 filter (``Seccomp:`` of /proc/self/status)
    user_namespace: bool  #: not in the initial user namespace
    uid: int
    cap_eff: int | None
    sysctl: int | None  #: vm.unprivileged_userfaultfd, None where the file is absent
    sysctl_error: str

    @property
    def has_ptrace(self) -> bool:
        return self.cap_eff is not None and bool(self.cap_eff >> CAP_SYS_PTRACE & 1)


def kernel_version(release: str) -> tuple[int, int] | None:
    """(major, minor) of a ``uname -r`` string, None if it does not start with digits."""
    match = re.match(r"(\d+)\.(\d+)", release)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _status_field(status: str | None, field: str) -> str | None:
    for line in (status or "").splitlines():
        key, _, value = line.partition(":")
        if key == field:
            return value.strip()
    return None


def detect_container() -> str | None:
    """The evidence that this process runs in a container: a marker file or a /proc/1/cgroup
    entry naming a container runtime; None on a plain host."""
    for marker in CONTAINER_MARKERS:
        if os.path.exists(marker):
            return marker
    cgroup = _read("/proc/1/cgroup") or ""
    for line in cgroup.splitlines():
        path = line.split(":", 2)[-1]
        for word in _CGROUP_CONTAINER_WORDS:
            if word in path:
                return f"/proc/1/cgroup: {path}"
    return None


def gather_facts() -> HostFacts:
    release = os.uname().release
    status = _read("/proc/self/status")
    cap = _status_field(status, "CapEff")
    seccomp = _status_field(status, "Seccomp")
    uid_map = (_read("/proc/self/uid_map") or "").split()
    initial_ns = uid_map[:3] == ["0", "0", "4294967295"]
    sysctl: int | None = None
    sysctl_error = ""
    try:
        with open(SYSCTL_PATH, encoding="ascii") as f:
            sysctl = int(f.read().strip())
    except (OSError, ValueError) as exc:
        sysctl_error = str(exc)
    return HostFacts(
        release=release,
        version=kernel_version(release),
        container=detect_container(),
        seccomp=int(seccomp) if seccomp and seccomp.isdigit() else None,
        user_namespace=bool(uid_map) and not initial_ns,
        uid=os.getuid(),
        cap_eff=int(cap, 16) if cap else None,
        sysctl=sysctl,
        sysctl_error=sysctl_error,
    )


# --- opening a uffd -----------------------------------------------------------------------------
@dataclass(frozen=True)
class OpenProbe:
    """What one way of opening a uffd answered."""

    how: str  #: "device" or "syscall"
    user_mode_only: bool
    ok: bool
    errno: int | None = None
    reason: str = ""

    @property
    def label(self) -> str:
        name = "/dev/userfaultfd" if self.how == "device" else "userfaultfd(2)"
        return name + (" with UFFD_USER_MODE_ONLY" if self.user_mode_only else "")


def _errname(err: int | None) -> str:
    return errno.errorcode.get(err, str(err)) if err is not None else "?"


def _device_refusal(err: int, facts: HostFacts) -> str:
    path = abi.USERFAULTFD_DEVICE
    if err == errno.ENOENT:
        if facts.version is not None and facts.version < DEVICE_KERNEL:
            return f"ENOENT: no {path} (it arrived in Linux 6.1)"
        if facts.container:
            return f"ENOENT: {path} is not passed into this container"
        return f"ENOENT: no {path} on this host"
    if err in (errno.EACCES, errno.EPERM):
        try:
            st = os.stat(path)
            mode = f"mode {stat.filemode(st.st_mode)} uid {st.st_uid} gid {st.st_gid}"
        except OSError:
            mode = "mode unknown"
        if err == errno.EPERM and facts.container:
            return f"EPERM: the container's device policy refuses {path} ({mode})"
        return f"{_errname(err)}: {path} is {mode}; this process runs as uid {facts.uid}"
    return f"{_errname(err)}: {os.strerror(err)}"


def probe_device(facts: HostFacts) -> OpenProbe:
    """Open /dev/userfaultfd (its file mode is the access control), then USERFAULTFD_IOC_NEW."""
    try:
        dev = os.open(abi.USERFAULTFD_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return OpenProbe("device", False, False, exc.errno, _device_refusal(exc.errno, facts))
    os.close(dev)
    try:
        with Uffd.open(how="device", api=False):
            pass
    except UffdError as exc:
        return OpenProbe("device", False, False, exc.errno, f"USERFAULTFD_IOC_NEW: {exc}")
    return OpenProbe("device", False, True)


def probe_syscall(user_mode_only: bool) -> OpenProbe:
    """Call userfaultfd(2), with or without UFFD_USER_MODE_ONLY."""
    try:
        with Uffd.open(how="syscall", api=False, user_mode_only=user_mode_only):
            pass
    except UffdError as exc:
        return OpenProbe("syscall", user_mode_only, False, exc.errno, str(exc))
    return OpenProbe("syscall", user_mode_only, True)


def _syscall_refusal(probe: OpenProbe, umo: OpenProbe | None, facts: HostFacts) -> str:
    """Why userfaultfd(2) without UFFD_USER_MODE_ONLY was refused."""
    if probe.errno == errno.EPERM:
        if umo is not None and not umo.ok:
            if facts.seccomp == 2:
                return "EPERM even with UFFD_USER_MODE_ONLY: a seccomp filter blocks the syscall"
            return "EPERM even with UFFD_USER_MODE_ONLY: a security module refuses the syscall"
        if facts.has_ptrace and facts.user_namespace:
            return (
                "EPERM: CAP_SYS_PTRACE is held only inside a user namespace, the kernel wants it "
                "in the initial one"
            )
        if not facts.has_ptrace:
            return f"EPERM: vm.unprivileged_userfaultfd={facts.sysctl} and no CAP_SYS_PTRACE"
        return "EPERM"
    if probe.errno == errno.ENOSYS:
        return "ENOSYS: no userfaultfd in this kernel (CONFIG_USERFAULTFD), or a seccomp filter"
    return probe.reason


# --- the checks ---------------------------------------------------------------------------------
def check_kernel(facts: HostFacts) -> CheckResult:
    if facts.version is None:
        return CheckResult(
            CHECK_KERNEL, False, f"cannot parse the kernel release {facts.release!r}",
            "run on Linux >= 5.7 (write-protect faults; 5.19 for write-protect on shmem)",
        )
    ok = facts.version >= MIN_KERNEL
    notes = []
    if facts.version < SHMEM_WP_KERNEL:
        notes.append("write-protect on shmem needs 5.19")
    if facts.version < DEVICE_KERNEL:
        notes.append("/dev/userfaultfd needs 6.1")
    detail = f"Linux {facts.release} (>= 5.7 needed for write-protect)"
    if notes:
        detail += "; " + ", ".join(notes)
    fix = "" if ok else "upgrade to Linux >= 5.7 (>= 5.19 for write-protect on shmem, 6.1 for /dev/userfaultfd)"
    return CheckResult(CHECK_KERNEL, ok, detail, fix)


def check_environment(facts: HostFacts) -> CheckResult:
    parts = [f"container ({facts.container})" if facts.container else "host (no container marker)"]
    parts.append(f"uid {facts.uid}")
    if facts.user_namespace:
        parts.append("in a user namespace")
    parts.append({0: "no seccomp filter", 1: "seccomp strict", 2: "seccomp filter active"}.get(
        facts.seccomp, "seccomp unknown"))
    return CheckResult(CHECK_ENVIRONMENT, True, ", ".join(parts))


def _cap_fix(facts: HostFacts) -> str:
    if facts.container:
        run_as = "" if facts.uid == 0 else "run the service as root (user: root) and "
        return f"{run_as}add to the compose service: cap_add: [SYS_PTRACE] (CAP_SYS_PTRACE)"
    if facts.user_namespace:
        return (
            "CAP_SYS_PTRACE counts only in the initial user namespace: run outside the user "
            "namespace, as root or with CAP_SYS_PTRACE"
        )
    return "run as root or grant CAP_SYS_PTRACE (e.g. systemd AmbientCapabilities=CAP_SYS_PTRACE)"


def check_cap(facts: HostFacts) -> CheckResult:
    if facts.cap_eff is None:
        return CheckResult(CHECK_CAP, False, "no CapEff in /proc/self/status", _cap_fix(facts))
    held = facts.has_ptrace
    detail = f"CapEff {facts.cap_eff:#x}: CAP_SYS_PTRACE (bit 19) {'held' if held else 'missing'}"
    if held and facts.user_namespace:
        detail += " (inside a user namespace)"
    if not held:
        detail += "; EVENT_FORK needs it"
    return CheckResult(CHECK_CAP, held, detail, "" if held else _cap_fix(facts))


def check_sysctl(facts: HostFacts) -> CheckResult:
    """Informational: the sysctl only decides whether userfaultfd(2) without CAP_SYS_PTRACE may
    open a uffd that handles kernel-side faults; the device and EVENT_FORK ignore it."""
    if facts.sysctl is None:
        return CheckResult(CHECK_SYSCTL, True, f"not readable ({facts.sysctl_error})")
    if facts.sysctl:
        meaning = "userfaultfd(2) is open to every user"
    else:
        meaning = "userfaultfd(2) handling kernel faults needs CAP_SYS_PTRACE (the device does not)"
    return CheckResult(CHECK_SYSCTL, True, f"{facts.sysctl}: {meaning}")


def _open_fix(facts: HostFacts, device: OpenProbe, syscall: OpenProbe, umo: OpenProbe | None) -> str:
    if facts.container:
        if device.errno == errno.EACCES and facts.uid != 0:
            return "run the service as root (user: root); " + COMPOSE_FIX
        return COMPOSE_FIX
    fixes = []
    seccomp_blocks = syscall.errno == errno.EPERM and umo is not None and not umo.ok
    if seccomp_blocks:
        fixes.append("allow the userfaultfd syscall in this process's seccomp filter")
    else:
        fixes.append(_cap_fix(facts))
    if device.errno in (errno.EACCES, errno.EPERM):
        fixes.append("give this user read-write access to /dev/userfaultfd (e.g. a udev rule, mode 0660)")
    # The sysctl helps only where the syscall was refused for want of privilege, not by a filter.
    if (
        facts.sysctl == 0
        and syscall.errno == errno.EPERM
        and umo is not None
        and umo.ok
        and not facts.has_ptrace
    ):
        fixes.append(
            "or `sysctl vm.unprivileged_userfaultfd=1` (opens the syscall to every user; "
            "EVENT_FORK still needs CAP_SYS_PTRACE)"
        )
    return "; ".join(fixes)


def check_open(
    facts: HostFacts, device: OpenProbe, syscall: OpenProbe, umo: OpenProbe | None
) -> CheckResult:
    ways = [p.how for p in (device, syscall) if p.ok]
    parts = [
        "device: yes" if device.ok else f"device: no ({device.reason})",
        "syscall: yes" if syscall.ok else f"syscall: no ({_syscall_refusal(syscall, umo, facts)})",
    ]
    if ways:
        return CheckResult(CHECK_OPEN, True, "; ".join(parts))
    if umo is not None and umo.ok:
        parts.append(
            "only with UFFD_USER_MODE_ONLY: not enough, kernel-side access to shared memory "
            "would fail with EFAULT instead of faulting"
        )
    detail = "neither way opens a uffd that handles kernel faults; " + "; ".join(parts)
    return CheckResult(CHECK_OPEN, False, detail, _open_fix(facts, device, syscall, umo))


def _not_probed(name: str, why: str) -> CheckResult:
    return CheckResult(name, False, f"not probed: {why}", f"fix '{CHECK_OPEN}' first")


def check_api(how: str, user_mode_only: bool) -> tuple[CheckResult, Feature | None]:
    """A fresh uffd's handshake asking for nothing reports every feature the kernel offers."""
    try:
        with Uffd.open(how=how, api=False, user_mode_only=user_mode_only) as uffd:
            info = uffd.api(Feature(0))
    except UffdError as exc:
        return CheckResult(CHECK_API, False, f"handshake failed: {exc}", "report this kernel"), None
    detail = (
        f"features {int(info.features):#x} ({_names(info.features)}); "
        f"ioctls {int(info.ioctls):#x} ({_names(info.ioctls)})"
    )
    if user_mode_only:
        detail += "; probed on a UFFD_USER_MODE_ONLY uffd"
    return CheckResult(CHECK_API, True, detail), info.features


def check_features(offered: Feature) -> CheckResult:
    missing = REQUIRED_FEATURES & ~offered
    if not missing:
        return CheckResult(CHECK_FEATURES, True, f"all offered: {_names(REQUIRED_FEATURES)}")
    return CheckResult(
        CHECK_FEATURES, False, f"missing: {_names(missing)}",
        "upgrade the kernel: write-protect on shmem (WP_HUGETLBFS_SHMEM) needs Linux >= 5.19",
    )


def check_event_fork(facts: HostFacts, how: str, user_mode_only: bool) -> CheckResult:
    try:
        with Uffd.open(how=how, user_mode_only=user_mode_only, features=Feature.EVENT_FORK):
            pass
    except FeatureUnavailable as exc:
        return CheckResult(CHECK_FORK, False, f"not offered by the kernel: {exc}", "upgrade the kernel")
    except UffdError as exc:
        if exc.errno != errno.EPERM:
            return CheckResult(CHECK_FORK, False, f"refused: {exc}", _cap_fix(facts))
        if facts.has_ptrace and facts.user_namespace:
            why = "CAP_SYS_PTRACE is held only inside a user namespace"
        elif facts.has_ptrace:
            why = "although CapEff holds CAP_SYS_PTRACE"
        else:
            why = "this process lacks CAP_SYS_PTRACE"
        return CheckResult(CHECK_FORK, False, f"refused (EPERM): {why}", _cap_fix(facts))
    return CheckResult(CHECK_FORK, True, f"allowed (UFFDIO_API on a uffd opened via {how})")


def check_memfd(how: str, user_mode_only: bool, features: Feature) -> CheckResult:
    """Register a memfd MAP_SHARED region MISSING|WP, require COPY and WRITEPROTECT on it, then
    install one page write-protected with UFFDIO_COPY, read it back through the memfd and lift the
    protection. The mapping itself is never touched, so nothing here can fault."""
    length = 2 * libc.PAGE_SIZE
    fd = os.memfd_create("dsm-doctor", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, length)
        addr = libc.mmap_at(0, length, libc.PROT_READ | libc.PROT_WRITE, libc.MAP_SHARED, fd)
        try:
            with Uffd.open(how=how, user_mode_only=user_mode_only, features=features) as uffd:
                try:
                    ioctls = uffd.register(addr, length, NODE_REGISTER_MODE)
                except UffdError as exc:
                    return CheckResult(
                        CHECK_MEMFD, False, f"UFFDIO_REGISTER refused: {exc}",
                        "upgrade the kernel: MISSING|WP on shmem needs Linux >= 5.19",
                    )
                missing = REQUIRED_RANGE_IOCTLS & ~ioctls
                if missing:
                    return CheckResult(
                        CHECK_MEMFD, False,
                        f"registered, but the range lacks {_names(missing)} (offers {_names(ioctls)})",
                        "upgrade the kernel: write-protect on shmem needs Linux >= 5.19",
                    )
                page = bytearray(b"dsm-doctor".ljust(libc.PAGE_SIZE, b"\xa5"))
                copied = uffd.copy(addr, page, libc.PAGE_SIZE, wp=True)
                back = os.pread(fd, libc.PAGE_SIZE, 0)
                uffd.writeprotect(addr, libc.PAGE_SIZE, wp=False)
                uffd.unregister(addr, length)
        finally:
            libc.munmap(addr, length)
    finally:
        os.close(fd)
    if copied != libc.PAGE_SIZE or back != page:
        return CheckResult(
            CHECK_MEMFD, False,
            f"UFFDIO_COPY resolved {copied} bytes, the memfd reads back "
            f"{'the same page' if back == page else 'other bytes'}",
            "report this kernel",
        )
    detail = (
        f"range offers {_names(ioctls)}; UFFDIO_COPY(WP) of a page read back through the memfd, "
        f"UFFDIO_WRITEPROTECT lifted it"
    )
    if features != REQUIRED_FEATURES:
        detail += f" (handshake without {_names(REQUIRED_FEATURES & ~features)})"
    if user_mode_only:
        detail += "; probed on a UFFD_USER_MODE_ONLY uffd"
    return CheckResult(CHECK_MEMFD, True, detail)


def _names(flags: Feature | Ioctl) -> str:
    names = [m.name for m in type(flags) if m.value and m in flags and m.name]
    return ", ".join(names) if names else "none"


def _guarded(name: str, probe: Callable[[], CheckResult]) -> CheckResult:
    """A probe that crashes is a failed row, not a traceback: the doctor always gives a verdict."""
    try:
        return probe()
    except Exception as exc:  # noqa: BLE001 - every unexpected failure becomes a row
        return CheckResult(name, False, f"probe crashed: {exc!r}", "report this as a dsm bug")


def run_checks() -> list[CheckResult]:
    """Probe this process and host; one CheckResult per row of CHECK_NAMES, in that order."""
    facts = gather_facts()
    results = [
        _guarded(CHECK_KERNEL, lambda: check_kernel(facts)),
        _guarded(CHECK_ENVIRONMENT, lambda: check_environment(facts)),
        _guarded(CHECK_CAP, lambda: check_cap(facts)),
        _guarded(CHECK_SYSCTL, lambda: check_sysctl(facts)),
    ]
    device = probe_device(facts)
    syscall = probe_syscall(user_mode_only=False)
    umo = None if syscall.ok else probe_syscall(user_mode_only=True)
    results.append(_guarded(CHECK_OPEN, lambda: check_open(facts, device, syscall, umo)))

    # The remaining probes need some uffd: the first way that handles kernel faults, else a
    # user-mode-only one (enough to learn what the kernel offers and whether EVENT_FORK is allowed).
    usable = next((p for p in (device, syscall) if p.ok), umo if umo is not None and umo.ok else None)
    if usable is None:
        why = "no userfaultfd could be opened"
        results += [_not_probed(n, why) for n in (CHECK_API, CHECK_FEATURES, CHECK_FORK, CHECK_MEMFD)]
        return results
    how, umo_only = usable.how, usable.user_mode_only

    offered: Feature | None = None

    def api() -> CheckResult:
        nonlocal offered
        row, offered = check_api(how, umo_only)
        return row

    results.append(_guarded(CHECK_API, api))
    if offered is None:
        results.append(_not_probed(CHECK_FEATURES, "the UFFDIO_API handshake failed"))
    else:
        results.append(_guarded(CHECK_FEATURES, lambda: check_features(offered)))
    fork = _guarded(CHECK_FORK, lambda: check_event_fork(facts, how, umo_only))
    results.append(fork)
    # Register with what a node asks for; leave out what is refused or absent so that the
    # registration row still says what it can.
    features = REQUIRED_FEATURES & (offered if offered is not None else REQUIRED_FEATURES)
    if not fork.ok:
        features &= ~Feature.EVENT_FORK
    results.append(_guarded(CHECK_MEMFD, lambda: check_memfd(how, umo_only, Feature(features))))
    return results


# --- output -------------------------------------------------------------------------------------
def verdict(results: list[CheckResult]) -> str:
    """The one verdict line: ``verdict: OK ...`` or ``verdict: FAIL ...``."""
    failed = [r.name for r in results if not r.ok]
    if not failed:
        return f"verdict: OK - this host can run a dsm node (all {len(results)} checks passed)"
    return (
        f"verdict: FAIL - this host cannot run a dsm node: {len(failed)} of {len(results)} checks "
        f"failed ({', '.join(failed)}); apply the fixes listed"
    )


def render_text(results: list[CheckResult], width: int | None = None) -> str:
    width = width or max(80, shutil.get_terminal_size((120, 24)).columns)
    name_w = max(len("check"), *(len(r.name) for r in results))
    result_w = len("result")
    indent = name_w + result_w + 4
    detail_w = max(30, width - indent)
    lines = [f"{'check':<{name_w}}  {'result':<{result_w}}  detail", "-" * min(width, 100)]
    for r in results:
        wrapped = textwrap.wrap(r.detail, detail_w) or [""]
        lines.append(f"{r.name:<{name_w}}  {'ok' if r.ok else 'FAIL':<{result_w}}  {wrapped[0]}")
        lines += [" " * indent + more for more in wrapped[1:]]
    fixes: dict[str, list[str]] = {}
    for r in results:
        if not r.ok and r.fix:
            fixes.setdefault(r.fix, []).append(r.name)
    if fixes:
        lines.append("")
        lines.append("to fix:")
        for fix, names in fixes.items():
            lines += textwrap.wrap(
                f"[{', '.join(names)}] {fix}", width - 2, initial_indent="- ",
                subsequent_indent="    ",
            )
    lines.append("")
    lines.append(verdict(results))
    return "\n".join(lines)


def render_json(results: list[CheckResult]) -> str:
    return json.dumps(
        {
            "ok": all(r.ok for r in results),
            "verdict": verdict(results),
            "checks": [asdict(r) for r in results],
        },
        indent=2,
    )


def main(args: argparse.Namespace) -> int:
    results = run_checks()
    print(render_json(results) if args.json else render_text(results), flush=True)
    return 0 if all(r.ok for r in results) else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check that this host (or container) can run a dsm node",
        description=(
            "Probe this host: kernel, how a userfaultfd can be opened, the features and ioctls "
            "the kernel reports, EVENT_FORK (CAP_SYS_PTRACE), vm.unprivileged_userfaultfd, and "
            "a memfd region registered MISSING|WP. Exit status 0 when a node can run here; "
            "otherwise 1, with the fix for each failed check."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.set_defaults(func=main)
