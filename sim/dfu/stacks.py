"""Which firmware's DFU code the simulated device runs: one class per real stack.

The same DFU 1.1 requests get different answers from different device stacks, and a
host that only ever met one of them learns that stack's habits as if they were the
standard. So tests run the host against each of these (``DeviceSpec.stack``):

- ``generic``: :class:`ferry.sim.dfu.device.SimDfuDevice`, DFU 1.1 as the spec reads;
  with ``dfuse=True`` an STM32 system bootloader (AN3156, dfu-util's dfuse.c);
- ``u-boot``: :class:`ferry.sim.dfu.uboot.UbootDfuDevice`, U-Boot's
  drivers/usb/gadget/f_dfu.c, drivers/dfu/dfu.c and common/dfu.c;
- ``zephyr``: :class:`ferry.sim.dfu.zephyr.ZephyrDfuDevice`, Zephyr's
  subsys/usb/device/class/dfu/usb_dfu.c and its Kconfig.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ferry.sim.dfu.device import DeviceSpec, Faults, SimDfuDevice, Timing
from ferry.sim.dfu.uboot import UbootDfuDevice
from ferry.sim.dfu.zephyr import ZephyrDfuDevice

STACKS: dict[str, type[SimDfuDevice]] = {
    "generic": SimDfuDevice,
    "u-boot": UbootDfuDevice,
    "zephyr": ZephyrDfuDevice,
}


def build(spec: DeviceSpec, *, faults: Faults | None = None, timing: Timing | None = None,
          clock: Callable[[], float] = time.monotonic) -> SimDfuDevice:
    """The device model ``spec.stack`` names."""
    try:
        cls = STACKS[spec.stack]
    except KeyError:
        raise ValueError(f"unknown DFU stack {spec.stack!r}; use one of "
                         f"{', '.join(STACKS)}") from None
    return cls(spec, faults=faults, timing=timing, clock=clock)
