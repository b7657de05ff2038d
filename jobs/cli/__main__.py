"""`python -m megascience.jobs.cli ...`: the megascience command."""

import sys

from megascience.jobs.cli.main import main

sys.exit(main())
