"""What the doctor learns about this host and process: kernel, container, capabilities, sysctl,
and whether a uffd opens through the device or the syscall (and why not)."""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass

from dsm.uffd import Uffd, UffdError, abi

#: write-protect faults (PAGEFAULT_FLAG_WP) arrived in Linux 5.7
MIN_KERNEL = (5, 7)
#: write-protect on shmem (WP_HUGETLBFS_SHMEM) arrived in Linux 5.19
SHMEM_WP_KERNEL = (5, 19)
#: /dev/userfaultfd arrived in Linux 6.1
DEVICE_KERNEL = (6, 1)
#: bit of CAP_SYS_PTRACE in the capability sets (<linux/capability.h>)
CAP_SYS_PTRACE = 19

SYSCTL_PATH = "/proc/sys/vm/unprivileged_userfaultfd"
CONTAINER_MARKERS = ("/.dockerenv", "/run/.containerenv")
_CGROUP_CONTAINER_WORDS = ("docker", "kubepods", "containerd", "libpod", "podman", "lxc", "garden")

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


def syscall_refusal(probe: OpenProbe, umo: OpenProbe | None, facts: HostFacts) -> str:
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
