"""`python -m turbosparse` is the `turbosparse` command."""

from turbosparse.cli import entry

entry()
