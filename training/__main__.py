"""``python -m covidct.training``: see :mod:`covidct.training.cli`."""

import sys

from covidct.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
