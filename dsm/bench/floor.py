"""The floor of a remote fault: the least a Python userfaultfd handler can do and still serve one.

``dsm bench fault`` measures these beside its faults, in the same rounds, so that every fault is
reported against what any Python handler over ZeroMQ would pay, not only against a bare round
trip. Each party is its own process, as in the DSM:

- the **faulter** maps a memfd (``MAP_SHARED``, as a workload maps the region), registers it
  with a userfaultfd in MISSING mode and hands the uffd to its handler over a Unix socket
  (``SCM_RIGHTS``, as ``dsm.attach`` hands its uffd to the node's agent); then it times one plain
  numpy read per page with the workers' own timing loop (``dsm.bench.worker``), so that a floor
  row and a fault row differ only in who serves the fault;
- the **handler** loops: read one pagefault event, send the 8-byte fault address over a DEALER,
  receive the 4 KiB page, ``UFFDIO_COPY`` it (which wakes the faulter). Nothing else: no
  protocol decoding, no page states, no batching;
- **2 hops** ("floor, home read"): the handler's DEALER asks a **server** (a ROUTER) that
  answers with the page, as the directory grants a page it holds at home;
- **3 hops** ("floor, 3 hops"): the handler's DEALER asks a **manager** (a ROUTER), which
  forwards the request to the page's **owner**, which pushes the page straight to the handler's
  second socket (a PULL): manager -> owner -> requester, three messages in series.

The page served holds, in its first word, the address it was asked for (the servers copy the
request into the page), so the faulter checks that every page it read is the one it faulted on.

Roles, ``python -m dsm.bench.floor ROLE ...``; every one but the faulter prints one line,
``<role> ready <endpoints>``, once it is listening, then runs until killed or until nothing came
for ``IDLE_TIMEOUT_S`` (a safety net against orphans)::

    server LISTEN                       ROUTER: every request answered by a page
    manager LISTEN FORWARD              ROUTER LISTEN for handlers; each request is pushed, with
                                        the asker's identity, to the owner (a PUSH bound at FORWARD)
    owner FORWARD NAME=PAGES ...        PULL connected to the manager; the page goes to the PUSH
                                        connected to the asker NAME's PAGES endpoint
    handler NAME UNIX REQUEST [PAGES]   the minimal handler (DEALER identity NAME, connected to
                                        REQUEST; with PAGES, the page comes on a PULL bound there);
                                        it takes the uffd from a faulter connecting to the Unix
                                        socket path UNIX
    faulter UNIX PAGES                  a Driven child (``dsm.bench.procs``): it first prints
                                        ``{"ok": true, "pid": P, "base": B}``, then answers the
                                        workers' ``touch`` and ``time`` commands
"""

from __future__ import annotations

import json
import mmap
import os
import socket
import struct
import sys
import traceback
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import zmq

from dsm import libc
from dsm.bench.common import BenchError
from dsm.bench.procs import START_TIMEOUT_S, BenchProcessError, Child, Driven, Processes
from dsm.bench.worker import Worker
from dsm.uffd import Pagefault, RegisterMode, Uffd

PAGE_SIZE = libc.PAGE_SIZE
#: a request is the fault's address, little-endian: the servers copy it into the page's first
#: word, so that the faulter can check which page it got
ADDRESS = struct.Struct("<Q")
WORD_BYTES = np.dtype(np.int64).itemsize
#: a server, the manager, the owner or a handler that heard nothing for this long exits: the bench
#: that started it is gone (it kills them itself otherwise)
IDLE_TIMEOUT_S = 300.0
#: how long a handler waits for its page, a party for its peer to take a message: past it, the
#: party exits (so that the faulter's fault is released and the bench sees the failure, instead
#: of every party waiting for ever)
REPLY_TIMEOUT_S = 10.0
SEND_TIMEOUT_S = 10.0
#: the faulter's wait for its handler to take the uffd
HANDOFF_TIMEOUT_S = START_TIMEOUT_S
#: the one message that carries the uffd (SCM_RIGHTS needs a byte of data at least), and the
#: handler's acknowledgement: it holds the uffd (the faulter may close its own copy)
HANDOFF = b"uffd"
HANDOFF_ACK = b"ready"
#: a warm-up fault per path, untimed, before anything is measured (cold code, fresh connections)
WARMUP_PAGES = 50
#: the pages' first word is their address: the workers' check (``expect + page * stride``) with
#: expect = the mapping's base and stride = a page, in words
CHECK_STRIDE = PAGE_SIZE
MS_PER_S = 1000

