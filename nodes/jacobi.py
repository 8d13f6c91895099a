"""``python -m nodes.jacobi`` from the checkout: ``python -m dsm.workloads.jacobi``."""

import sys

from dsm.workloads.jacobi import main

if __name__ == "__main__":
    sys.exit(main())
