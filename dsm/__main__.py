import sys

from dsm.cli import main

sys.exit(main())
