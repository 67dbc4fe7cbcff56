"""A simulated USB DFU 1.1 / ST DfuSe device: the far end of ferry's ``dfu`` transport.

The model (:mod:`.device`) is reached two ways: as a pyusb backend (:mod:`.pyusb_backend`)
for fast tests with no kernel, and as a usbredir device server (:mod:`.usbredir`) that
QEMU attaches to a guest's xHCI so a real Linux USB stack enumerates it. It never
imports ``ferry.proxy``: a misunderstanding shared by both sides must not pass its tests.
"""
