"""``python -m nodes.gather`` from the checkout: ``python -m dsm.workloads.gather``."""

import sys

from dsm.workloads.gather import main

if __name__ == "__main__":
    sys.exit(main())
