"""`python -m turbosparse` is the `turbosparse` command."""

import sys

from turbosparse.cli import main

sys.exit(main())
