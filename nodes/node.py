"""``python -m nodes.node`` from the checkout: the installed ``dsm-node`` (dsm/programs/node.py)."""

import sys

from dsm.programs.node import main

if __name__ == "__main__":
    sys.exit(main())
