"""A workload process for tests/test_uffd_kernel.py: the side that faults and raises events.

Run as ``python uffd_child.py SOCKFD CONFIG_JSON``. SOCKFD is an inherited AF_UNIX SOCK_SEQPACKET
socket; CONFIG_JSON is ``{"mem": "anon"|"memfd", "pages": N, "features": int, "mode": int,
"exit_after_send": bool}``.

The child maps N pages (anonymous private, or a memfd mapped MAP_SHARED), opens its own uffd with
``features``, registers the whole mapping with ``mode`` and sends one hello message carrying
``{"pid", "base", "len", "ioctls"}`` with the fds ``[uffd]`` or ``[uffd, memfd]``. It keeps its own
uffd open (a closed last reference would turn faults into zero pages). Then it executes one JSON
command per message and answers each with ``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``:

- ``read`` ``{"off"|"addr", "len"}`` -> ``{"hex"}``: the bytes, read with ctypes.memmove
- ``write`` ``{"off"|"addr", "byte", "len"}``: memset
- ``fork`` ``{"off", "len"}`` -> ``{"pid", "hex", "status"}``: fork; the child reads the range and
  hands the bytes back through a pipe, then exits
- ``mremap`` ``{"off", "len"}`` -> ``{"addr"}``: move the range (MAYMOVE|FIXED) over a fresh mapping
- ``madvise`` ``{"off", "len", "advice"}``, ``munmap`` ``{"off", "len"}``
- ``exit``: answer, then exit 0

Only the main thread runs here and nothing in this process reads the uffd: a fault blocks this
process until the test resolves it, which is exactly what the test wants.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import socket
import sys
import types


def _import_the_binding_alone() -> None:
    """Let ``import dsm.uffd`` skip ``dsm/__init__.py``: the package's top level pulls in the whole
    node (numpy, zmq), a tenth of a second or more per child, and one child starts per test. The
    binding itself needs only dsm.errors, dsm.libc and dsm.uffd.*."""
    spec = importlib.util.find_spec("dsm")
    if spec is None or spec.submodule_search_locations is None or "dsm" in sys.modules:
        return
    package = types.ModuleType("dsm", "the dsm package, without its top-level imports")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["dsm"] = package


_import_the_binding_alone()

from dsm import libc  # noqa: E402
from dsm.uffd import Feature, RegisterMode, Uffd  # noqa: E402

PAGE = libc.PAGE_SIZE
RW = libc.PROT_READ | libc.PROT_WRITE


class Workload:
    def __init__(self, cfg: dict):
        self.length = cfg["pages"] * PAGE
        self.memfd = -1
        if cfg["mem"] == "anon":
            self.base = libc.mmap_at(0, self.length, RW, libc.MAP_PRIVATE | libc.MAP_ANONYMOUS)
        elif cfg["mem"] == "memfd":
            self.memfd = os.memfd_create("uffd-test")
            os.ftruncate(self.memfd, self.length)
            self.base = libc.mmap_at(0, self.length, RW, libc.MAP_SHARED, self.memfd)
        else:
            raise ValueError(f"unknown memory type {cfg['mem']!r}")
        self.uffd = Uffd.open(features=Feature(cfg["features"]))
        self.ioctls = int(self.uffd.register(self.base, self.length, RegisterMode(cfg["mode"])))

    def addr(self, cmd: dict) -> int:
        return cmd["addr"] if "addr" in cmd else self.base + cmd["off"]

    def read(self, addr: int, length: int) -> bytes:
        buf = ctypes.create_string_buffer(length)
        ctypes.memmove(buf, addr, length)
        return buf.raw

    def handle(self, cmd: dict) -> dict:
        op = cmd["op"]
        if op == "exit":
            return {}
        if op == "read":
            return {"hex": self.read(self.addr(cmd), cmd["len"]).hex()}
        if op == "write":
            libc.memset(self.addr(cmd), cmd["byte"], cmd["len"])
            return {}
        if op == "fork":
            return self.fork(self.addr(cmd), cmd["len"])
        if op == "mremap":
            length = cmd["len"]
            target = libc.mmap_at(0, length, RW, libc.MAP_PRIVATE | libc.MAP_ANONYMOUS)
            flags = libc.MREMAP_MAYMOVE | libc.MREMAP_FIXED
            return {"addr": libc.mremap(self.addr(cmd), length, length, flags, target)}
        if op == "madvise":
            libc.madvise(self.addr(cmd), cmd["len"], cmd["advice"])
            return {}
        if op == "munmap":
            libc.munmap(self.addr(cmd), cmd["len"])
            return {}
        raise ValueError(f"unknown op {op!r}")

    def fork(self, addr: int, length: int) -> dict:
        r, w = os.pipe()
        pid = os.fork()  # with EVENT_FORK this blocks until the test reads the Fork event
        if pid == 0:
            status = 1
            try:
                os.close(r)
                os.write(w, self.read(addr, length))
                status = 0
            finally:
                os._exit(status)
        os.close(w)
        chunks = []
        while chunk := os.read(r, 1 << 16):
            chunks.append(chunk)
        os.close(r)
        _, status = os.waitpid(pid, 0)
        status = os.waitstatus_to_exitcode(status)
        return {"pid": pid, "hex": b"".join(chunks).hex(), "status": status}


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    cfg = json.loads(sys.argv[2])
    work = Workload(cfg)
    hello = {"pid": os.getpid(), "base": work.base, "len": work.length, "ioctls": work.ioctls}
    fds = [work.uffd.fileno()] + ([work.memfd] if work.memfd >= 0 else [])
    socket.send_fds(sock, [json.dumps(hello).encode()], fds)
    if cfg.get("exit_after_send"):
        return
    while True:
        data = sock.recv(1 << 16)
        if not data:  # the test went away
            os._exit(0)
        cmd = json.loads(data)
        try:
            reply = {"ok": True, **work.handle(cmd)}
        except Exception as exc:  # report, keep serving
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        sock.send(json.dumps(reply).encode())
        if cmd["op"] == "exit":
            os._exit(0)


if __name__ == "__main__":
    main()
