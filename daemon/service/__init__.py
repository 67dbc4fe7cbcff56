"""service: ``ferryd`` as systemd and D-Bus see it.

The daemon's entry point (``ferryd``: resume, serve, watchdog), the D-Bus object
(``dbus_object``) and its names (``dbus_api``, with the introspection XML), the blocking
``operations`` each D-Bus method runs in a worker thread, the ``status`` view shared with
the standalone CLI, ``fdsource`` (descriptors callers pass instead of paths), ``redact``
(URLs without credentials on the bus), ``sdnotify``, ``logsetup`` (the journal's
structured fields) and ``memory`` (giving freed heap back after each operation).

May use: ``backend``, ``install``, ``boot`` and the core; never ``cli``.
"""
