"""``python -m nodes.matmul`` from the checkout: ``python -m dsm.workloads.matmul``."""

import sys

from dsm.workloads.matmul import main

if __name__ == "__main__":
    sys.exit(main())
