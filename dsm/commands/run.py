"""``dsm run --directory ENDPOINT -- COMMAND...``: start this node's agent and run COMMAND
attached to it; the exit status is COMMAND's."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from dsm import local
from dsm.agent.launch import AgentStartError, start_agent
from dsm.commands.agent import add_directory_arguments, default_node_name


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help="run a command as a workload on a new node")
    add_directory_arguments(parser)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("dsm run: no command given (dsm run --directory ENDPOINT -- COMMAND...)",
              file=sys.stderr)
        return 2
    try:
        agent = start_agent(args.directory, args.node or default_node_name(),
                            trace_path=args.trace)
    except AgentStartError as exc:
        print(f"dsm run: {exc}", file=sys.stderr)
        return 2
    try:
        env = {**os.environ, local.AGENT_SOCKET_ENV: agent.socket_path}
        try:
            status = subprocess.call(command, env=env)
        except OSError as exc:
            print(f"dsm run: cannot run {command[0]!r}: {exc.strerror}", file=sys.stderr)
            status = 127
    finally:
        agent.stop()
    return status if status >= 0 else 128 - status
