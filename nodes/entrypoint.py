"""``python -m nodes.entrypoint`` from the checkout: the installed ``dsm-entrypoint``
(dsm/programs/entrypoint.py)."""

import sys

from dsm.programs.entrypoint import main

if __name__ == "__main__":
    sys.exit(main())
