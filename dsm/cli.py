"""The ``dsm`` command: one subcommand per module, each registering its own parser."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

#: subcommand name -> module that defines ``register(subparsers)`` and sets ``func`` on its parser
SUBCOMMAND_MODULES = {
    "doctor": "dsm.doctor",
    "directory": "dsm.commands.directory",
    "agent": "dsm.commands.agent",
    "run": "dsm.commands.run",
    "launch": "dsm.commands.launch",
    "trace": "dsm.commands.trace",
    "litmus": "dsm.commands.litmus",
    "top": "dsm.commands.top",
    "bench": "dsm.commands.bench",
    "demo": "dsm.commands.demo",
    "hosts": "dsm.commands.hosts",
    "keygen": "dsm.commands.keygen",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dsm", description="A distributed shared memory for Linux on userfaultfd."
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level (default: WARNING)",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in SUBCOMMAND_MODULES.values():
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
