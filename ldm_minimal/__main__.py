"""``python -m ldm_minimal <command>``: the command line lives in ``ldm_minimal.cli``."""

import sys

from ldm_minimal.cli import main

if __name__ == "__main__":
    sys.exit(main())
