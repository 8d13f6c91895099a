"""Pins every number of dsm.uffd.abi to the kernel's header.

A small C program, compiled with gcc against the installed ``<linux/userfaultfd.h>``, prints the
size and field offsets of every struct and the value of every constant the header defines; each
is compared with abi. What is newer than the installed header (the 6.1 header here lacks MOVE,
POISON, WP_UNPOPULATED, WP_ASYNC, CONTINUE_MODE_WP) is pinned to the literal values of the current
kernel header. Skipped, with the reason, only when gcc or the header is missing.
"""

from __future__ import annotations

import shutil
import struct
import subprocess

import pytest

from dsm.uffd import abi
from dsm.uffd.abi import Feature, Ioctl, RegisterMode

# --- the C side ----------------------------------------------------------------------------------

#: every constant abi mirrors; the C program prints those the header defines (#ifdef)
CONSTANTS = [
    "USERFAULTFD_IOC", "USERFAULTFD_IOC_NEW", "UFFD_API", "UFFDIO", "UFFD_USER_MODE_ONLY",
    "_UFFDIO_REGISTER", "_UFFDIO_UNREGISTER", "_UFFDIO_WAKE", "_UFFDIO_COPY", "_UFFDIO_ZEROPAGE",
    "_UFFDIO_MOVE", "_UFFDIO_WRITEPROTECT", "_UFFDIO_CONTINUE", "_UFFDIO_POISON", "_UFFDIO_API",
    "UFFDIO_API", "UFFDIO_REGISTER", "UFFDIO_UNREGISTER", "UFFDIO_WAKE", "UFFDIO_COPY",
    "UFFDIO_ZEROPAGE", "UFFDIO_MOVE", "UFFDIO_WRITEPROTECT", "UFFDIO_CONTINUE", "UFFDIO_POISON",
    "UFFD_EVENT_PAGEFAULT", "UFFD_EVENT_FORK", "UFFD_EVENT_REMAP", "UFFD_EVENT_REMOVE",
    "UFFD_EVENT_UNMAP",
    "UFFD_PAGEFAULT_FLAG_WRITE", "UFFD_PAGEFAULT_FLAG_WP", "UFFD_PAGEFAULT_FLAG_MINOR",
    "UFFD_FEATURE_PAGEFAULT_FLAG_WP", "UFFD_FEATURE_EVENT_FORK", "UFFD_FEATURE_EVENT_REMAP",
    "UFFD_FEATURE_EVENT_REMOVE", "UFFD_FEATURE_MISSING_HUGETLBFS", "UFFD_FEATURE_MISSING_SHMEM",
    "UFFD_FEATURE_EVENT_UNMAP", "UFFD_FEATURE_SIGBUS", "UFFD_FEATURE_THREAD_ID",
    "UFFD_FEATURE_MINOR_HUGETLBFS", "UFFD_FEATURE_MINOR_SHMEM", "UFFD_FEATURE_EXACT_ADDRESS",
    "UFFD_FEATURE_WP_HUGETLBFS_SHMEM", "UFFD_FEATURE_WP_UNPOPULATED", "UFFD_FEATURE_POISON",
    "UFFD_FEATURE_WP_ASYNC", "UFFD_FEATURE_MOVE",
    "UFFDIO_REGISTER_MODE_MISSING", "UFFDIO_REGISTER_MODE_WP", "UFFDIO_REGISTER_MODE_MINOR",
    "UFFDIO_COPY_MODE_DONTWAKE", "UFFDIO_COPY_MODE_WP", "UFFDIO_ZEROPAGE_MODE_DONTWAKE",
    "UFFDIO_WRITEPROTECT_MODE_WP", "UFFDIO_WRITEPROTECT_MODE_DONTWAKE",
    "UFFDIO_CONTINUE_MODE_DONTWAKE", "UFFDIO_CONTINUE_MODE_WP",
    "UFFDIO_MOVE_MODE_DONTWAKE", "UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES", "UFFDIO_POISON_MODE_DONTWAKE",
]

#: what is newer than the 6.1 header, pinned to the values of the kernel's current header
#: (include/uapi/linux/userfaultfd.h, Linux 6.8+)
PINNED_NEWER = {
    "_UFFDIO_MOVE": 0x05,
    "_UFFDIO_POISON": 0x08,
    "UFFDIO_MOVE": 0xC028AA05,
    "UFFDIO_POISON": 0xC020AA08,
    "UFFD_FEATURE_WP_UNPOPULATED": 1 << 13,
    "UFFD_FEATURE_POISON": 1 << 14,
    "UFFD_FEATURE_WP_ASYNC": 1 << 15,
    "UFFD_FEATURE_MOVE": 1 << 16,
    "UFFDIO_CONTINUE_MODE_WP": 1 << 1,
    "UFFDIO_MOVE_MODE_DONTWAKE": 1 << 0,
    "UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES": 1 << 1,
    "UFFDIO_POISON_MODE_DONTWAKE": 1 << 0,
}

