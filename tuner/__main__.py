"""``python -m tuner`` runs the CLI."""

import sys

from tuner.cli import main

if __name__ == "__main__":  # not when a documentation tool imports every module
    sys.exit(main())
