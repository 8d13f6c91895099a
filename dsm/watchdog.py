"""The workload's watchdog: a tiny process that kills the workload loudly if its node agent dies.

Why a process: a workload thread that faults while the agent is gone blocks inside the kernel
holding the GIL, so no thread of the workload could ever notice. This file imports only the
standard library and is run by path (``python -I watchdog.py``) so that it starts fast.

It connects to the agent's socket like a workload (and ignores the memfd it is given), then waits
for either end: the workload exiting (its pidfd) ends the watchdog quietly; the agent's socket
closing while the workload lives makes it print why on stderr and SIGKILL the workload and every
process it forked.
"""

import os
import select
import signal
import socket
import sys

#: how long the watchdog waits to connect to the agent
CONNECT_TIMEOUT_S = 10.0
#: what stops a whole process group (a terminal's Ctrl-C, Ctrl-\, hangup; a killpg's SIGTERM):
#: ignored, since the watchdog is in the workload's group and must last as long as the workload
GROUP_STOP_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTERM)


def process_stats():
    """(pid, the fields of /proc/PID/stat after the command name) of every process: field 0 is
    the state, 1 the parent, 2 the process group."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:  # gone meanwhile
            continue
        yield int(entry), stat.rsplit(")", 1)[-1].split()


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children first found through /proc)."""
    children: dict[int, list[int]] = {}
    for child, fields in process_stats():
        children.setdefault(int(fields[1]), []).append(child)
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def main() -> int:
    for sig in GROUP_STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    socket_path, workload_pid = sys.argv[1], int(sys.argv[2])
    pidfd = os.pidfd_open(workload_pid)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.settimeout(CONNECT_TIMEOUT_S)
    sock.connect(socket_path)
    _, fds, _, _ = socket.recv_fds(sock, 1 << 16, 4)
    for fd in fds:
        os.close(fd)
    sock.settimeout(None)
    print("watching", flush=True)  # the workload waits for this line before it goes on
    while True:
        ready, _, _ = select.select([pidfd, sock], [], [])
        if pidfd in ready:
            return 0
        if not sock.recv(1 << 16):
            break
    victims = [workload_pid, *descendants(workload_pid)]
    print(
        f"dsm watchdog: the node agent at {socket_path} died; killing workload pid "
        f"{workload_pid} (and {len(victims) - 1} forked processes) so that none of them hangs "
        "on a page fault or reads zeros instead of data",
        file=sys.stderr,
        flush=True,
    )
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return 1


if __name__ == "__main__":
    sys.exit(main())
