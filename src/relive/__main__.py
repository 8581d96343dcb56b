"""``python -m relive``: the same as the ``relive`` command."""

from relive.cli.main import entry_point

entry_point()
