"""The binding against the real kernel: handshake, registration, faults, events and errors.

Modelled on the kernel's selftests (tools/testing/selftests/mm/uffd-unit-tests.c, uffd-common.c).
The faulting side is never a Python thread holding the GIL (see DESIGN.md): it is a workload
process (tests/uffd_child.py) that registers its own memory and sends its uffd here over a Unix
socket, or, for the in-process tests, a thread inside ``ctypes.memmove`` (which drops the GIL).
Every event read has a timeout, every child is killed at teardown, every recv has a timeout.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dsm import libc
from dsm.uffd import (
    Access,
    ApiInfo,
    EventPending,
    FaultKind,
    Feature,
    FeatureUnavailable,
    Fork,
    Ioctl,
    PageExists,
    Pagefault,
    PartiallyCopied,
    ProcessGone,
    RegisterMode,
    Remap,
    Remove,
    Uffd,
    UffdError,
    UffdOpenError,
    Unmap,
    probe_features,
)

pytestmark = pytest.mark.timeout(20)

PAGE = libc.PAGE_SIZE
RW = libc.PROT_READ | libc.PROT_WRITE
CHILD_SCRIPT = Path(__file__).with_name("uffd_child.py")
#: how long a test waits for anything (an event, a reply) before failing
WAIT_S = 5.0
#: how long a test watches a process it expects to stay blocked
BLOCKED_S = 0.3

# --- helpers ---------------------------------------------------------------------------------------


def _skip_unless_offered(features: Feature) -> None:
    offered = probe_features()
    missing = Feature(int(features) & ~int(offered))
    if missing:
        pytest.skip(f"this kernel does not offer {missing!r} (offers {offered!r})")


def _pattern(byte: int, length: int = PAGE) -> bytes:
    return bytes([byte]) * length


def _anon(length: int) -> int:
    return libc.mmap_at(0, length, RW, libc.MAP_PRIVATE | libc.MAP_ANONYMOUS)


class Child:
    """A running tests/uffd_child.py, its socket, and the uffd (and memfd) it sent."""

    def __init__(self, proc: subprocess.Popen, sock: socket.socket, hello: dict, fds: list[int]):
        self.proc = proc
        self.sock = sock
        self.pid: int = hello["pid"]
        self.base: int = hello["base"]
        self.len: int = hello["len"]
        self.ioctls = Ioctl(hello["ioctls"])
        self.uffd = Uffd(fds[0])
        self.memfd = fds[1] if len(fds) > 1 else -1

    def request(self, op: str, **args: object) -> None:
        """Send a command without waiting: the child may block on a fault or an event."""
        self.sock.send(json.dumps({"op": op, **args}).encode())

    def response(self, timeout_s: float = WAIT_S) -> dict:
        self.sock.settimeout(timeout_s)
        try:
            data = self.sock.recv(1 << 20)
        except socket.timeout:
            raise AssertionError(f"child {self.pid} did not answer within {timeout_s} s") from None
        if not data:
            raise AssertionError(f"child {self.pid} died (returncode {self.proc.poll()})")
        reply = json.loads(data)
        assert reply["ok"], f"child {self.pid} failed: {reply['error']}"
        return reply

    def call(self, op: str, **args: object) -> dict:
        self.request(op, **args)
        return self.response()

    def read(self, off: int, length: int = PAGE) -> bytes:
        return bytes.fromhex(self.call("read", off=off, len=length)["hex"])

    def assert_blocked(self, for_s: float = BLOCKED_S) -> None:
        """The child has not answered its pending command (it is blocked in the kernel)."""
        self.sock.settimeout(for_s)
        try:
            data = self.sock.recv(1 << 20)
        except socket.timeout:
            return
        raise AssertionError(f"child {self.pid} answered while it should be blocked: {data[:200]!r}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=WAIT_S)
        finally:
            self.sock.close()
            self.uffd.close()
            if self.memfd >= 0:
                os.close(self.memfd)
                self.memfd = -1


@pytest.fixture
def spawn():
    """Start workload children; every one is killed at teardown, whatever happened."""
    children: list[Child] = []
    procs: list[subprocess.Popen] = []

    def start(
        mem: str = "anon",
        pages: int = 4,
        features: Feature = Feature(0),
        mode: RegisterMode = RegisterMode.MISSING,
        exit_after_send: bool = False,
    ) -> Child:
        _skip_unless_offered(features)
        cfg = {
            "mem": mem,
            "pages": pages,
            "features": int(features),
            "mode": int(mode),
            "exit_after_send": exit_after_send,
        }
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = subprocess.Popen(
                [sys.executable, str(CHILD_SCRIPT), str(theirs.fileno()), json.dumps(cfg)],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        procs.append(proc)
        ours.settimeout(WAIT_S * 2)  # interpreter start-up
        try:
            msg, fds, _, _ = socket.recv_fds(ours, 1 << 16, 2)
        except socket.timeout:
            ours.close()
            raise AssertionError("the workload child did not send its uffd in time") from None
        if not msg:
            ours.close()
            raise AssertionError(f"the workload child died at start-up (returncode {proc.wait()})")
        child = Child(proc, ours, json.loads(msg), fds)
        children.append(child)
        return child

    try:
        yield start
    finally:
        for child in children:
            child.close()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=WAIT_S)


def _fault(uffd: Uffd) -> Pagefault:
    event = uffd.read_event(timeout_s=WAIT_S)
    assert event is not None, "no page fault within the timeout"
    assert isinstance(event, Pagefault), event
    return event


def _event(uffd: Uffd, kind: type):
    event = uffd.read_event(timeout_s=WAIT_S)
    assert event is not None, f"no {kind.__name__} event within the timeout"
    assert isinstance(event, kind), event
    return event


def _no_event(uffd: Uffd) -> None:
    assert uffd.read_event(timeout_s=0.05) is None


# --- opening and the API handshake -----------------------------------------------------------------


@pytest.mark.parametrize("how", ["device", "syscall"])
def test_open_each_way(how):
    with Uffd.open(how=how) as uffd:
        assert uffd.opened_by == how
        assert uffd.fileno() >= 0 and not uffd.closed
        assert not os.get_blocking(uffd.fileno())
        assert os.get_inheritable(uffd.fileno()) is False


def test_open_rejects_unknown_way():
    with pytest.raises(ValueError, match="how must be"):
        Uffd.open(how="telepathy")


def test_open_user_mode_only():
    with Uffd.open(user_mode_only=True) as uffd:
        assert uffd.fileno() >= 0 and uffd.opened_by in ("device", "syscall")


def test_close_is_idempotent_and_context_manager_closes():
    uffd = Uffd.open()
    with uffd:
        fd = uffd.fileno()
    assert uffd.closed
    uffd.close()
    with pytest.raises(ValueError, match="closed"):
        uffd.fileno()
    try:  # really closed (another thread may have reused the number, but not for a uffd)
        assert "userfaultfd" not in os.readlink(f"/proc/self/fd/{fd}")
    except FileNotFoundError:
        pass


def test_api_after_open_without_api():
    wanted = Feature.THREAD_ID | Feature.EVENT_REMOVE
    with Uffd.open(api=False) as uffd:
        info = uffd.api(wanted)
    assert isinstance(info, ApiInfo)
    assert info.features & wanted == wanted  # the kernel reports every feature it offers
    assert info.ioctls == Ioctl.REGISTER | Ioctl.UNREGISTER | Ioctl.API


def test_api_twice_is_refused():
    """The kernel answers EINVAL to a second UFFDIO_API (and zeroes the struct): the binding says
    the handshake was already done, and does not blame a feature."""
    with Uffd.open(features=Feature.THREAD_ID) as uffd:
        for features in (Feature(0), Feature.THREAD_ID):
            with pytest.raises(UffdError, match="already done") as info:
                uffd.api(features)
            assert info.value.errno == errno.EINVAL
            assert not isinstance(info.value, FeatureUnavailable)


def test_unknown_feature_bits_raise_feature_unavailable():
    """The kernel answers EINVAL with a zeroed struct (it does not say what it offers): the binding
    probes a fresh uffd and lists what is available. The uffd is still uninitialised afterwards,
    so a second handshake with valid features succeeds."""
    bogus = Feature(1 << 40)
    with Uffd.open(api=False) as uffd:
        with pytest.raises(FeatureUnavailable) as info:
            uffd.api(bogus | Feature.THREAD_ID)
        exc = info.value
        assert exc.errno == errno.EINVAL
        assert exc.missing == 1 << 40
        assert exc.available == int(probe_features())
        assert "does not offer" in str(exc) and "it offers" in str(exc)
        assert "THREAD_ID" in str(exc)  # the available list is spelled out
        assert uffd.api(Feature.THREAD_ID).features & Feature.THREAD_ID


def _open_uffds() -> int:
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            count += "userfaultfd" in os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:
            pass
    return count


def test_open_with_unknown_features_closes_the_uffd():
    before = _open_uffds()
    with pytest.raises(FeatureUnavailable):
        Uffd.open(features=Feature(1 << 41))
    assert _open_uffds() <= before


def test_probe_features():
    offered = probe_features()
    with Uffd.open(api=False) as uffd:
        assert uffd.api().features == offered
    known = 0
    for feature in Feature:
        known |= feature
    assert int(offered) & ~known == 0, f"the kernel offers features unknown here: {offered!r}"
    basic = Feature.PAGEFAULT_FLAG_WP | Feature.EVENT_REMOVE | Feature.MISSING_SHMEM
    assert offered & basic == basic


def test_ioctl_before_api_is_einval():
    addr = _anon(PAGE)
    try:
        with Uffd.open(api=False) as uffd:
            with pytest.raises(UffdError) as info:
                uffd.register(addr, PAGE)
            assert info.value.errno == errno.EINVAL
    finally:
        libc.munmap(addr, PAGE)


def test_blocking_uffd_refuses_timeouts():
    """poll() of a uffd opened without O_NONBLOCK always reports POLLERR and read() then blocks:
    read_event(timeout_s=...) must refuse rather than hang."""
    with Uffd.open(nonblocking=False) as uffd:
        poller = select.poll()
        poller.register(uffd.fileno(), select.POLLIN)
        assert poller.poll(0) == [(uffd.fileno(), select.POLLERR)]
        for timeout_s in (0, 0.1):
            with pytest.raises(UffdError, match="O_NONBLOCK") as info:
                uffd.read_event(timeout_s=timeout_s)
            assert info.value.errno == errno.EINVAL
        with pytest.raises(UffdError, match="O_NONBLOCK"):
            uffd.wait_readable(0.1)


def test_blocking_uffd_serves_a_fault_with_a_blocking_read():
    """Without O_NONBLOCK, read_event(timeout_s=None) is the one way: it blocks until the fault
    (a thread inside ctypes.memmove, which drops the GIL) arrives."""
    addr = _anon(PAGE)
    out = ctypes.create_string_buffer(8)
    uffd = Uffd.open(nonblocking=False)
    reader = threading.Thread(target=ctypes.memmove, args=(out, addr, 8), daemon=True)
    try:
        uffd.register(addr, PAGE)
        reader.start()
        event = uffd.read_event(timeout_s=None)
        assert isinstance(event, Pagefault) and event.addr == addr
        uffd.copy(addr, _pattern(0x5B), PAGE)
        reader.join(WAIT_S)
        assert not reader.is_alive() and out.raw == _pattern(0x5B, 8)
    finally:
        uffd.close()  # releases a reader still blocked (the range unregisters)
        reader.join(WAIT_S)
        libc.munmap(addr, PAGE)


# --- registration ----------------------------------------------------------------------------------


def test_register_anon_returns_ioctls():
    addr = _anon(4 * PAGE)
    try:
        with Uffd.open(features=Feature.PAGEFAULT_FLAG_WP) as uffd:
            ioctls = uffd.register(addr, 4 * PAGE, RegisterMode.MISSING | RegisterMode.WP)
            basic = Ioctl.COPY | Ioctl.ZEROPAGE | Ioctl.WAKE | Ioctl.WRITEPROTECT
            assert ioctls & basic == basic, ioctls
            assert not ioctls & Ioctl.CONTINUE  # only MINOR ranges
            uffd.unregister(addr, 4 * PAGE)
            ioctls = uffd.register(addr, 4 * PAGE, RegisterMode.MISSING)
            assert ioctls & (Ioctl.COPY | Ioctl.ZEROPAGE | Ioctl.WAKE)
            assert not ioctls & Ioctl.WRITEPROTECT  # only WP ranges
            uffd.unregister(addr, 4 * PAGE)
            with pytest.raises(UffdError) as info:  # MINOR is for shmem and hugetlbfs
                uffd.register(addr, 4 * PAGE, RegisterMode.MINOR)
            assert info.value.errno == errno.EINVAL
    finally:
        libc.munmap(addr, 4 * PAGE)


def test_register_memfd_shared_returns_ioctls():
    _skip_unless_offered(Feature.MINOR_SHMEM | Feature.WP_HUGETLBFS_SHMEM)
    fd = os.memfd_create("uffd-test")
    os.ftruncate(fd, 4 * PAGE)
    addr = libc.mmap_at(0, 4 * PAGE, RW, libc.MAP_SHARED, fd)
    try:
        features = Feature.PAGEFAULT_FLAG_WP | Feature.MINOR_SHMEM | Feature.WP_HUGETLBFS_SHMEM
        with Uffd.open(features=features) as uffd:
            ioctls = uffd.register(addr, 4 * PAGE, RegisterMode.MISSING | RegisterMode.WP)
            basic = Ioctl.COPY | Ioctl.ZEROPAGE | Ioctl.WAKE | Ioctl.WRITEPROTECT
            assert ioctls & basic == basic, ioctls
            uffd.unregister(addr, 4 * PAGE)
            ioctls = uffd.register(addr, 4 * PAGE, RegisterMode.MINOR)
            assert ioctls & (Ioctl.CONTINUE | Ioctl.WAKE) == Ioctl.CONTINUE | Ioctl.WAKE, ioctls
    finally:
        libc.munmap(addr, 4 * PAGE)
        os.close(fd)


def test_copy_outside_registered_range_is_an_error():
    addr = _anon(2 * PAGE)
    try:
        with Uffd.open() as uffd:
            uffd.register(addr, PAGE)
            with pytest.raises(UffdError) as info:
                uffd.copy(addr + PAGE, _pattern(1), PAGE)
            assert info.value.errno == errno.ENOENT
            uffd.unregister(addr, PAGE)
            with pytest.raises(UffdError) as info:
                uffd.copy(addr, _pattern(1), PAGE)
            assert info.value.errno == errno.ENOENT
    finally:
        libc.munmap(addr, 2 * PAGE)


# --- missing faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mem", ["anon", "memfd"])
def test_missing_read_fault_served_by_copy(spawn, mem):
    child = spawn(mem=mem, features=Feature.THREAD_ID)
    child.request("read", off=PAGE, len=2 * PAGE)
    fault = _fault(child.uffd)
    assert fault == Pagefault(FaultKind.MISSING, Access.READ, child.base + PAGE, child.pid)
    child.assert_blocked()
    # one copy of two pages resolves this fault and the next one in advance
    assert child.uffd.copy(child.base + PAGE, _pattern(0xA1) + _pattern(0xA2), 2 * PAGE) == 2 * PAGE
    assert bytes.fromhex(child.response()["hex"]) == _pattern(0xA1) + _pattern(0xA2)
    _no_event(child.uffd)
    if mem == "memfd":  # the copy landed in the shared file
        assert os.pread(child.memfd, PAGE, PAGE) == _pattern(0xA1)


@pytest.mark.parametrize("mem", ["anon", "memfd"])
def test_missing_faults_served_by_zeropage(spawn, mem):
    child = spawn(mem=mem)
    child.request("write", off=2 * PAGE + 8, byte=0x5A, len=4)
    fault = _fault(child.uffd)
    assert fault == Pagefault(FaultKind.MISSING, Access.WRITE, child.base + 2 * PAGE, 0)
    assert child.uffd.zeropage(fault.addr, PAGE) == PAGE
    child.response()
    assert child.read(2 * PAGE) == bytes(8) + b"\x5a" * 4 + bytes(PAGE - 12)

    child.request("read", off=3 * PAGE + 100, len=10)
    fault = _fault(child.uffd)
    assert fault == Pagefault(FaultKind.MISSING, Access.READ, child.base + 3 * PAGE, 0)
    assert child.uffd.zeropage(fault.addr, PAGE) == PAGE
    assert bytes.fromhex(child.response()["hex"]) == bytes(10)


def test_zero_pages_put_in_a_shared_memfd_mapping_take_writes_without_a_second_fault(spawn):
    """A run of untouched pages granted for writing is installed with UFFDIO_ZEROPAGE
    (``dsm/agent/memory.py``): on a shared memfd mapping registered MISSING|WP the kernel maps
    them writable, so the writer goes on with no write-protect fault, on every page of the run."""
    child = spawn(mem="memfd", features=Feature.PAGEFAULT_FLAG_WP | Feature.WP_HUGETLBFS_SHMEM,
                  mode=RegisterMode.MISSING | RegisterMode.WP)
    child.request("write", off=PAGE + 8, byte=0x5A, len=4)
    fault = _fault(child.uffd)
    assert fault == Pagefault(FaultKind.MISSING, Access.WRITE, child.base + PAGE, 0)
    assert child.uffd.zeropage(child.base + PAGE, 2 * PAGE) == 2 * PAGE
    child.response()
    child.request("write", off=2 * PAGE, byte=0x6B, len=PAGE)  # the run's next page
    child.response()
    _no_event(child.uffd)
    assert os.pread(child.memfd, 2 * PAGE, PAGE) == bytes(8) + b"\x5a" * 4 + bytes(PAGE - 12) + (
        b"\x6b" * PAGE)


def test_exact_address_and_thread_id(spawn):
    child = spawn(features=Feature.EXACT_ADDRESS | Feature.THREAD_ID)
    child.request("read", off=PAGE + 123, len=1)
    fault = _fault(child.uffd)
    assert fault.addr == child.base + PAGE + 123
    assert fault.thread_id == child.pid  # the main thread's tid is the pid
    child.uffd.copy(child.base + PAGE, _pattern(7), PAGE)
    assert bytes.fromhex(child.response()["hex"]) == b"\x07"


# --- write-protect ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mem", ["anon", "memfd"])
def test_write_protect(spawn, mem):
    features = Feature.PAGEFAULT_FLAG_WP
    if mem == "memfd":
        features |= Feature.WP_HUGETLBFS_SHMEM
    child = spawn(mem=mem, features=features, mode=RegisterMode.MISSING | RegisterMode.WP)
    assert child.ioctls & Ioctl.WRITEPROTECT

    # a read fault, installed write-protected
    child.request("read", off=0, len=PAGE)
    fault = _fault(child.uffd)
    assert (fault.kind, fault.rw) == (FaultKind.MISSING, Access.READ)
    child.uffd.copy(child.base, _pattern(0x11), PAGE, wp=True)
    assert bytes.fromhex(child.response()["hex"]) == _pattern(0x11)
    assert child.read(0) == _pattern(0x11)  # reads no longer fault
    _no_event(child.uffd)

    # a write faults WRITE_PROTECTED and waits until protection is cleared
    child.request("write", off=16, byte=0x22, len=4)
    fault = _fault(child.uffd)
    assert fault == Pagefault(FaultKind.WRITE_PROTECTED, Access.WRITE, child.base, 0)
    child.assert_blocked()
    child.uffd.writeprotect(child.base, PAGE, wp=False)  # wakes the writer
    child.response()
    assert child.read(0, 24) == _pattern(0x11, 16) + b"\x22" * 4 + _pattern(0x11, 4)

    # protect again: the next write faults again
    child.uffd.writeprotect(child.base, PAGE, wp=True)
    child.request("write", off=0, byte=0x33, len=1)
    fault = _fault(child.uffd)
    assert (fault.kind, fault.rw) == (FaultKind.WRITE_PROTECTED, Access.WRITE)
    child.uffd.writeprotect(child.base, PAGE, wp=False)
    child.response()
    assert child.read(0, 1) == b"\x33"


# --- minor faults ----------------------------------------------------------------------------------


@pytest.mark.parametrize("populate", ["pwrite", "second-mapping"])
def test_minor_fault_continue(spawn, populate):
    child = spawn(mem="memfd", features=Feature.MINOR_SHMEM, mode=RegisterMode.MINOR)
    assert child.ioctls & Ioctl.CONTINUE
    data = bytes(range(256)) * (PAGE // 256)
    if populate == "pwrite":
        assert os.pwrite(child.memfd, data, PAGE) == PAGE
    else:  # an unregistered mapping of the same memfd, in this process: no uffd, no fault
        addr = libc.mmap_at(0, child.len, RW, libc.MAP_SHARED, child.memfd)
        try:
            ctypes.memmove(addr + PAGE, data, PAGE)
        finally:
            libc.munmap(addr, child.len)

    child.request("read", off=PAGE, len=PAGE)
    fault = _fault(child.uffd)
    assert fault == Pagefault(FaultKind.MINOR, Access.READ, child.base + PAGE, 0)
    child.assert_blocked()
    assert child.uffd.continue_(fault.addr, PAGE) == PAGE
    assert bytes.fromhex(child.response()["hex"]) == data
    _no_event(child.uffd)


# --- non-cooperative events ------------------------------------------------------------------------


def test_fork_event_and_faults_of_the_forked_child(spawn):
    child = spawn(features=Feature.EVENT_FORK)
    child.request("read", off=0, len=PAGE)
    child.uffd.copy(_fault(child.uffd).addr, _pattern(0x41), PAGE)
    child.response()

    child.request("fork", off=0, len=2 * PAGE)
    fork = _event(child.uffd, Fork)
    assert isinstance(fork.uffd, Uffd)
    with fork.uffd as grandchild_uffd:
        assert grandchild_uffd.fileno() != child.uffd.fileno()
        # page 0 was present at fork time: copied; page 1 faults on the new uffd
        fault = _fault(grandchild_uffd)
        assert fault == Pagefault(FaultKind.MISSING, Access.READ, child.base + PAGE, 0)
        grandchild_uffd.copy(fault.addr, _pattern(0x42), PAGE)
        reply = child.response()
        assert reply["status"] == 0
        assert bytes.fromhex(reply["hex"]) == _pattern(0x41) + _pattern(0x42)
    _no_event(child.uffd)  # the parent's uffd saw nothing of the grandchild's fault
    # the parent's page 1 is still missing: the grandchild's copy was its own
    child.request("read", off=PAGE, len=1)
    child.uffd.zeropage(_fault(child.uffd).addr, PAGE)
    assert child.response()["hex"] == "00"


def test_remap_then_unmap(spawn):
    child = spawn(pages=4, features=Feature.EVENT_REMAP | Feature.EVENT_UNMAP)
    child.request("read", off=0, len=PAGE)
    child.uffd.copy(_fault(child.uffd).addr, _pattern(0x61), PAGE)
    child.response()

    child.request("mremap", off=0, len=2 * PAGE)
    remap = _event(child.uffd, Remap)
    assert remap.from_ == child.base and remap.len == 2 * PAGE
    child.assert_blocked(0.1)
    unmap = _event(child.uffd, Unmap)
    assert unmap == Unmap(child.base, child.base + 2 * PAGE)
    new = child.response()["addr"]
    assert remap.to == new

    # the moved range stays registered; its present page moved with it
    assert bytes.fromhex(child.call("read", addr=new, len=PAGE)["hex"]) == _pattern(0x61)
    child.request("read", addr=new + PAGE, len=PAGE)
    fault = _fault(child.uffd)
    assert fault.addr == new + PAGE
    child.uffd.copy(fault.addr, _pattern(0x62), PAGE)
    assert bytes.fromhex(child.response()["hex"]) == _pattern(0x62)


def test_remove_from_madv_dontneed_anon(spawn):
    child = spawn(features=Feature.EVENT_REMOVE)
    child.request("read", off=0, len=PAGE)
    child.uffd.copy(_fault(child.uffd).addr, _pattern(0x71), PAGE)
    child.response()

    child.request("madvise", off=0, len=2 * PAGE, advice=libc.MADV_DONTNEED)
    assert _event(child.uffd, Remove) == Remove(child.base, child.base + 2 * PAGE)
    child.response()
    # anonymous DONTNEED drops the data: the page is missing again
    child.request("read", off=0, len=PAGE)
    fault = _fault(child.uffd)
    assert (fault.kind, fault.addr) == (FaultKind.MISSING, child.base)
    child.uffd.zeropage(fault.addr, PAGE)
    assert bytes.fromhex(child.response()["hex"]) == bytes(PAGE)


def test_remove_from_madv_dontneed_memfd_keeps_the_data(spawn):
    child = spawn(mem="memfd", features=Feature.EVENT_REMOVE)
    child.request("read", off=0, len=PAGE)
    child.uffd.copy(_fault(child.uffd).addr, _pattern(0x72), PAGE)
    child.response()

    child.request("madvise", off=0, len=PAGE, advice=libc.MADV_DONTNEED)
    assert _event(child.uffd, Remove) == Remove(child.base, child.base + PAGE)
    child.response()
    assert child.read(0) == _pattern(0x72)  # still in the page cache: no fault
    _no_event(child.uffd)


def test_remove_from_madv_remove_memfd(spawn):
    child = spawn(mem="memfd", features=Feature.EVENT_REMOVE)
    child.request("read", off=PAGE, len=PAGE)
    child.uffd.copy(_fault(child.uffd).addr, _pattern(0x73), PAGE)
    child.response()
    assert os.pread(child.memfd, PAGE, PAGE) == _pattern(0x73)

    child.request("madvise", off=PAGE, len=PAGE, advice=libc.MADV_REMOVE)
    assert _event(child.uffd, Remove) == Remove(child.base + PAGE, child.base + 2 * PAGE)
    child.response()
    assert os.pread(child.memfd, PAGE, PAGE) == bytes(PAGE)  # the hole reads as zeros
    child.request("read", off=PAGE, len=PAGE)
    fault = _fault(child.uffd)
    assert (fault.kind, fault.addr) == (FaultKind.MISSING, child.base + PAGE)
    child.uffd.zeropage(fault.addr, PAGE)
    assert bytes.fromhex(child.response()["hex"]) == bytes(PAGE)


def test_unmap_from_munmap(spawn):
    child = spawn(pages=4, features=Feature.EVENT_UNMAP)
    child.request("munmap", off=PAGE, len=2 * PAGE)
    assert _event(child.uffd, Unmap) == Unmap(child.base + PAGE, child.base + 3 * PAGE)
    child.response()
    _no_event(child.uffd)


def test_no_events_without_the_features(spawn):
    child = spawn(pages=4)
    child.call("madvise", off=0, len=PAGE, advice=libc.MADV_DONTNEED)
    child.call("munmap", off=3 * PAGE, len=PAGE)
    _no_event(child.uffd)


# --- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("trigger", ["madvise", "munmap", "mremap"])
def test_eagain_while_an_event_is_unread(spawn, trigger):
    features = Feature.EVENT_REMOVE | Feature.EVENT_UNMAP | Feature.EVENT_REMAP
    child = spawn(pages=4, features=features)
    if trigger == "madvise":
        child.request("madvise", off=2 * PAGE, len=2 * PAGE, advice=libc.MADV_DONTNEED)
        expected = [Remove]
    elif trigger == "munmap":
        child.request("munmap", off=2 * PAGE, len=2 * PAGE)
        expected = [Unmap]
    else:
        child.request("mremap", off=2 * PAGE, len=2 * PAGE)
        expected = [Remap, Unmap]

    for kind in expected:
        assert child.uffd.wait_readable(WAIT_S), f"no {kind.__name__} event queued"
        child.assert_blocked(0.05)
        with pytest.raises(EventPending) as info:
            child.uffd.copy(child.base, _pattern(0x81), PAGE)
        assert info.value.errno == errno.EAGAIN
        assert not isinstance(info.value, PartiallyCopied)
        with pytest.raises(EventPending):
            child.uffd.zeropage(child.base + PAGE, PAGE)
        _event(child.uffd, kind)
    child.response()

    assert child.uffd.copy(child.base, _pattern(0x81), PAGE) == PAGE
    assert child.uffd.zeropage(child.base + PAGE, PAGE) == PAGE
    assert child.read(0, 2 * PAGE) == _pattern(0x81) + bytes(PAGE)  # no fault: both present
    _no_event(child.uffd)


def test_eexist_then_wake(spawn):
    """A page installed without waking its waiter: a second copy says EEXIST, and only a wake
    releases the waiter."""
    child = spawn()
    child.request("read", off=0, len=PAGE)
    fault = _fault(child.uffd)
    assert child.uffd.copy(fault.addr, _pattern(0x91), PAGE, wake=False) == PAGE
    child.assert_blocked()
    with pytest.raises(PageExists) as info:
        child.uffd.copy(fault.addr, _pattern(0x92), PAGE)
    assert info.value.errno == errno.EEXIST
    with pytest.raises(PageExists):
        child.uffd.zeropage(fault.addr, PAGE)
    child.assert_blocked()
    child.uffd.wake(fault.addr, PAGE)
    assert bytes.fromhex(child.response()["hex"]) == _pattern(0x91)


def test_partial_copy_and_zeropage(spawn):
    """Two pages where the second is present: the kernel resolves the first, stores the progress
    (4096) in the struct and fails the ioctl with EAGAIN (not EEXIST). The binding raises
    PartiallyCopied; copying the rest then says EEXIST."""
    child = spawn(pages=4)
    uffd = child.uffd
    assert uffd.copy(child.base + PAGE, _pattern(0xB2), PAGE) == PAGE
    with pytest.raises(PartiallyCopied) as info:
        uffd.copy(child.base, _pattern(0xB1) * 2, 2 * PAGE)
    exc = info.value
    assert (exc.done, exc.requested, exc.errno) == (PAGE, 2 * PAGE, errno.EAGAIN)
    assert isinstance(exc, EventPending)
    assert f"{PAGE} of {2 * PAGE}" in str(exc)
    with pytest.raises(PageExists):
        uffd.copy(child.base + exc.done, _pattern(0xB1), PAGE)

    assert uffd.zeropage(child.base + 3 * PAGE, PAGE) == PAGE
    with pytest.raises(PartiallyCopied) as info:
        uffd.zeropage(child.base + 2 * PAGE, 2 * PAGE)
    assert (info.value.done, info.value.requested) == (PAGE, 2 * PAGE)

    assert child.read(0, 4 * PAGE) == _pattern(0xB1) + _pattern(0xB2) + bytes(2 * PAGE)
    _no_event(uffd)


def test_esrch_after_the_process_exited(spawn):
    child = spawn(exit_after_send=True)
    assert child.proc.wait(timeout=WAIT_S) == 0
    with pytest.raises(ProcessGone) as info:
        child.uffd.copy(child.base, _pattern(1), PAGE)
    assert info.value.errno == errno.ESRCH
    with pytest.raises(ProcessGone):
        child.uffd.zeropage(child.base, PAGE)
    assert child.uffd.read_event(timeout_s=0.05) is None  # a uffd shows nothing of the exit


# --- move and poison -------------------------------------------------------------------------------


def test_move_resolves_a_fault():
    """UFFDIO_MOVE inside this process: a thread faults in ctypes.memmove (GIL released), the
    test moves two source pages under it. Then the edge cases the kernel reports: an empty source
    is ENOENT unless ALLOW_SRC_HOLES (which counts the hole as done and installs nothing), and a
    present destination is EEXIST."""
    _skip_unless_offered(Feature.MOVE)
    length = 2 * PAGE
    src, dst = _anon(length), _anon(3 * PAGE)
    out = ctypes.create_string_buffer(length)
    data = _pattern(0xC1) + _pattern(0xC2)
    ctypes.memmove(src, data, length)
    uffd = Uffd.open(features=Feature.MOVE)
    reader = threading.Thread(target=ctypes.memmove, args=(out, dst, length), daemon=True)
    try:
        assert uffd.register(dst, 3 * PAGE) & Ioctl.MOVE
        reader.start()
        fault = _fault(uffd)
        assert (fault.kind, fault.rw, fault.addr) == (FaultKind.MISSING, Access.READ, dst)
        assert uffd.move(dst, src, length) == length
        reader.join(WAIT_S)
        assert not reader.is_alive()
        assert out.raw == data
        assert libc.resident_pages(src, length) == b"\0\0"  # the pages left the source
        assert ctypes.string_at(src, length) == bytes(length)  # (unregistered: reads zeros)
        libc.madvise(src, length, libc.MADV_DONTNEED)

        with pytest.raises(UffdError) as info:
            uffd.move(dst + 2 * PAGE, src, PAGE)
        assert info.value.errno == errno.ENOENT
        assert uffd.move(dst + 2 * PAGE, src, PAGE, allow_src_holes=True) == PAGE
        assert libc.resident_pages(dst, 3 * PAGE) == b"\1\1\0"
        ctypes.memmove(src, data, PAGE)
        with pytest.raises(PageExists):
            uffd.move(dst, src, PAGE)
    finally:
        uffd.close()  # releases a reader still blocked (the range unregisters)
        reader.join(WAIT_S)
        libc.munmap(src, length)
        libc.munmap(dst, 3 * PAGE)


def test_poison_raises_sigbus_in_the_faulting_process(spawn):
    child = spawn(features=Feature.POISON)
    assert child.ioctls & Ioctl.POISON
    child.request("read", off=PAGE, len=PAGE)
    fault = _fault(child.uffd)
    assert child.uffd.poison(fault.addr, PAGE) == PAGE
    assert child.proc.wait(timeout=WAIT_S) == -signal.SIGBUS


def test_open_failure_reports_the_refusal_not_a_missing_syscall(monkeypatch):
    """When every way of opening fails, the error's errno is the refusal (EACCES/EPERM) that
    tells the user what to fix, and the message names each way and what it answered."""
    import errno as errno_mod

    from dsm.uffd import uffd as uffd_module

    def refuse(flags):
        raise PermissionError(errno_mod.EACCES, "Permission denied: '/dev/userfaultfd'")

    def absent(flags):
        raise OSError(errno_mod.ENOSYS, "Function not implemented")

    monkeypatch.setitem(uffd_module._OPENERS, "device", refuse)
    monkeypatch.setitem(uffd_module._OPENERS, "syscall", absent)
    with pytest.raises(UffdOpenError) as info:
        Uffd.open()
    assert info.value.errno == errno_mod.EACCES
    assert "device:" in str(info.value) and "syscall:" in str(info.value)


def test_api_with_required_features_enables_optional_ones_where_offered():
    unknown = Feature(1 << 40)
    with Uffd.open(api=False) as u:
        info = u.api(Feature.THREAD_ID | unknown, required=Feature.THREAD_ID)
        assert info.features & Feature.THREAD_ID
    with Uffd.open(api=False) as u:
        with pytest.raises(FeatureUnavailable) as exc:
            u.api(Feature.THREAD_ID, required=Feature.THREAD_ID | unknown)
        assert exc.value.missing == int(unknown)
