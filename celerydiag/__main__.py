"""`python -m celerydiag` runs the same entry point as the console script."""

import sys

from celerydiag.cli import main

sys.exit(main())
