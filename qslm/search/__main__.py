"""`python -m qslm.search`: find a mixed-precision quantization plan for a device (see cli.py)."""

import sys

from qslm.search.cli import main

if __name__ == "__main__":
    sys.exit(main())
