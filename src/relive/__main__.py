"""``python -m relive``: the same as the ``relive`` command."""

from relive.cli.client import entry_point

entry_point()
