"""``dsm-entrypoint COMMAND...``: the container entrypoint. It runs ``dsm doctor`` first, so that a
host (or a container) that cannot run a node says why, then execs COMMAND.

``DSM_DOCTOR`` says what to do with the doctor's verdict:

* ``require`` (default): a failed check stops here, exit status 1, with the doctor's report and
  the fix (for compose: ``cap_add: [SYS_PTRACE]`` plus the device ``/dev/userfaultfd`` or a
  seccomp profile that allows the ``userfaultfd`` syscall);
* ``warn``: print the report and run COMMAND anyway;
* ``skip``: do not run it (the directory needs no userfaultfd).

When every check passes, only the verdict line is printed.

``DSM_KEYS_MOUNT`` (set by docker-compose.yml): where the keys that ``DSM_KEYS`` names on the
host are mounted; when ``DSM_KEYS`` is set, it becomes ``DSM_KEYS`` for the doctor and COMMAND.
"""

from __future__ import annotations

import os
import subprocess
import sys

from dsm.programs import on_this_python

DOCTOR_ENV = "DSM_DOCTOR"
KEYS_ENV = "DSM_KEYS"
#: where a compose file mounted the keys named by DSM_KEYS on the host
KEYS_MOUNT_ENV = "DSM_KEYS_MOUNT"
MODES = ("require", "warn", "skip")
PROG = "dsm-entrypoint"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(f"usage: {PROG} COMMAND [ARGS...]", file=sys.stderr)
        return 2
    mode = os.environ.get(DOCTOR_ENV, "require").strip().lower() or "require"
    if mode not in MODES:
        print(f"{PROG}: ${DOCTOR_ENV} must be one of {', '.join(MODES)}, got {mode!r}",
              file=sys.stderr)
        return 2
    if os.environ.get(KEYS_ENV) and os.environ.get(KEYS_MOUNT_ENV):
        # the keys of the host's DSM_KEYS, as this container sees them (the doctor and COMMAND)
        os.environ[KEYS_ENV] = os.environ[KEYS_MOUNT_ENV]
    if mode != "skip":
        done = subprocess.run([sys.executable, "-m", "dsm", "doctor"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
        lines = done.stdout.rstrip("\n").splitlines()
        if done.returncode == 0:
            print(next((ln for ln in reversed(lines) if ln.startswith("verdict:")),
                       "dsm doctor: OK"), flush=True)
        else:
            print("\n".join(lines), flush=True)
            if mode == "require":
                print(f"{PROG}: dsm doctor says this host cannot run a node (see the fixes "
                      f"above); not starting {argv[0]!r}. Set {DOCTOR_ENV}=warn to start it "
                      "anyway.", file=sys.stderr, flush=True)
                return 1
    sys.stdout.flush()
    # `python` and this package's console scripts (dsm-node, ...) on the Python this entrypoint
    # runs on: the image's, or on a namespace host the install that `dsm hosts` runs (where
    # `python` and the scripts may not be on PATH at all)
    argv = on_this_python(argv)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"{PROG}: cannot run {argv[0]!r}: {exc.strerror}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
