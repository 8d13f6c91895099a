"""``python -m nodes.demo_workload`` from the checkout: ``python -m dsm.workloads.rows``."""

import sys

from dsm.workloads.rows import main

if __name__ == "__main__":
    sys.exit(main())
