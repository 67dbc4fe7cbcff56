"""install: one bundle from a path or URL to a committed gateway and flashed targets.

Where a bundle comes from (``bundlesource``, ``download`` with Range resume, the
``bufqueue`` that hands buffers between threads), the install ``pipeline`` itself
(journal first, verify, write, stage, activate, reboot), the ``slotwriter`` that streams an
image into the inactive slot, ``staging`` of target firmware on the data partition,
``bootcheck`` after the reboot (health, commit or roll back), the ``proxyphase`` that
carries staged firmware to the targets, and ``reboot``. ``context`` holds the one object
every step is handed, so steps import it rather than each other.

May use: ``boot``, the core (config, journal, versions, testhooks), ``ferry.packaging``
and ``ferry.proxy``; never ``backend``, ``service`` or ``cli``: the pipeline does not know
who asked for an install.
"""
