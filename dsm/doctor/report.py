"""Printing the doctor's rows (a table or JSON), the verdict line, and the command."""

from __future__ import annotations

import argparse
import json
import shutil
import textwrap
from dataclasses import asdict

from dsm.doctor.checks import CheckResult, run_checks
from dsm.keys import add_keys_argument

def verdict(results: list[CheckResult]) -> str:
    """The one verdict line: ``verdict: OK ...`` or ``verdict: FAIL ...``."""
    failed = [r.name for r in results if not r.ok]
    if not failed:
        return f"verdict: OK - this host can run a dsm node (all {len(results)} checks passed)"
    return (
        f"verdict: FAIL - this host cannot run a dsm node: {len(failed)} of {len(results)} checks "
        f"failed ({', '.join(failed)}); apply the fixes listed"
    )


def render_text(results: list[CheckResult], width: int | None = None) -> str:
    width = width or max(80, shutil.get_terminal_size((120, 24)).columns)
    name_w = max(len("check"), *(len(r.name) for r in results))
    result_w = len("result")
    indent = name_w + result_w + 4
    detail_w = max(30, width - indent)
    lines = [f"{'check':<{name_w}}  {'result':<{result_w}}  detail", "-" * min(width, 100)]
    for r in results:
        wrapped = textwrap.wrap(r.detail, detail_w) or [""]
        lines.append(f"{r.name:<{name_w}}  {'ok' if r.ok else 'FAIL':<{result_w}}  {wrapped[0]}")
        lines += [" " * indent + more for more in wrapped[1:]]
    fixes: dict[str, list[str]] = {}
    for r in results:
        if not r.ok and r.fix:
            fixes.setdefault(r.fix, []).append(r.name)
    if fixes:
        lines.append("")
        lines.append("to fix:")
        for fix, names in fixes.items():
            lines += textwrap.wrap(
                f"[{', '.join(names)}] {fix}", width - 2, initial_indent="- ",
                subsequent_indent="    ",
            )
    lines.append("")
    lines.append(verdict(results))
    return "\n".join(lines)


def render_json(results: list[CheckResult]) -> str:
    return json.dumps(
        {
            "ok": all(r.ok for r in results),
            "verdict": verdict(results),
            "checks": [asdict(r) for r in results],
        },
        indent=2,
    )


def main(args: argparse.Namespace) -> int:
    results = run_checks(args.keys)
    print(render_json(results) if args.json else render_text(results), flush=True)
    return 0 if all(r.ok for r in results) else 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check that this host (or container) can run a dsm node",
        description=(
            "Probe this host: kernel, how a userfaultfd can be opened, the features and ioctls "
            "the kernel reports, EVENT_FORK (CAP_SYS_PTRACE), vm.unprivileged_userfaultfd, and "
            "a memfd region registered MISSING|WP, and whether the cluster's CurveZMQ keys "
            "(--keys / DSM_KEYS) load or the cluster runs open. Exit status 0 when a node can "
            "run here; "
            "otherwise 1, with the fix for each failed check."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    add_keys_argument(parser, "check that they load (the directory's and this node's)")
    parser.set_defaults(func=main)

