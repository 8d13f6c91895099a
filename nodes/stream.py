"""``python -m nodes.stream`` from the checkout: ``python -m dsm.workloads.stream``."""

import sys

from dsm.workloads.stream import main

if __name__ == "__main__":
    sys.exit(main())
