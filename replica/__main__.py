"""`python -m replica ...` is `pgml-replica ...` (the tests and the demo start it this way)."""

import sys

from replica.operate.cli import main

sys.exit(main())