#: the floors' keys (their rows' in ``dsm bench fault``): 2 hops, and 3 hops
HOME, THREE_HOPS = "floor_home", "floor_3hop"


# --- the parties -----------------------------------------------------------------------------------
def _socket(ctx: zmq.Context, kind: int) -> zmq.Socket:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    # a send that no peer takes fails at the deadline instead of blocking the party for ever
    sock.setsockopt(zmq.SNDTIMEO, int(SEND_TIMEOUT_S * MS_PER_S))
    return sock


def _bound(sock: zmq.Socket, endpoint: str) -> str:
    sock.bind(endpoint)
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


def _ready(role: str, *endpoints: str) -> None:
    print(f"{role} ready {' '.join(endpoints)}", flush=True)


def _wait(sock: zmq.Socket, timeout_s: float) -> bool:
    return bool(sock.poll(int(timeout_s * MS_PER_S)))


def serve_pages(listen: str) -> None:
    """The 2-hop server: a ROUTER that answers every request with a page holding it."""
    ctx = zmq.Context()
    sock = _socket(ctx, zmq.ROUTER)
    _ready("server", _bound(sock, listen))
    page = bytearray(PAGE_SIZE)
    while _wait(sock, IDLE_TIMEOUT_S):
        asker, request = sock.recv_multipart()
        page[:len(request)] = request
        sock.send_multipart([asker, page])  # copied: the buffer is reused for the next page


def manage(listen: str, forward: str) -> None:
    """The manager: a ROUTER whose every request goes on, with the asker's identity, to the
    owner (it does not keep the page: only says who wants it)."""
    ctx = zmq.Context()
    askers = _socket(ctx, zmq.ROUTER)
    owner = _socket(ctx, zmq.PUSH)
    _ready("manager", _bound(askers, listen), _bound(owner, forward))
    while _wait(askers, IDLE_TIMEOUT_S):
        owner.send_multipart(askers.recv_multipart(copy=False), copy=False)


def own(forward: str, peers: dict[str, str]) -> None:
    """The owner: takes the manager's forwarded requests and pushes each page straight to the
    asker's own page socket (``peers``: name -> its PULL endpoint)."""
    ctx = zmq.Context()
    requests = _socket(ctx, zmq.PULL)
    requests.connect(forward)
    to = {}
    for name, endpoint in peers.items():
        push = _socket(ctx, zmq.PUSH)
        push.connect(endpoint)
        to[name.encode()] = push
    _ready("owner", forward, *peers.values())
    page = bytearray(PAGE_SIZE)
    while _wait(requests, IDLE_TIMEOUT_S):
        asker, request = requests.recv_multipart()
        page[:len(request)] = request
        to[asker].send(page)


