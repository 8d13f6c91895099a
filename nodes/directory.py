"""The directory service of a cluster: ``python -m nodes.directory [FLAGS]`` (from the checkout) is
``dsm directory [FLAGS]`` (``--listen``, env ``DSM_LISTEN``; ``--region-size``; ``--trace``), the
one process every node of a cluster talks to. The compose file runs ``dsm directory`` itself."""

from __future__ import annotations

import sys

from dsm.cli import main as dsm_main


def main(argv: list[str] | None = None) -> int:
    return dsm_main(["directory", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
