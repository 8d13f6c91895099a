"""Where a benchmark's processes spend their time while it is timed (``dsm bench fault
--profile DIR``, ``dsm bench sharing --profile DIR``): py-spy samples each named process (the
agents, the directory) during the timed rounds only, and writes what it saw beside the JSON.

For each process, ``DIR/NAME.speedscope.json`` is its flame graph (open it in speedscope, or
https://www.speedscope.app/: every stack sampled, with its weight), and the result's
``"profile"`` holds, per process, the functions with the most samples of their own (where the
time goes, not who called it) and their share of the process's samples. py-spy runs with
``--nonblocking``: it reads the processes' stacks without stopping them, so that the timings it
watches are the ones it does not disturb (much: it costs a core's share while it samples).

py-spy is a tool of its own (``pip install py-spy``; the test extra has it); it reads other
processes' memory, so it needs root or ``CAP_SYS_PTRACE``.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from dsm.bench.common import BenchError

#: samples a second per process: enough for a few seconds of timed rounds, cheap to take
SAMPLE_RATE_HZ = 250
#: how long py-spy may take to write its file once stopped
STOP_TIMEOUT_S = 30.0
#: functions listed per process in the result
TOP_FUNCTIONS = 12


def add_argument(parser) -> None:
    parser.add_argument("--profile", metavar="DIR",
                        help="sample the agents and the directory with py-spy during the timed "
                             "rounds: flame graphs (speedscope JSON) in DIR, the busiest "
                             "functions in the result (needs py-spy, and root)")


def check(directory: str | None) -> str | None:
    """What stops ``--profile`` here, or None."""
    if directory is not None and shutil.which("py-spy") is None:
        return "--profile needs py-spy: pip install py-spy"
    return None


@contextmanager
def profiled(directory: str | None, pids: dict[str, int | None],
             result: dict) -> Iterator[None]:
    """While inside, py-spy samples every process of ``pids`` (name -> pid) into ``directory``;
    afterwards ``result["profile"]`` holds each one's busiest functions. No directory: nothing."""
    if directory is None:
        yield
        return
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    spies = {}
    for name, pid in pids.items():
        if pid is None:
            continue
        path = out / f"{name.replace(' ', '-')}.speedscope.json"
        spies[name] = (path, subprocess.Popen(
            ["py-spy", "record", "--pid", str(pid), "--rate", str(SAMPLE_RATE_HZ),
             "--nonblocking", "--format", "speedscope", "--output", str(path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    try:
        yield
    finally:
        for _, spy in spies.values():
            spy.send_signal(signal.SIGINT)  # py-spy writes its file and exits
        problems = []
        for name, (path, spy) in spies.items():
            try:
                _, err = spy.communicate(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                spy.kill()
                _, err = spy.communicate()
            if not path.exists():
                problems.append(f"{name}: {err.decode(errors='replace').strip()[-300:]}")
        result["profile"] = {name: busiest(path) for name, (path, _) in spies.items()
                             if path.exists()}
        if problems and not result["profile"]:
            raise BenchError("py-spy recorded nothing: " + "; ".join(problems))


def busiest(path: Path, top: int = TOP_FUNCTIONS) -> list[dict]:
    """The functions with the most samples of their own in a speedscope profile, with their
    share of its samples."""
    doc = json.loads(path.read_text())
    frames = doc["shared"]["frames"]
    own: Counter = Counter()
    total = 0.0
    for profile in doc["profiles"]:
        for stack, weight in zip(profile.get("samples", []), profile.get("weights", [])):
            total += weight
            if stack:
                own[stack[-1]] += weight
    out = []
    for index, weight in own.most_common(top):
        frame = frames[index]
        where = f"{Path(frame.get('file', '?')).name}:{frame.get('line', '?')}"
        out.append({"function": frame.get("name", "?"), "where": where,
                    "share": weight / total if total else 0.0})
    return out


def format_profile(profile: dict) -> str:
    """The result's profile as text: per process, its busiest functions."""
    lines = []
    for name, functions in profile.items():
        lines.append(f"{name}: busiest functions (own samples)")
        lines += [f"  {f['share']:6.1%}  {f['function']}  ({f['where']})" for f in functions]
    return "\n".join(lines)


def with_profile(format_table):
    """``format_table``, followed by the result's profile when it has one."""
    def formatted(result: dict) -> str:
        text = format_table(result)
        return text + ("\n" + format_profile(result["profile"]) if result.get("profile") else "")
    return formatted
