"""`python -m replica ...` is `pgml-replica ...` (the tests and the demo start it this way)."""

import sys

from replica.cli import main

sys.exit(main())
