"""boot: how ferry asks U-Boot which slot to run, and what each slot holds.

The U-Boot environment (``ubootenv``, read and written natively, power-safe), the seam
every other room uses (``bootloader``: the ``Bootloader`` protocol, its state types and
the factory that picks a scheme), the two schemes that write the boot choice
(``bootchooser`` as RAUC, ``bootcount`` as Mender, over the shared ``envscheme`` base),
and the slots themselves (``slots``: which one is booted, which one is free).

May use: ``ferry.daemon.config``, ``journal``, ``versions`` and ``testhooks``; nothing above
it (install, backend, service, cli), and no transport or bundle code, so a slot can never
be chosen by anything a bundle or a backend says.
"""