#: masks the header defines, to compare with the Ioctl and RegisterMode flags
MASKS = [
    "UFFD_API_REGISTER_MODES", "UFFD_API_FEATURES", "UFFD_API_IOCTLS", "UFFD_API_RANGE_IOCTLS",
    "UFFD_API_RANGE_IOCTLS_BASIC",
]

#: struct name -> (abi struct, C field expressions in the order of the Python struct's fields)
STRUCTS = {
    "uffdio_api": (abi.STRUCT_UFFDIO_API, ["api", "features", "ioctls"]),
    "uffdio_range": (abi.STRUCT_UFFDIO_RANGE, ["start", "len"]),
    "uffdio_register": (abi.STRUCT_UFFDIO_REGISTER, ["range.start", "range.len", "mode", "ioctls"]),
    "uffdio_copy": (abi.STRUCT_UFFDIO_COPY, ["dst", "src", "len", "mode", "copy"]),
    "uffdio_zeropage": (
        abi.STRUCT_UFFDIO_ZEROPAGE, ["range.start", "range.len", "mode", "zeropage"]
    ),
    "uffdio_writeprotect": (abi.STRUCT_UFFDIO_WRITEPROTECT, ["range.start", "range.len", "mode"]),
    "uffdio_continue": (abi.STRUCT_UFFDIO_CONTINUE, ["range.start", "range.len", "mode", "mapped"]),
    "uffdio_move": (abi.STRUCT_UFFDIO_MOVE, ["dst", "src", "len", "mode", "move"]),
    "uffdio_poison": (abi.STRUCT_UFFDIO_POISON, ["range.start", "range.len", "mode", "updated"]),
}
#: structs newer than the 6.1 header, guarded in C by the ioctl that uses them
NEWER_STRUCTS = {"uffdio_move": "UFFDIO_MOVE", "uffdio_poison": "UFFDIO_POISON"}
#: their layout in the kernel's current header: (sizeof, offsets, field sizes)
PINNED_NEWER_STRUCTS = {
    "uffdio_move": (40, [0, 8, 16, 24, 32], [8, 8, 8, 8, 8]),  # dst src len mode move
    "uffdio_poison": (32, [0, 8, 16, 24], [8, 8, 8, 8]),  # range.start range.len mode updated
}

#: uffd_msg field -> (abi struct holding it, index of the field in it, base offset of that struct)
MSG_FIELDS = {
    "event": (abi.STRUCT_UFFD_MSG_HEADER, 0, 0),
    "arg.pagefault.flags": (abi.STRUCT_MSG_PAGEFAULT, 0, abi.UFFD_MSG_ARG_OFFSET),
    "arg.pagefault.address": (abi.STRUCT_MSG_PAGEFAULT, 1, abi.UFFD_MSG_ARG_OFFSET),
    "arg.pagefault.feat.ptid": (abi.STRUCT_MSG_PAGEFAULT, 2, abi.UFFD_MSG_ARG_OFFSET),
    "arg.fork.ufd": (abi.STRUCT_MSG_FORK, 0, abi.UFFD_MSG_ARG_OFFSET),
    "arg.remap.from": (abi.STRUCT_MSG_REMAP, 0, abi.UFFD_MSG_ARG_OFFSET),
    "arg.remap.to": (abi.STRUCT_MSG_REMAP, 1, abi.UFFD_MSG_ARG_OFFSET),
    "arg.remap.len": (abi.STRUCT_MSG_REMAP, 2, abi.UFFD_MSG_ARG_OFFSET),
    "arg.remove.start": (abi.STRUCT_MSG_RANGE, 0, abi.UFFD_MSG_ARG_OFFSET),
    "arg.remove.end": (abi.STRUCT_MSG_RANGE, 1, abi.UFFD_MSG_ARG_OFFSET),
}


