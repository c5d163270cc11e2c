"""`python -m longctx ...`: the same command line as the `longctx` script."""

import sys

from longctx.cli import main

sys.exit(main())
