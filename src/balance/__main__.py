"""`python -m balance ...` is `balance-service ...`."""

import sys

from balance.cli import main

sys.exit(main())