def _uffd_listener(path: str) -> socket.socket:
    """Where the faulter hands its uffd over: a Unix socket at ``path`` whose accept has a
    deadline (a faulter that never comes does not keep the handler waiting)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(1)
    listener.settimeout(HANDOFF_TIMEOUT_S)
    return listener


def handle(name: str, unix_path: str, request_endpoint: str, pages_listen: str | None) -> None:
    """The minimal handler: one pagefault event, one request, one page, one UFFDIO_COPY."""
    ctx = zmq.Context()
    request = _socket(ctx, zmq.DEALER)
    request.setsockopt(zmq.IDENTITY, name.encode())  # the owner sends the page back by it
    request.connect(request_endpoint)
    replies = request
    endpoints = [unix_path, request_endpoint]
    if pages_listen is not None:  # 3 hops: the page comes from the owner, on a socket of its own
        replies = _socket(ctx, zmq.PULL)
        endpoints.append(_bound(replies, pages_listen))
    listener = _uffd_listener(unix_path)
    _ready("handler", *endpoints)
    conn, _ = listener.accept()
    conn.settimeout(HANDOFF_TIMEOUT_S)
    msg, fds, _flags, _addr = socket.recv_fds(conn, len(HANDOFF), 1)
    if msg != HANDOFF or len(fds) != 1:
        raise RuntimeError(f"the faulter sent {msg!r} and {len(fds)} file descriptors, not its "
                           "uffd")
    uffd = Uffd(fds[0])
    conn.send(HANDOFF_ACK)
    reply_timeout_ms = int(REPLY_TIMEOUT_S * MS_PER_S)
    pack = ADDRESS.pack
    while True:
        event = uffd.read_event(IDLE_TIMEOUT_S)
        if event is None:
            return  # idle: the bench is gone
        if not isinstance(event, Pagefault):
            continue  # MISSING mode without event features asked: no other event comes
        request.send(pack(event.addr))
        if not replies.poll(reply_timeout_ms):
            # exiting closes the uffd, which releases the faulter (it reads a zero page, which
            # its check reports): no party waits for ever
            raise RuntimeError(f"no page for {event.addr:#x} within {REPLY_TIMEOUT_S:g} s")
        uffd.copy(event.addr, replies.recv(), PAGE_SIZE)


class _Faulter(Worker):
    """The workers' ``touch`` and ``time`` (the very loop the fault rows are timed with) over a
    plain mapping instead of a node's array."""

    def __init__(self, arr: np.ndarray):  # no node: nothing of it is used by touch and time
        self.node = None
        self.words_per_page = PAGE_SIZE // WORD_BYTES
        self.arr = arr


def fault(unix_path: str, pages: int) -> int:
    """The faulter: map, register, hand the uffd over, then answer commands on stdin."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything printed by accident goes to the log, not to the protocol
    length = pages * PAGE_SIZE
    memfd = os.memfd_create("dsm-bench-floor", os.MFD_CLOEXEC)
    os.ftruncate(memfd, length)
    region = mmap.mmap(memfd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    base = libc.buffer_address(region)
    uffd = Uffd.open()
    uffd.register(base, length, RegisterMode.MISSING)
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as conn:
        conn.settimeout(HANDOFF_TIMEOUT_S)
        conn.connect(unix_path)
        socket.send_fds(conn, [HANDOFF], [uffd.fileno()])
        if conn.recv(len(HANDOFF_ACK)) != HANDOFF_ACK:
            raise RuntimeError("the handler did not take the uffd")
    # only the handler holds it now: should the handler die, the kernel releases the faults
    # (zero pages, which the check reports) instead of leaving this process blocked in one
    uffd.close()
    faulter = _Faulter(np.frombuffer(region, dtype=np.int64))
    out.write(json.dumps({"ok": True, "pid": os.getpid(), "base": base}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        op = request.pop("op")
        try:
            if op not in ("touch", "time"):
                raise ValueError(f"a faulter runs touch and time, not {op!r}")
            reply = getattr(faulter, f"op_{op}")(**request)
            out.write(json.dumps({"ok": True, **reply}) + "\n")
        except Exception:
            out.write(json.dumps({"ok": False, "error": traceback.format_exc()}) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    role, rest = args[0], args[1:]
    if role == "server":
        serve_pages(*rest)
    elif role == "manager":
        manage(*rest)
    elif role == "owner":
        own(rest[0], dict(peer.split("=", 1) for peer in rest[1:]))
    elif role == "handler":
        handle(rest[0], rest[1], rest[2], rest[3] if len(rest) > 3 else None)
    elif role == "faulter":
        return fault(rest[0], int(rest[1]))
    else:
        print(f"unknown role {role!r}", file=sys.stderr)
        return 2
    return 0


# --- the bench's side ------------------------------------------------------------------------------
@dataclass
class FloorPath:
    """One floor, started: its faulter (driven), where its pages are, its parties' pids."""

    key: str
    faulter: Driven
    base: int
    #: every process of the path, by the name the CPU table shows
    pids: dict[str, int] = field(default_factory=dict)

    def touch(self, pages: list[int], deadline_s: float) -> None:
        """Fault the pages in, untimed (the warm-up)."""
        self._check(self.faulter.call("touch", deadline_s, pages=pages, expect=self.base,
                                      stride=CHECK_STRIDE))

    def time(self, pages: list[int], deadline_s: float) -> list[int]:
        """One timed read per page (each a fault), in ns."""
        reply = self._check(self.faulter.call("time", deadline_s, pages=pages, expect=self.base,
                                              stride=CHECK_STRIDE))
        return reply["samples_ns"]

    def _check(self, reply: dict) -> dict:
        if reply["n_bad"]:
            raise BenchError(f"{self.key}: the faulter read {reply['n_bad']} pages wrong "
                             f"([page, first word], expected its address: {reply['bad']})")
        return reply


