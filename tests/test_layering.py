"""The layering the simulator depends on: the state machines (the node core, the directory's tables,
the session layer) and the protocol do no I/O of their own, so that the processes and the
simulator drive the same code through their own transport, clock and kernel.

Two checks: no module of the state machines names a socket, ZeroMQ, ctypes, fcntl or the
kernel's userfaultfd descriptor in its source; and importing them all in a fresh interpreter
loads none of those (what they import, transitively). ctypes itself is loaded by numpy, so the
second check names dsm's own ctypes binding (``dsm.libc``) instead. And one wiring of a node:
the agent and the simulator deliver what reaches a node through the one inbox
(``dsm/core/inbox.py``, a state machine), the only module that builds the core's handler table.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

PACKAGE = Path(__file__).resolve().parent.parent / "dsm"

#: the state machines: whole packages, and single modules of packages that also hold processes
STATE_MACHINE_PACKAGES = ("core", "directory/pages",
                          # the manager shards' roles: the coordinator and the members
                          "directory/shard")
STATE_MACHINE_MODULES = (
    "protocol", "schema", "reliability", "layout", "errors", "bugs",
    "directory/allocations", "directory/atomics", "directory/collectives", "directory/home",
    "directory/lifetimes", "directory/notices", "directory/programs", "directory/release",
    "directory/sessions", "directory/sync", "directory/syncrequests",
    # the directory state machine the ZeroMQ shell (directory/service) and the simulator run
    "directory/machine", "directory/requests", "directory/stats",
)
#: what a state machine must not import itself: sockets, ZeroMQ, the libc, the uffd descriptor
FORBIDDEN_IN_SOURCE = ("zmq", "socket", "select", "selectors", "ctypes", "fcntl", "dsm.libc",
                       "dsm.uffd.uffd")
#: what importing them all must not load (numpy brings ctypes: dsm's own binding stands for it)
FORBIDDEN_LOADED = ("zmq", "socket", "select", "fcntl", "dsm.libc", "dsm.uffd.uffd", "dsm.agent",
                    "dsm.node")
#: the one dispatch of what reaches a node, and the modules that deliver through it: the agent's
#: (its sockets) and the simulator's nodes
NODE_INBOX = "dsm.core.inbox"
INBOX_USERS = ("agent/messaging", "sim/nodes")
#: the node core's handler table, which only the inbox builds
CORE_HANDLERS = "dsm.core.inputs.core_handlers"
#: what the protocol, the one definition of every message, must not depend on
SERVICES = ("dsm.directory", "dsm.agent", "dsm.node", "dsm.core", "dsm.sim")


def state_machine_files() -> list[Path]:
    files = [PACKAGE / f"{m}.py" for m in STATE_MACHINE_MODULES]
    for package in STATE_MACHINE_PACKAGES:
        files += sorted((PACKAGE / package).glob("*.py"))
    return files


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


def imported_names(path: Path) -> set[str]:
    """Every module ``path`` imports, at its top or inside a function, with the names imported
    from a package (``from dsm import libc`` names ``dsm.libc``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def forbidden(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def loaded_by(modules: list[str]) -> set[str]:
    """The modules a fresh interpreter has loaded after importing ``modules``."""
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules)
            + "print('\\n'.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=50, check=True, cwd=PACKAGE.parent)
    return set(out.stdout.split())


def test_every_state_machine_module_exists():
    missing = [str(f) for f in state_machine_files() if not f.exists()]
    assert not missing, f"the layering list names modules that are gone: {missing}"


@pytest.mark.parametrize("path", state_machine_files(), ids=module_name)
def test_a_state_machine_names_no_socket_nor_the_kernel_in_its_source(path: Path):
    bad = sorted(n for n in imported_names(path) if forbidden(n, FORBIDDEN_IN_SOURCE))
    assert not bad, f"{module_name(path)} imports {bad}: the processes supply I/O, not the cores"


def test_importing_the_state_machines_loads_no_socket_nor_the_kernel():
    loaded = loaded_by([module_name(f) for f in state_machine_files()])
    bad = sorted(m for m in loaded if forbidden(m, FORBIDDEN_LOADED))
    assert not bad, f"importing the state machines loads {bad}"


def test_the_protocol_depends_on_none_of_the_services():
    loaded = loaded_by(["dsm.protocol"])
    bad = sorted(m for m in loaded if forbidden(m, SERVICES))
    assert not bad, f"dsm.protocol loads {bad}: the services build on it, not it on them"


def test_the_node_inbox_is_one_of_the_state_machines():
    assert PACKAGE / "core" / "inbox.py" in state_machine_files()


def test_the_agent_and_the_simulator_deliver_to_a_node_through_the_one_inbox():
    for user in INBOX_USERS:
        assert f"{NODE_INBOX}.Inbox" in imported_names(PACKAGE / f"{user}.py"), (
            f"dsm/{user}.py does not deliver through {NODE_INBOX}")
    builders = sorted(module_name(f) for f in PACKAGE.rglob("*.py")
                      if CORE_HANDLERS in imported_names(f))
    assert builders == [NODE_INBOX], f"the core's handler table is built by {builders}"
