"""The doctor's checks: one row each, from a real probe, with the concrete fix when it fails."""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dsm import libc
from dsm.keys import (
    DIRECTORY_KEY_NAME,
    KEYS_ENV,
    OPEN_MEANS,
    PUBLIC_SUFFIX,
    SECRET_SUFFIX,
    KeysError,
    keys_dir_from,
    load_client_keys,
    load_server_keys,
    node_secret_path,
)
from dsm.needs import REGION_REGISTER_MODE, REQUIRED_RANGE_IOCTLS, WORKLOAD_FEATURES
from dsm.uffd import Feature, FeatureUnavailable, Ioctl, Uffd, UffdError
from dsm.doctor.facts import (
    DEVICE_KERNEL,
    MIN_KERNEL,
    SHMEM_WP_KERNEL,
    HostFacts,
    OpenProbe,
    gather_facts,
    probe_device,
    probe_syscall,
    syscall_refusal,
)

#: the environment variable that names a node (``dsm agent --node``)
NODE_ENV = "DSM_NODE"
#: what a node's handshake asks for and how it registers (see dsm/needs.py)
REQUIRED_FEATURES = WORKLOAD_FEATURES
NODE_REGISTER_MODE = REGION_REGISTER_MODE

COMPOSE_FIX = (
    "add to the compose service: cap_add: [SYS_PTRACE], "
    "devices: ['/dev/userfaultfd:/dev/userfaultfd'] (kernel >= 6.1), "
    "or security_opt: ['seccomp=...'] with a profile allowing userfaultfd"
)

#: Docker's default seccomp profile plus the userfaultfd syscall, and the compose override using it
SECCOMP_PROFILE = "deploy/seccomp/userfaultfd.json"
SECCOMP_OVERRIDE = "docker-compose.seccomp.yml"


def container_way(facts: HostFacts) -> str:
    """Which of the two ways to open a uffd applies to this container's kernel (the host's)."""
    if facts.version is not None and facts.version < DEVICE_KERNEL:
        return (f"kernel {facts.release} is older than 6.1 and has no /dev/userfaultfd: the "
                f"seccomp way applies (the profile {SECCOMP_PROFILE}, Docker's default plus "
                f"userfaultfd; compose: -f docker-compose.yml -f {SECCOMP_OVERRIDE})")
    return (f"kernel {facts.release} has /dev/userfaultfd: the device way applies (devices: "
            "['/dev/userfaultfd:/dev/userfaultfd'], as docker-compose.yml does; or the seccomp "
            f"way: {SECCOMP_PROFILE} through {SECCOMP_OVERRIDE})")


def container_fix(facts: HostFacts) -> str:
    """What to add to a container that cannot open a uffd, for its kernel."""
    if facts.version is not None and facts.version < DEVICE_KERNEL:
        return (f"add to the compose service: cap_add: [SYS_PTRACE] and security_opt: "
                f"['seccomp={SECCOMP_PROFILE}'] (kernel {facts.release} has no /dev/userfaultfd: "
                f"docker compose -f docker-compose.yml -f {SECCOMP_OVERRIDE} up)")
    return (f"add to the compose service: cap_add: [SYS_PTRACE], devices: "
            f"['/dev/userfaultfd:/dev/userfaultfd'] (kernel {facts.release} has it), or "
            f"security_opt: ['seccomp={SECCOMP_PROFILE}'] ({SECCOMP_OVERRIDE})")


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
CHECK_KEYS = "cluster keys"
CHECK_NAMES = (
    CHECK_KERNEL, CHECK_ENVIRONMENT, CHECK_CAP, CHECK_SYSCTL, CHECK_OPEN, CHECK_API,
    CHECK_FEATURES, CHECK_FORK, CHECK_MEMFD, CHECK_KEYS,
)


# --- facts about this process and host ----------------------------------------------------------

