"""`python -m turbosparse` is the `turbosparse` command."""

import sys

from .cli import main

sys.exit(main())
