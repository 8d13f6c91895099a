"""The ``dsm`` command: one subcommand per module, each registering its own parser."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import select
import signal
import sys

from dsm import bugs

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


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser; given the command line ``argv``, only its subcommand's (each one's
    module imports what it runs: all of them cost a node's processes 0.1 s each at start)."""
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
    named = _subcommand_of(argv) if argv is not None else None
    for name, module_name in SUBCOMMAND_MODULES.items():
        if named is None or name == named:
            importlib.import_module(module_name).register(subparsers)
    return parser


def _subcommand_of(argv: list[str]) -> str | None:
    """The subcommand ``argv`` names, if it names one before anything else (``--log-level L``
    may come first); None otherwise (no command, ``--help``, a mistyped one: the whole parser
    says what there is)."""
    rest = iter(argv)
    for arg in rest:
        if arg == "--log-level":
            next(rest, None)
        elif not arg.startswith("--log-level="):
            return arg if arg in SUBCOMMAND_MODULES else None
    return None


#: the status of a command whose output went to a closed pipe: as a shell reports a process
#: killed by SIGPIPE (128 + 13), what ``yes | head -1`` leaves in ``PIPESTATUS``
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    bugs.announce(f"dsm process {os.getpid()}")  # started with the bug switch on
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # here, not at exit, where a closed pipe is an unraisable error
    except BrokenPipeError:
        # whoever read the output (`dsm trace FILE | head`) has had enough: stop quietly, every
        # `finally` of the command having run on the way here. Python's recipe
        # (docs.python.org/3/library/signal.html#note-on-sigpipe): point the stream at
        # /dev/null, so that the interpreter's last flush does not fail again
        closed = [stream for stream in (sys.stdout, sys.stderr) if _reader_gone(stream)]
        if not closed:
            raise  # another pipe of the command's own (a child's stdin): a bug to see
        devnull = os.open(os.devnull, os.O_WRONLY)
        for stream in closed:
            os.dup2(devnull, stream.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    return status


def _reader_gone(stream) -> bool:
    """Whether ``stream`` is a pipe (or socket) whose reading end was closed: polling its
    write end reports an error."""
    try:
        fd = stream.fileno()
    except (AttributeError, ValueError, OSError):  # replaced, or closed
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


if __name__ == "__main__":
    sys.exit(main())
