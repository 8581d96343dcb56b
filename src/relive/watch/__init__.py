"""The edit loop behind ``relive watch`` and ``relive run``.

* ``sources``: which translation units and files a watch covers (DWARF or PATHs);
* ``deps``: which units include which headers;
* ``notify``: inotify bursts of saves, each ended when its files are complete;
* ``changes``: file-system events reduced to saves, unchanged content skipped;
* ``loop``: the :class:`Watcher` that reloads on save (or on a signal);
* ``child``: starting the program for ``relive run`` and its signal policy;
* ``signals``: signal-handler-safe wake-ups.

Nothing here prints: everything is reported as ``relive.events`` objects.
"""

from relive.watch.loop import Watcher, WatchOptions

__all__ = ["WatchOptions", "Watcher"]