@dataclass(frozen=True)
class CheckResult:
    """One row of the doctor's table. ``fix`` is empty when ``ok``."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


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
            return "run the service as root (user: root); " + container_fix(facts)
        return container_fix(facts)
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
        "syscall: yes" if syscall.ok else f"syscall: no ({syscall_refusal(syscall, umo, facts)})",
    ]
    if ways:
        if facts.container:
            parts.append(f"in this container by the {'device' if device.ok else 'seccomp'} way"
                         + ("" if device.ok else " (the seccomp filter allows the syscall)"))
        return CheckResult(CHECK_OPEN, True, "; ".join(parts))
    if umo is not None and umo.ok:
        parts.append(
            "only with UFFD_USER_MODE_ONLY: not enough, kernel-side access to shared memory "
            "would fail with EFAULT instead of faulting"
        )
    detail = "neither way opens a uffd that handles kernel faults; " + "; ".join(parts)
    if facts.container:
        detail += "; " + container_way(facts)
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


def check_keys(keys_dir: Path | None, node: str | None) -> CheckResult:
    """Whether the cluster runs with CurveZMQ keys here, and if so whether they load: each role
    whose secret file is present (the directory's, this node's) is loaded as that role would,
    and no secret file may be readable by other users."""
    if keys_dir is None:
        return CheckResult(
            CHECK_KEYS, True,
            # the words of the warning an open directory or node logs (dsm.keys.warn_open)
            f"{KEYS_ENV} is not set: the cluster runs OPEN, so {OPEN_MEANS}, and "
            f"{KEYS_ENV}=DIR on every service uses them")
    fix = (f"make the keys with `dsm keygen {keys_dir}` (or point {KEYS_ENV} at the directory "
           "that holds them), readable by this user")
    try:
        roles = []
        if (keys_dir / f"{DIRECTORY_KEY_NAME}{SECRET_SUFFIX}").exists():
            server = load_server_keys(keys_dir)
            roles.append(f"the directory's keypair (accepting {len(server.clients)} node keys)")
        node_secret = node_secret_path(keys_dir, node)
        if node_secret.exists():
            client = load_client_keys(keys_dir, node)
            roles.append(f"a node keypair ({client.own.path.name}, pinning "
                         f"{DIRECTORY_KEY_NAME}{PUBLIC_SUFFIX})")
        if not roles:
            raise KeysError(f"{keys_dir} holds neither {DIRECTORY_KEY_NAME}{SECRET_SUFFIX} (for "
                            f"the directory) nor {node_secret.name} (for a node)")
        exposed = [f"{path.name} (mode {path.stat().st_mode & 0o777:04o})"
                   for path in sorted(keys_dir.glob(f"*{SECRET_SUFFIX}"))
                   if path.stat().st_mode & 0o077]
        if exposed:
            return CheckResult(CHECK_KEYS, False,
                               f"{KEYS_ENV}={keys_dir}: secret keys readable by other users: "
                               f"{', '.join(exposed)}",
                               f"chmod 600 {keys_dir}/*{SECRET_SUFFIX}")
    except KeysError as exc:
        return CheckResult(CHECK_KEYS, False, f"{KEYS_ENV}={keys_dir}: {exc}", fix)
    return CheckResult(CHECK_KEYS, True, f"{KEYS_ENV}={keys_dir}: CurveZMQ with "
                                         f"{' and '.join(roles)}")


def run_checks(keys_dir: Path | None | str = "env") -> list[CheckResult]:
    """Probe this process and host; one CheckResult per row of CHECK_NAMES, in that order.
    ``keys_dir``: the keys to check (default ``$DSM_KEYS``; None: none)."""
    keys = keys_dir_from(None) if keys_dir == "env" else keys_dir_from(keys_dir)
    node = os.environ.get(NODE_ENV)
    return _host_checks() + [_guarded(CHECK_KEYS, lambda: check_keys(keys, node))]


def _host_checks() -> list[CheckResult]:
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
