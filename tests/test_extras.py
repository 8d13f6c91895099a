"""The core install is what a node needs (pyzmq, msgpack, msgspec, numpy); matplotlib, rich,
prometheus_client and PyYAML are extras (``pip install 'dsm-uffd[plot]'``, ...).

Each check runs in a fresh interpreter whose import system refuses the optional libraries (a
finder first on ``sys.meta_path`` that says they are not installed, and records every attempt):
importing the node, agent and directory modules and every ``--help`` of the CLI asks for none of
them, and each feature that needs one answers in one line naming the extra to install.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from dsm.cli import SUBCOMMAND_MODULES
from dsm.extras import DISTRIBUTION, EXTRAS

ROOT = Path(__file__).resolve().parents[1]
#: one fresh interpreter's imports and a CLI call or two
RUN_TIMEOUT_S = 60

#: put first in the child: refuses the optional libraries as if they were not installed, and
#: writes the names asked for to stdout's last line at exit
BLOCKER = textwrap.dedent("""
    import atexit, importlib.abc, json, sys

    BLOCKED = {blocked!r}
    ASKED = []

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                ASKED.append(name)
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, Refuse())
    atexit.register(lambda: print("\\n" + json.dumps(ASKED), flush=True))
""").format(blocked=sorted(EXTRAS))

#: the node's path: what a node, its agent and the directory import
NODE_MODULES = ["dsm", "dsm.cli", "dsm.node", "dsm.local", "dsm.protocol", "dsm.agent.service",
                "dsm.agent.join", "dsm.agent.run", "dsm.agent.launch", "dsm.directory.service", "dsm.directory.run",
                "dsm.programs.node", "dsm.programs.entrypoint", "dsm.commands.run",
                "dsm.commands.launch", "dsm.commands.demo", "dsm.commands.directory",
                "dsm.commands.agent"]


def _run_blocked(code: str, cwd: Path) -> tuple[int, str, list[str]]:
    """Run ``code`` after the blocker in a fresh interpreter: (exit status, stderr, the blocked
    names it asked for)."""
    proc = subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)], cwd=cwd,
                          env=_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    *_, last = proc.stdout.rstrip("\n").rsplit("\n", 1)
    return proc.returncode, proc.stderr, json.loads(last)


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSM_")}
    # the checkout's dsm, whatever directory the child runs in
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def test_the_node_path_and_every_help_import_no_optional_library(tmp_path):
    code = f"""
    import contextlib, importlib, io
    for name in {NODE_MODULES!r}:
        importlib.import_module(name)
    from dsm.cli import main
    from dsm.programs import node

    helps = [[], *([c] for c in {sorted(SUBCOMMAND_MODULES)!r}),
             ["hosts", "up"], ["bench", "fault"], ["bench", "all"]]
    for argv in helps:
        with contextlib.redirect_stdout(io.StringIO()) as out:
            try:
                main([*argv, "--help"])
            except SystemExit as exc:
                assert exc.code == 0, (argv, exc.code)
        assert "usage:" in out.getvalue(), argv
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            node.main(["--help"])
        except SystemExit as exc:
            assert exc.code == 0, exc.code
    """
    code_, stderr, asked = _run_blocked(code, tmp_path)
    assert code_ == 0, stderr
    assert asked == [], f"the node path or a --help imported {asked}"


def _one_line(stderr: str, prefix: str, module: str) -> None:
    """``stderr`` says, on a line of its own and with no traceback, that the feature needs
    ``module`` and which extra installs it."""
    package, extra = EXTRAS[module]
    assert "Traceback" not in stderr, stderr
    wanted = re.compile(rf"{re.escape(prefix)}: .+ needs {re.escape(package)}: "
                        rf"pip install '{re.escape(DISTRIBUTION)}\[{extra}\]'")
    assert [line for line in stderr.splitlines() if wanted.fullmatch(line)], stderr


@pytest.mark.parametrize(("argv", "prefix", "module"), [
    (["trace", "missing.trace", "--png", "out.png"], "dsm trace", "matplotlib"),
    (["top", "--directory", "tcp://127.0.0.1:1"], "dsm top", "rich"),
    (["bench", "--plot", "out.png"], "dsm bench", "matplotlib"),
    (["bench", "fault", "--plot", "out.png"], "dsm bench fault", "matplotlib"),
    (["directory", "--listen", "ipc://directory.sock", "--region-size", "16MiB",
      "--metrics", "0"], "dsm directory", "prometheus_client"),
], ids=["trace-png", "top", "bench-plot", "bench-fault-plot", "directory-metrics"])
def test_a_feature_without_its_extra_says_which_extra_in_one_line(tmp_path, argv, prefix, module):
    code = f"""
    import sys
    from dsm.cli import main
    sys.exit(main({argv!r}))
    """
    status, stderr, _ = _run_blocked(code, tmp_path)
    assert status == 2, stderr
    _one_line(stderr, prefix, module)
    assert not list(tmp_path.glob("out.png"))


@pytest.mark.parametrize(("call", "module"), [
    ("from dsm.hosts.compose import load; load('docker-compose.yml', {})", "yaml"),
    ("from dsm.metrics import serve; serve(0, None)", "prometheus_client"),
], ids=["compose-file", "agent-metrics"])
def test_the_library_calls_raise_a_config_error_naming_the_extra(tmp_path, call, module):
    (tmp_path / "docker-compose.yml").write_text("services: {}\n")
    code = f"""
    from dsm.errors import ConfigError
    try:
        {call}
    except ConfigError as exc:
        print(f"dsm: {{exc}}", file=__import__("sys").stderr)
    """
    status, stderr, _ = _run_blocked(code, tmp_path)
    assert status == 0, stderr
    _one_line(stderr, "dsm", module)


def test_the_extras_in_pyproject_match_dsm_extras():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]

    def name(requirement: str) -> str:
        return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower()

    core = {name(r) for r in project["dependencies"]}
    assert core == {"pyzmq", "msgpack", "msgspec", "numpy"}
    for package, extra in EXTRAS.values():
        assert package.lower() in {name(r) for r in optional[extra]}, (extra, optional[extra])
    every = {extra for _, extra in EXTRAS.values()}
    match = re.fullmatch(rf"{re.escape(DISTRIBUTION)}\[(.+)\]", " ".join(optional["all"]))
    assert match and set(match[1].split(",")) == every, optional["all"]
    assert set(optional) == every | {"all", "test"}
    assert f"{DISTRIBUTION}[all]" in optional["test"]
