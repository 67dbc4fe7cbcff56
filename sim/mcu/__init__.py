"""A simulated MCU on a pty: an SMP server over a throttled serial line, with an
MCUboot-like two-slot bootloader behind it.

It is the far end of ferry's ``smp-serial`` transport and deliberately shares no code
with ``ferry.proxy``: its framing, CRC, CBOR (cbor2) and image checks are written
separately so that a misunderstanding on one side cannot pass its own test.

Its SMP behaviour follows Zephyr's mcumgr sources (cited in ``device`` and ``link``):
the reset timer during which the old image still answers, USB CDC-ACM re-enumeration,
SMP v1/v2 error shapes, image-state flags and refusals, and builds without MCUmgr params.
Its bootloader follows MCUboot's sources (cited in ``device``, ``image`` and
``encrypted``): swap types, signature checks, and encrypted images decrypted at swap time.
"""

from ferry.sim.mcu.device import McuConfig, McuDevice
from ferry.sim.mcu.link import SimMcu

__all__ = ["McuConfig", "McuDevice", "SimMcu"]