def _start(procs: Processes, name: str, args: list[str]) -> list[str]:
    """Start one party (its log beside the others'); the endpoints its ready line names."""
    child = Child(name, [sys.executable, "-m", "dsm.bench.floor", *args], procs.log_dir)
    procs.children.append(child)  # killed with every other child of the run
    line = child.line(START_TIMEOUT_S, f"{name} start")
    role = args[0]
    if not line.startswith(f"{role} ready"):
        raise BenchProcessError(f"unexpected first line from {name}: {line!r}")
    return line.split()[2:]


def _start_faulter(procs: Processes, key: str, unix_path: str, pages: int,
                   pids: dict[str, int]) -> FloorPath:
    """Start the faulter of the floor ``key`` (its handler listens at ``unix_path``) and wait
    until the handler holds its uffd; ``pids``: the path's other parties."""
    name = f"{key}-faulter"
    faulter = procs.start_driven(name, [sys.executable, "-m", "dsm.bench.floor", "faulter",
                                        unix_path, str(pages)])
    hello = json.loads(faulter.line(START_TIMEOUT_S, f"{name} start"))
    if not hello.pop("ok"):
        raise BenchProcessError(f"{name} could not start:\n{hello.get('error')}")
    pids["faulter"] = faulter.proc.pid
    return FloorPath(key, faulter, hello["base"],
                     {f"{key} {part}": pid for part, pid in pids.items()})


def _pid(procs: Processes) -> int:
    return procs.children[-1].proc.pid


def start(procs: Processes, endpoint: Callable[[str], str], pages: int) -> dict[str, FloorPath]:
    """Start both floors' processes (``endpoint(name)``: where a party named so binds); each
    floor's faulter maps ``pages`` pages, then ``WARMUP_PAGES`` more (the caller's warm-up)."""
    total = pages + WARMUP_PAGES
    paths: dict[str, FloorPath] = {}

    (server,) = _start(procs, f"{HOME}-server", ["server", endpoint(f"{HOME}-server")])
    pids = {"server": _pid(procs)}
    unix = str(procs.log_dir / f"{HOME}.sock")
    _start(procs, f"{HOME}-handler", ["handler", "h2", unix, server])
    pids["handler"] = _pid(procs)
    paths[HOME] = _start_faulter(procs, HOME, unix, total, pids)

    askers, forward = _start(procs, f"{THREE_HOPS}-manager",
                             ["manager", endpoint(f"{THREE_HOPS}-manager"),
                              endpoint(f"{THREE_HOPS}-forward")])
    pids = {"manager": _pid(procs)}
    unix = str(procs.log_dir / f"{THREE_HOPS}.sock")
    *_, pages_ep = _start(procs, f"{THREE_HOPS}-handler",
                          ["handler", "h3", unix, askers, endpoint(f"{THREE_HOPS}-pages")])
    pids["handler"] = _pid(procs)
    _start(procs, f"{THREE_HOPS}-owner", ["owner", forward, f"h3={pages_ep}"])
    pids["owner"] = _pid(procs)
    paths[THREE_HOPS] = _start_faulter(procs, THREE_HOPS, unix, total, pids)
    return paths


if __name__ == "__main__":
    sys.exit(main())
