"""Ready-made simulated DFU setups for tests, benchmarks and ``ferry sim dfu``.

``FakeClock`` lets the device and the host share one virtual time: the host's sleep
advances the device's clock, so a test with realistic flash timings runs in no wall time
and can still check that the host waited exactly what the device asked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ferry.sim.dfu.device import DeviceSpec, Faults, SimDfuDevice, Timing, dfuse_alts
from ferry.sim.dfu.memory import Region, Segment
from ferry.sim.dfu.pyusb_backend import SimBackend, SimBus
from ferry.sim.dfu.stacks import build


@dataclass
class FakeClock:
    now: float = 1000.0
    slept: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += max(seconds, 0.0)


def plain_spec(**changes: object) -> DeviceSpec:
    """A run-time capable DFU 1.1 device (1209:5a01 app, 1209:df11 in DFU mode)."""
    spec = DeviceSpec()
    for key, value in changes.items():
        setattr(spec, key, value)
    return spec


def dfuse_spec(**changes: object) -> DeviceSpec:
    """An STM32-style DfuSe ROM bootloader (0483:df11, DFU mode only)."""
    spec = DeviceSpec(vid=0x0483, runtime_pid=0xDF11, dfu_pid=0xDF11, dfuse=True,
                      alts=dfuse_alts(), start_in_runtime=False, has_runtime=False,
                      transfer_size=2048, serial="DFUSE0001",
                      product="ferry simulated DfuSe bootloader")
    for key, value in changes.items():
        setattr(spec, key, value)
    return spec


def uboot_spec(**changes: object) -> DeviceSpec:
    """A board in U-Boot's ``dfu`` command (f_dfu): DFU mode only, one raw partition.

    bmAttributes 0x0F and wTransferSize 4096 as f_dfu.c declares them; the ids are a
    board's CONFIG_USB_GADGET_VENDOR_NUM/PRODUCT_NUM (here the Linux gadget ones).
    """
    spec = DeviceSpec(vid=0x0525, runtime_pid=0xA4A5, dfu_pid=0xA4A5, stack="u-boot",
                      alts=(Region("mcu", 0, (Segment(128, 4096),)),), transfer_size=4096,
                      manifestation_tolerant=True, will_detach=True, detach_timeout_ms=0,
                      start_in_runtime=False, has_runtime=False, serial="UBOOT0001",
                      manufacturer="U-Boot", product="USB download gadget")
    for key, value in changes.items():
        setattr(spec, key, value)
    return spec


def zephyr_spec(**changes: object) -> DeviceSpec:
    """A Zephyr application with the USB DFU class and MCUboot's two slots.

    Kconfig defaults: will-detach (wDetachTimeOut 100 ms), upload off, manifestation
    tolerant (no CONFIG_USB_DFU_REBOOT), bwPollTimeout 8 ms; downloads go to ``image_1``.
    """
    slot = (Segment(64, 1024),)
    spec = DeviceSpec(vid=0x2FE3, runtime_pid=0x0100, dfu_pid=0xFFFF, stack="zephyr",
                      alts=(Region("image_0", 0, slot), Region("image_1", 0, slot)),
                      transfer_size=1024, can_upload=False, manifestation_tolerant=True,
                      will_detach=True, detach_timeout_ms=100, poll_ms=8,
                      serial="ZEPHYR0001", manufacturer="ZEPHYR", product="USB-DEV")
    for key, value in changes.items():
        setattr(spec, key, value)
    return spec


@dataclass
class SimSetup:
    bus: SimBus
    backend: SimBackend
    clock: FakeClock | None

    def add(self, spec: DeviceSpec | None = None, *, faults: Faults | None = None,
            timing: Timing | None = None) -> SimDfuDevice:
        kwargs = {"clock": self.clock} if self.clock is not None else {}
        return self.bus.plug(build(spec or DeviceSpec(), faults=faults, timing=timing,
                                   **kwargs))

    def host_options(self) -> dict[str, object]:
        """Options for ``ferry.proxy.dfu.transport.create`` that reach this bus."""
        opts: dict[str, object] = {"backend": self.backend}
        if self.clock is not None:
            opts.update(sleep=self.clock.sleep, clock=self.clock)
        return opts


def setup(*, fake_time: bool = True) -> SimSetup:
    bus = SimBus()
    return SimSetup(bus, SimBackend(bus), FakeClock() if fake_time else None)
