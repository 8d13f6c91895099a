"""``dsm run`` as a user meets it: Ctrl-C interrupts the program as it would interrupt it alone
(SIGINT, once, and time to unwind) and ``dsm run`` exits with the program's own status; a node
that cannot open a userfaultfd says so in one line before it joins; a failure is printed once."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path
from typing import Callable

import pytest

from dsm.agent.launch import AGENT_STOP_TIMEOUT_S, PACKAGE_ROOT
from dsm.commands.run import COMMAND_STOP_TIMEOUT_S, INTERRUPT_GRACE_S

pytestmark = pytest.mark.timeout(90)

#: how long a node may take to start and its program to say it is up
UP_TIMEOUT_S = 30.0
#: how long `dsm run` may take to exit once its program has
EXIT_TIMEOUT_S = AGENT_STOP_TIMEOUT_S + 5

#: unwinds on KeyboardInterrupt, taking a while about it: a second SIGINT meanwhile (one passed
#: on by `dsm run` after the terminal's own) would interrupt the unwinding, and no "unwound"
UNWINDS = """
import time
import dsm

node = dsm.attach()
try:
    print("up", flush=True)
    time.sleep(120)
except KeyboardInterrupt:
    time.sleep(0.5)
    print("unwound", flush=True)
    raise SystemExit(3)
"""

#: handles nothing: SIGINT kills it
DIES = """
import time
import dsm

node = dsm.attach()
print("up", flush=True)
time.sleep(120)
"""

#: ignores SIGINT: it gets SIGTERM once the grace is over
IGNORES_SIGINT = """
import signal
import time
import dsm

