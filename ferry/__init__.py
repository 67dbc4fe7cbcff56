"""ferry: update daemon for Linux IoT gateways.

The subpackages live in the project's top-level folders (``packaging/``, ``daemon/``,
``proxy/``, ``sim/``) and are reached through symlinks here, so each is only ever
importable as ``ferry.<name>``: those folders carry no ``__init__.py`` of their own and
cannot shadow PyPA's ``packaging`` or python-daemon's ``daemon`` when the project root
is on ``sys.path``.
"""

__version__ = "0.1.0"
