"""``python -m nodes.counter`` from the checkout: ``python -m dsm.workloads.counter``."""

import sys

from dsm.workloads.counter import main

if __name__ == "__main__":
    sys.exit(main())