signal.signal(signal.SIGINT, signal.SIG_IGN)
node = dsm.attach()
print("up", flush=True)
time.sleep(120)
"""


def _dsm_run(directory, node: str, program: str, tmp_path: Path) -> list[str]:
    path = tmp_path / f"{node}.py"
    path.write_text(program)
    return [sys.executable, "-m", "dsm", "run", "--directory", directory.endpoint, "--node", node,
            "--", sys.executable, str(path)]


def _run_until_up_then(directory, node: str, program: str, tmp_path: Path,
                       act: Callable[[subprocess.Popen], None], timeout_s: float
                       ) -> tuple[int, str, str, float]:
    """`dsm run` of ``program``; once it printed "up", ``act(proc)``: the status (within
    ``timeout_s``), the output, stderr, and the seconds from ``act`` to the exit."""
    log_path = tmp_path / f"{node}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(_dsm_run(directory, node, program, tmp_path),
                                stdout=subprocess.PIPE, stderr=log, start_new_session=True)
    try:
        _read_until(proc.stdout.fileno(), "up", UP_TIMEOUT_S)
        t0 = time.monotonic()
        act(proc)
        status = proc.wait(timeout_s)
        took = time.monotonic() - t0
    finally:
        _stop(proc)
    return status, proc.stdout.read().decode(), log_path.read_text(), took


def _read_until(fd: int, text: str, timeout_s: float) -> str:
    """What ``fd`` gives until ``text`` is in it."""
    deadline = time.monotonic() + timeout_s
    got = ""
    while text not in got:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"no {text!r} within {timeout_s} s (got {got!r})")
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # a pty whose other side closed: EIO
            chunk = b""
        if not chunk:
            raise AssertionError(f"the end before {text!r} (got {got!r})")
        got += chunk.decode(errors="replace")
    return got


def _read_rest(fd: int) -> str:
    got = b""
    while select.select([fd], [], [], 0)[0]:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        got += chunk
    return got.decode(errors="replace")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# --- Ctrl-C ---------------------------------------------------------------------------------------
def _sigint(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)


def test_sigint_from_a_process_reaches_the_program_once_and_it_unwinds(directory, tmp_path):
    """``kill -INT`` of `dsm run` alone (what `dsm launch` does to each rank): passed on."""
    status, out, err, _ = _run_until_up_then(directory, "unwinds", UNWINDS, tmp_path, _sigint,
                                             INTERRUPT_GRACE_S + EXIT_TIMEOUT_S)
    assert status == 3, err
    assert "unwound" in out
    assert "left the cluster on SIGINT: every page handed back" in err, err
    assert "SIGTERM" not in err, err


def test_ctrl_c_at_a_terminal_reaches_the_program_once_and_it_unwinds(directory, tmp_path):
    """A real terminal: `dsm run` in a session whose controlling terminal is a pty, and ^C
    typed on it. The tty driver signals the whole foreground process group, the program
    included: `dsm run` must not pass on a second SIGINT."""
    master, slave = pty.openpty()
    log_path = tmp_path / "terminal.log"

    def controlling_terminal() -> None:  # in the child, after setsid: stdin is the pty
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    try:
        with open(log_path, "w") as log:
            proc = subprocess.Popen(_dsm_run(directory, "terminal", UNWINDS, tmp_path),
                                    stdin=slave, stdout=slave, stderr=log,
                                    start_new_session=True, preexec_fn=controlling_terminal)
        os.close(slave)
        slave = -1
        try:
            _read_until(master, "up", UP_TIMEOUT_S)
            os.write(master, termios.tcgetattr(master)[6][termios.VINTR])  # ^C
            status = proc.wait(INTERRUPT_GRACE_S + EXIT_TIMEOUT_S)
            out = _read_rest(master)
        finally:
            _stop(proc)
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    err = log_path.read_text()
    assert status == 3, (out, err)
    assert "unwound" in out, (out, err)
    assert "left the cluster on SIGINT: every page handed back" in err, err


def test_a_program_that_handles_nothing_dies_of_sigint_and_dsm_run_exits_130(directory,
                                                                             tmp_path):
    status, _, err, _ = _run_until_up_then(directory, "dies", DIES, tmp_path, _sigint,
                                           INTERRUPT_GRACE_S + EXIT_TIMEOUT_S)
    assert status == 128 + signal.SIGINT, err
    assert "KeyboardInterrupt" in err, err  # Python's own traceback: nothing else in between
    assert "left the cluster on SIGINT: every page handed back" in err, err


def test_a_program_that_ignores_sigint_gets_sigterm_after_the_grace(directory, tmp_path):
    status, _, err, took = _run_until_up_then(
        directory, "ignores", IGNORES_SIGINT, tmp_path, _sigint,
        INTERRUPT_GRACE_S + COMMAND_STOP_TIMEOUT_S + EXIT_TIMEOUT_S)
    assert status == 128 + signal.SIGTERM, err
    assert INTERRUPT_GRACE_S <= took < INTERRUPT_GRACE_S + EXIT_TIMEOUT_S, took
    assert f"still runs {INTERRUPT_GRACE_S:g} s after SIGINT: sending SIGTERM" in err, err
    assert "left the cluster on SIGINT: every page handed back" in err, err


def test_sigterm_still_leaves_with_status_0(directory, tmp_path):
    """SIGTERM (docker stop) is the leave it was: the program gets SIGTERM, at once, and the
    status is 0 once the pages are handed back."""
    status, out, err, _ = _run_until_up_then(directory, "terminated", UNWINDS, tmp_path,
                                             lambda proc: proc.send_signal(signal.SIGTERM),
                                             EXIT_TIMEOUT_S)
    assert status == 0, err
    assert "unwound" not in out
    assert "left the cluster on SIGTERM" in err


# --- a node that cannot open a userfaultfd --------------------------------------------------------
NOBODY = 65534


def _as_nobody(argv: list[str], root: Path) -> list[str]:
    """``argv`` run as nobody, in a mount namespace of its own in which this interpreter and
    this package are reachable to nobody: each directory above them that nobody may not enter
    (``/root``, mode 0700, holding pyenv) is covered with an empty tmpfs into which what is
    needed below it is bound back, outermost first. Only this namespace sees that; the real
    directories are left as they are. ``root``: a directory for the mount points."""
    needed = {Path(os.path.realpath(p)) for p in (sys.executable, sys.prefix, sys.base_prefix,
                                                  PACKAGE_ROOT)}
    closed: dict[Path, set[str]] = {}  # a directory nobody may enter -> what to bind back
    for path in needed:
        for up in [*reversed(path.parents), path][1:-1]:  # "/" is enterable; path itself is
            if not os.stat(up).st_mode & 0o001:  # no search permission for others
                closed.setdefault(up, set()).add(path.relative_to(up).parts[0])
    script = ["set -e"]
    for n, (cover, inside) in enumerate(sorted(closed.items(), key=lambda c: len(c[0].parts))):
        binds = []
        for m, name in enumerate(sorted(inside)):
            hold = root / f"hold{n}-{m}"
            kept = cover / name
            if kept.is_dir():
                hold.mkdir(exist_ok=True)
                make = f"mkdir '{kept}'"
            else:
                hold.touch()
                make = f"touch '{kept}'"
            script.append(f"mount --bind '{kept}' '{hold}'")
            binds += [make, f"mount --bind '{hold}' '{kept}'"]
        script += [f"mount -t tmpfs -o mode=755 tmpfs '{cover}'", *binds]
    script.append('exec "$@"')
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(script),
            "sh", "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
            "env", "HOME=/", "PYTHONDONTWRITEBYTECODE=1", *argv]


#: opens a uffd as a workload does: exit 0 if it could
OPENS_UFFD = ("from dsm.needs import WORKLOAD_FEATURES as F\n"
              "from dsm.uffd import Uffd\n"
              "Uffd.open(features=F).close()\n")


def test_a_node_that_cannot_open_a_userfaultfd_says_so_in_one_line_before_joining(directory):
    if os.geteuid() != 0:
        pytest.skip("needs root, to run `dsm run` as nobody")
    missing = [tool for tool in ("unshare", "setpriv") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"needs {' and '.join(missing)} (util-linux)")
    # pytest's tmp_path is private to root: the namespace's mount points go where nobody can
    # pass them, in a directory of their own
    root = Path(tempfile.mkdtemp(prefix="dsm-nobody-"))
    try:
        probe = subprocess.run(_as_nobody([sys.executable, "-c", OPENS_UFFD], root),
                               capture_output=True, text=True, timeout=30, cwd="/")
        if probe.returncode == 0:
            with open("/proc/sys/vm/unprivileged_userfaultfd") as f:
                sysctl = f.read().strip()
            pytest.skip(f"nobody can open a userfaultfd here (vm.unprivileged_userfaultfd = "
                        f"{sysctl}; /dev/userfaultfd mode "
                        f"{os.stat('/dev/userfaultfd').st_mode & 0o777:o}): nothing to refuse")
        assert "cannot open a userfaultfd" in probe.stderr, probe.stderr  # not another failure
        done = subprocess.run(
            _as_nobody([sys.executable, "-m", "dsm", "run", "--directory", directory.endpoint,
                        "--", "true"], root),
            capture_output=True, text=True, timeout=60, cwd="/")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("dsm run: ") and "cannot open a userfaultfd" in lines[0], lines
    assert lines[0].endswith("run `dsm doctor`"), lines
    assert "joined" not in directory.log_path.read_text()


# --- a failure is printed once --------------------------------------------------------------------
IN_USE = "is in use by a live node"


def test_a_node_the_directory_refuses_is_one_line(directory, make_node, tmp_path):
    make_node("taken")
    done = subprocess.run([sys.executable, "-m", "dsm", "run", "--directory", directory.endpoint,
                           "--node", "taken", "--", "true"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    # once: not the agent's log line, nor `dsm agent: ...`, then `dsm run: ...` again
    assert done.stderr.count(IN_USE) == 1, done.stderr
    (line,) = [line for line in done.stderr.splitlines() if IN_USE in line]
    assert line.startswith("dsm run: "), done.stderr
    # `dsm agent` by hand: its own line, on stderr
    done = subprocess.run([sys.executable, "-m", "dsm", "agent", "--directory",
                           directory.endpoint, "--node", "taken", "--socket",
                           str(tmp_path / "agent.sock")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count(IN_USE) == 1 and done.stdout == "", (done.stdout, done.stderr)
    (line,) = [line for line in done.stderr.splitlines() if IN_USE in line]
    assert line.startswith("dsm agent: "), done.stderr


#: what the agent says when the directory falls silent
CUT_OFF = "this node is cut off from the cluster"


def test_a_node_cut_off_says_why_once(directory, tmp_path):
    """The directory falls silent: the agent says so, kills the program (SIGBUS), and `dsm run`
    names how the program ended, without a line of its own about the agent's exit, nor the
    agent one about a leave the cut-off made impossible, nor the program's watchdog one about
    an agent that died (the agent waits for the program to die before it goes)."""
    stopped = []

    def silence(proc: subprocess.Popen) -> None:
        directory.proc.send_signal(signal.SIGSTOP)
        stopped.append(True)

    try:
        status, _, err, _ = _run_until_up_then(directory, "cut", DIES, tmp_path, silence,
                                               EXIT_TIMEOUT_S + 10)
    finally:
        if stopped:
            directory.proc.send_signal(signal.SIGCONT)
    assert status == 128 + signal.SIGBUS, err
    assert err.count(CUT_OFF) == 1, err
    assert "did not acknowledge" not in err and "node agent exited" not in err, err
    assert "dsm watchdog" not in err, err  # it saw its process die before the agent went
    assert len(re.findall(r"^dsm run: \S+ was killed by SIGBUS \(status 135\)$", err,
                          re.MULTILINE)) == 1, err


@pytest.mark.parametrize("command", ["run", "launch"])
def test_a_node_s_first_process_does_not_load_the_agent(command):
    # dsm run (and dsm launch, which starts dsm run) only starts processes: loading what the
    # agent runs (numpy, the protocol, the node core) cost each node 0.2-0.3 s at start, before
    # its agent, which loads them all again, could start
    heavy = ("numpy", "dsm.protocol", "dsm.agent.service", "dsm.core.node")
    code = ("import sys\nfrom dsm.cli import build_parser\n"
            f"build_parser([{command!r}, '--help'])\n"
            f"print([m for m in {heavy!r} if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=PACKAGE_ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"dsm {command} loads {done.stdout.strip()}"


def test_the_parser_of_one_subcommand_still_says_what_there_is():
    # dsm COMMAND builds only COMMAND's parser: the global option before it still counts, and
    # a command that does not exist is answered with the whole list
    from dsm.cli import SUBCOMMAND_MODULES, build_parser

    args = build_parser(["--log-level=INFO", "run", "--directory", "tcp://h:1", "--", "true"]
                        ).parse_args(["--log-level=INFO", "run", "--directory", "tcp://h:1",
                                      "--", "true"])
    assert args.func.__module__ == "dsm.commands.run" and args.log_level == "INFO"
    assert build_parser(["--log-level", "DEBUG", "agent"]).parse_args(
        ["--log-level", "DEBUG", "agent", "--directory", "tcp://h:1", "--socket", "s"]
    ).func.__module__ == "dsm.commands.agent"
    done = subprocess.run([sys.executable, "-m", "dsm", "nosuch"], capture_output=True,
                          text=True, timeout=60, cwd=PACKAGE_ROOT)
    assert done.returncode == 2
    assert all(f"'{name}'" in done.stderr for name in SUBCOMMAND_MODULES), done.stderr
