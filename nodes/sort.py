"""``python -m nodes.sort`` from the checkout: ``python -m dsm.workloads.sort``."""

import sys

from dsm.workloads.sort import main

if __name__ == "__main__":
    sys.exit(main())