def _c_program() -> str:
    lines = [
        "#include <stdio.h>",
        "#include <stddef.h>",
        "#include <sys/ioctl.h>",
        "#include <linux/userfaultfd.h>",
        "#define SIZE(s) printf(\"sizeof %s %zu\\n\", #s, sizeof(struct s));",
        "#define OFF(s, f) printf(\"offsetof %s.%s %zu\\n\", #s, #f, offsetof(struct s, f));",
        "#define FSIZE(s, f) printf(\"fieldsize %s.%s %zu\\n\", #s, #f, "
        "sizeof(((struct s *)0)->f));",
        "#define CONST(c) printf(\"const %s %llu\\n\", #c, (unsigned long long)(c));",
        "int main(void) {",
    ]
    for name in CONSTANTS + MASKS:
        lines += [f"#ifdef {name}", f"CONST({name})", "#endif"]
    for name, (_, fields) in STRUCTS.items():
        guard = NEWER_STRUCTS.get(name)
        if guard:
            lines.append(f"#ifdef {guard}")
        lines.append(f"SIZE({name})")
        lines += [f"OFF({name}, {field})" for field in fields]
        lines += [f"FSIZE({name}, {field})" for field in fields]
        if guard:
            lines.append("#endif")
    lines.append("SIZE(uffd_msg)")
    lines.append("FSIZE(uffd_msg, arg)")
    for field in MSG_FIELDS:
        lines += [f"OFF(uffd_msg, {field})", f"FSIZE(uffd_msg, {field})"]
    lines += ["return 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def header(tmp_path_factory) -> dict[str, dict[str, int]]:
    """What the installed header says: {"const": {...}, "sizeof": {...}, "offsetof": {...},
    "fieldsize": {...}}."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: cannot compile against <linux/userfaultfd.h>")
    tmp = tmp_path_factory.mktemp("uffd_abi")
    probe = tmp / "probe.c"
    probe.write_text(
        "#include <sys/ioctl.h>\n#include <linux/userfaultfd.h>\nint main(void) { return 0; }\n"
    )
    found = subprocess.run([gcc, "-fsyntax-only", str(probe)], capture_output=True, text=True)
    if found.returncode != 0:
        pytest.skip(f"<linux/userfaultfd.h> is not installed: {found.stderr.strip()[:300]}")
    source, binary = tmp / "uffd_abi.c", tmp / "uffd_abi"
    source.write_text(_c_program())
    build = subprocess.run(
        [gcc, "-Wall", "-Werror", "-o", str(binary), str(source)], capture_output=True, text=True
    )
    assert build.returncode == 0, f"the ABI program does not compile:\n{build.stderr}"
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=30, check=True)
    out: dict[str, dict[str, int]] = {"const": {}, "sizeof": {}, "offsetof": {}, "fieldsize": {}}
    for line in run.stdout.splitlines():
        kind, name, value = line.split()
        out[kind][name] = int(value)
    return out


def _field_offsets(st: struct.Struct) -> list[int]:
    """Where a Python struct puts each of its fields."""
    order, codes = st.format[0], st.format[1:]
    return [struct.calcsize(order + codes[:i]) for i in range(len(codes))]


def _field_sizes(st: struct.Struct) -> list[int]:
    order = st.format[0]
    return [struct.calcsize(order + code) for code in st.format[1:]]


# --- constants -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CONSTANTS)
def test_constant_matches_header(header, name):
    """From the installed header when it defines the name, else from the pinned literal; a name
    the installed header lacks must be one of the newer ones."""
    value = getattr(abi, name)
    if name in header["const"]:
        want = header["const"][name]
        assert value == want, f"{name}: abi {value:#x}, header {want:#x}"
    else:
        assert name in PINNED_NEWER, f"the installed header lacks {name}, which Linux 6.1 has"
    if name in PINNED_NEWER:
        want = PINNED_NEWER[name]
        assert value == want, f"{name}: abi {value:#x}, kernel header {want:#x}"


def test_newer_ioctl_numbers_follow_from_their_structs():
    assert abi.UFFDIO_MOVE == abi._IOWR(abi.UFFDIO, 0x05, 40) == 0xC028AA05
    assert abi.UFFDIO_POISON == abi._IOWR(abi.UFFDIO, 0x08, 32) == 0xC020AA08


def test_known_numbers_from_design():
    assert abi.UFFDIO_API == 0xC018AA3F
    assert abi.UFFDIO_REGISTER == 0xC020AA00
    assert abi.UFFDIO_UNREGISTER == 0x8010AA01
    assert abi.UFFDIO_WAKE == 0x8010AA02
    assert abi.UFFDIO_COPY == 0xC028AA03
    assert abi.UFFDIO_ZEROPAGE == 0xC020AA04
    assert abi.UFFDIO_WRITEPROTECT == 0xC018AA06
    assert abi.UFFDIO_CONTINUE == 0xC020AA07
    assert abi.USERFAULTFD_IOC_NEW == 0xAA00
    assert abi.UFFD_API == 0xAA
    assert abi.UFFD_MSG_SIZE == 32
    assert abi.USERFAULTFD_DEVICE == "/dev/userfaultfd"


def test_masks_match_header(header):
    const = header["const"]
    # the ioctls UFFDIO_API reports for the fd
    assert const["UFFD_API_IOCTLS"] == Ioctl.REGISTER | Ioctl.UNREGISTER | Ioctl.API
    # every range ioctl bit the header knows has a name in Ioctl
    all_ioctls = sum(int(i) for i in Ioctl)
    assert const["UFFD_API_RANGE_IOCTLS"] & ~all_ioctls == 0
    assert const["UFFD_API_RANGE_IOCTLS_BASIC"] & ~all_ioctls == 0
    # every register mode and feature of the header has a name
    assert const["UFFD_API_REGISTER_MODES"] == sum(int(m) for m in RegisterMode)
    assert const["UFFD_API_FEATURES"] & ~sum(int(f) for f in Feature) == 0


def test_flag_enums_mirror_the_constants():
    for feature in Feature:
        assert feature.value == getattr(abi, f"UFFD_FEATURE_{feature.name}")
    for mode in RegisterMode:
        assert mode.value == getattr(abi, f"UFFDIO_REGISTER_MODE_{mode.name}")
    for ioctl in Ioctl:
        assert ioctl.value == 1 << getattr(abi, f"_UFFDIO_{ioctl.name}")


# --- structs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(STRUCTS))
def test_struct_layout_matches_header(header, name):
    st, fields = STRUCTS[name]
    if name in header["sizeof"]:
        want_size = header["sizeof"][name]
        want_offsets = [header["offsetof"][f"{name}.{field}"] for field in fields]
        want_sizes = [header["fieldsize"][f"{name}.{field}"] for field in fields]
    else:  # newer than the installed header
        want_size, want_offsets, want_sizes = PINNED_NEWER_STRUCTS[name]
    if name in PINNED_NEWER_STRUCTS:
        assert (want_size, want_offsets, want_sizes) == PINNED_NEWER_STRUCTS[name]
    assert st.size == want_size, f"sizeof(struct {name})"
    assert _field_offsets(st) == want_offsets, f"offsets of struct {name} fields {fields}"
    assert _field_sizes(st) == want_sizes, f"sizes of struct {name} fields {fields}"


def test_uffd_msg_layout_matches_header(header):
    assert header["sizeof"]["uffd_msg"] == abi.UFFD_MSG_SIZE == 32
    assert header["offsetof"]["uffd_msg.arg.pagefault.flags"] == abi.UFFD_MSG_ARG_OFFSET
    assert abi.UFFD_MSG_ARG_OFFSET + header["fieldsize"]["uffd_msg.arg"] == abi.UFFD_MSG_SIZE
    for field, (st, index, base) in MSG_FIELDS.items():
        assert base + _field_offsets(st)[index] == header["offsetof"][f"uffd_msg.{field}"], field
        assert _field_sizes(st)[index] == header["fieldsize"][f"uffd_msg.{field}"], field
    for st in (abi.STRUCT_MSG_PAGEFAULT, abi.STRUCT_MSG_FORK, abi.STRUCT_MSG_REMAP,
               abi.STRUCT_MSG_RANGE):
        assert abi.UFFD_MSG_ARG_OFFSET + st.size <= abi.UFFD_MSG_SIZE


def test_uffd_msg_offsets_from_design():
    offsets = {field: base + _field_offsets(st)[i] for field, (st, i, base) in MSG_FIELDS.items()}
    assert offsets == {
        "event": 0,
        "arg.pagefault.flags": 8, "arg.pagefault.address": 16, "arg.pagefault.feat.ptid": 24,
        "arg.fork.ufd": 8,
        "arg.remap.from": 8, "arg.remap.to": 16, "arg.remap.len": 24,
        "arg.remove.start": 8, "arg.remove.end": 16,
    }


# --- the syscall number --------------------------------------------------------------------------


def test_syscall_numbers():
    assert abi.syscall_number("x86_64") == 323
    assert abi.syscall_number("aarch64") == 282


def test_syscall_number_unknown_arch():
    with pytest.raises(LookupError, match=r"architecture 'vax'.*known: .*x86_64"):
        abi.syscall_number("vax")


def test_syscall_number_of_this_machine_matches_libc_header(tmp_path):
    """On the build machine itself: __NR_userfaultfd of <sys/syscall.h>."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: cannot read __NR_userfaultfd")
    source = tmp_path / "nr.c"
    source.write_text(
        "#include <stdio.h>\n#include <sys/syscall.h>\n"
        "int main(void) { printf(\"%d\\n\", (int)__NR_userfaultfd); return 0; }\n"
    )
    build = subprocess.run([gcc, "-o", str(tmp_path / "nr"), str(source)], capture_output=True)
    if build.returncode != 0:
        pytest.skip(f"<sys/syscall.h> has no __NR_userfaultfd: {build.stderr.decode()[:300]}")
    run = subprocess.run([str(tmp_path / "nr")], capture_output=True, text=True, check=True)
    assert abi.syscall_number() == int(run.stdout)
