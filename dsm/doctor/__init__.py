"""``dsm doctor``: the preflight a user runs first, on a host or in a container.

Every row comes from a real probe of this process on this kernel: the kernel release, the
container markers, ``CapEff`` in ``/proc/self/status``, ``vm.unprivileged_userfaultfd``, opening
``/dev/userfaultfd`` and calling ``userfaultfd(2)``, the UFFDIO_API handshake, asking for
``EVENT_FORK``, and registering a memfd ``MAP_SHARED`` region ``MISSING|WP`` (then resolving one
page of it with ``UFFDIO_COPY`` and lifting its write protection, without ever touching the mapping,
so no fault can block the doctor); last, whether ``DSM_KEYS`` names keys that load (or the
cluster runs open, which is reported, not failed).

``facts`` gathers what the host is, ``checks`` turns it into rows with fixes (``run_checks()``),
``report`` prints them (``render_text()`` / ``render_json()``, the verdict) and is the command. The
exit status is 0 when a node can run here, 1 otherwise.
"""

from dsm.doctor.checks import (
    CHECK_API,
    CHECK_CAP,
    CHECK_FORK,
    CHECK_NAMES,
    CHECK_OPEN,
    COMPOSE_FIX,
    DEVICE_KERNEL,
    SECCOMP_PROFILE,
    CheckResult,
    check_cap,
    check_open,
    container_fix,
    container_way,
    run_checks,
)
from dsm.doctor.facts import CAP_SYS_PTRACE, SYSCTL_PATH, HostFacts, OpenProbe, kernel_version
from dsm.doctor.report import register, render_json, render_text, verdict

__all__ = [
    "CAP_SYS_PTRACE", "CHECK_API", "CHECK_CAP", "CHECK_FORK", "CHECK_NAMES", "CHECK_OPEN",
    "COMPOSE_FIX", "DEVICE_KERNEL", "SECCOMP_PROFILE", "CheckResult", "container_fix",
    "container_way", "HostFacts", "OpenProbe", "SYSCTL_PATH", "check_cap",
    "check_open", "kernel_version", "register", "render_json", "render_text", "run_checks",
    "verdict",
]
