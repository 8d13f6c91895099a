"""Run a command as a process of a namespace host: ``python -I hostexec.py HOSTNAME CMD...``.

``ip netns exec`` has already put this process in the host's network namespace (and bind-mounted
its /etc/hosts); this gives it a UTS namespace of its own named HOSTNAME, as a container has, so
that ``socket.gethostname()`` tells the hosts apart, then execs CMD. Standard library only, run
by path, so that it starts fast.
"""

import ctypes
import os
import socket
import sys

#: <linux/sched.h>
CLONE_NEWUTS = 0x04000000


def main() -> int:
    if len(sys.argv) < 3:
        print("usage: hostexec.py HOSTNAME COMMAND [ARGS...]", file=sys.stderr)
        return 2
    hostname, argv = sys.argv[1], sys.argv[2:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWUTS) != 0:
        err = ctypes.get_errno()
        print(f"hostexec: unshare(CLONE_NEWUTS) failed: {os.strerror(err)}", file=sys.stderr)
        return 126
    socket.sethostname(hostname)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"hostexec: cannot run {argv[0]!r}: {exc.strerror}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
