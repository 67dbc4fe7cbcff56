"""The simulated device as a pyusb backend, so host code runs unchanged with no kernel.

``usb.core.find(backend=SimBackend(bus))`` sees every plugged device; errors come back
as pyusb's own ``USBError`` with the errno libusb would give (EPIPE for a stall, ENODEV
for a vanished device, ENOENT from a reset that re-enumerated), so the host's error
handling is the one that runs against real hardware.
"""

from __future__ import annotations

import array
import errno
import struct
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import usb.backend
import usb.core

from ferry.sim.dfu.device import Gone, SimDfuDevice, Stall

SPEED_FULL = 2  # libusb's LIBUSB_SPEED_FULL


def _error(text: str, code: int, err: int) -> usb.core.USBError:
    return usb.core.USBError(text, code, err)


def _gone() -> usb.core.USBError:
    return _error("No such device (it may have been disconnected)", -4, errno.ENODEV)


@dataclass(frozen=True)
class _Ref:
    device: SimDfuDevice
    generation: int
    port: tuple[int, ...]


@dataclass
class _Handle:
    ref: _Ref
    claimed: set[int] = field(default_factory=set)


@dataclass
class SimBus:
    """Devices on one simulated root hub, each on its own port."""

    number: int = 1
    devices: list[tuple[SimDfuDevice, tuple[int, ...]]] = field(default_factory=list)
    _addresses: dict[tuple[int, int], int] = field(default_factory=dict)

    def plug(self, device: SimDfuDevice, port: tuple[int, ...] | None = None) -> SimDfuDevice:
        self.devices.append((device, port or (len(self.devices) + 1,)))
        return device

    def address(self, ref: _Ref) -> int:
        key = (id(ref.device), ref.generation)
        if key not in self._addresses:
            self._addresses[key] = len(self._addresses) + 2
        return self._addresses[key]


def _parse_config(raw: bytes) -> tuple[SimpleNamespace, list[list[SimpleNamespace]]]:
    """Split a configuration descriptor into its header and interface alt settings."""
    (blen, dtype, total, nintf, value, iconf, attrs, power) = struct.unpack_from("<BBHBBBBB", raw)
    config = SimpleNamespace(bLength=blen, bDescriptorType=dtype, wTotalLength=total,
                             bNumInterfaces=nintf, bConfigurationValue=value,
                             iConfiguration=iconf, bmAttributes=attrs, bMaxPower=power,
                             extra_descriptors=[])
    interfaces: list[list[SimpleNamespace]] = []
    numbers: list[int] = []
    current: SimpleNamespace | None = None
    pos = blen
    while pos + 2 <= len(raw):
        dlen, dkind = raw[pos], raw[pos + 1]
        if dlen < 2:
            break
        chunk = raw[pos:pos + dlen]
        if dkind == 4:
            (_l, _t, number, alt, neps, cls, sub, proto, iname) = struct.unpack_from(
                "<BBBBBBBBB", chunk)
            current = SimpleNamespace(bLength=dlen, bDescriptorType=dkind,
                                      bInterfaceNumber=number, bAlternateSetting=alt,
                                      bNumEndpoints=neps, bInterfaceClass=cls,
                                      bInterfaceSubClass=sub, bInterfaceProtocol=proto,
                                      iInterface=iname, extra_descriptors=[])
            if number not in numbers:
                numbers.append(number)
                interfaces.append([])
            interfaces[numbers.index(number)].append(current)
        elif current is not None:
            current.extra_descriptors.extend(chunk)
        else:
            config.extra_descriptors.extend(chunk)
        pos += dlen
    return config, interfaces


class SimBackend(usb.backend.IBackend):
    """A pyusb backend whose only devices are simulated ones on ``bus``."""

    def __init__(self, bus: SimBus) -> None:
        super().__init__()
        self.bus = bus

    # enumeration -----------------------------------------------------------------------
    def enumerate_devices(self) -> Any:
        for device, port in list(self.bus.devices):
            with device.lock:
                if device.present:
                    yield _Ref(device, device.generation, port)

    def _live(self, ref: _Ref) -> SimDfuDevice:
        device = ref.device
        if not device.present or device.generation != ref.generation:
            raise _gone()
        return device

    def get_device_descriptor(self, dev: _Ref) -> Any:
        device = self._live(dev)
        fields = struct.unpack("<BBHBBBBHHHBBBB", device.device_descriptor())
        names = ("bLength", "bDescriptorType", "bcdUSB", "bDeviceClass", "bDeviceSubClass",
                 "bDeviceProtocol", "bMaxPacketSize0", "idVendor", "idProduct", "bcdDevice",
                 "iManufacturer", "iProduct", "iSerialNumber", "bNumConfigurations")
        desc = SimpleNamespace(**dict(zip(names, fields, strict=True)))
        desc.bus = self.bus.number
        desc.address = self.bus.address(dev)
        desc.port_number = dev.port[-1]
        desc.port_numbers = dev.port
        desc.speed = SPEED_FULL
        return desc

    def get_configuration_descriptor(self, dev: _Ref, config: int) -> Any:
        if config != 0:
            raise IndexError("config index out of range")
        return _parse_config(self._live(dev).config_descriptor())[0]

    def get_interface_descriptor(self, dev: _Ref, intf: int, alt: int, config: int) -> Any:
        if config != 0:
            raise IndexError("config index out of range")
        interfaces = _parse_config(self._live(dev).config_descriptor())[1]
        if not 0 <= intf < len(interfaces) or not 0 <= alt < len(interfaces[intf]):
            raise IndexError("interface or alt index out of range")
        return interfaces[intf][alt]

    def get_endpoint_descriptor(self, dev: _Ref, ep: int, intf: int, alt: int,
                                config: int) -> Any:
        raise IndexError("the simulated DFU device has no endpoints besides EP0")

    def get_parent(self, dev: _Ref) -> Any:
        return None

    # handles -----------------------------------------------------------------------------
    def open_device(self, dev: _Ref) -> _Handle:
        self._live(dev)
        return _Handle(dev)

    def close_device(self, dev_handle: _Handle) -> None:
        dev_handle.claimed.clear()

    def set_configuration(self, dev_handle: _Handle, config_value: int) -> None:
        device = self._live(dev_handle.ref)
        self._call(lambda: device.set_configuration(config_value))

    def get_configuration(self, dev_handle: _Handle) -> int:
        return self._live(dev_handle.ref).configuration

    def set_interface_altsetting(self, dev_handle: _Handle, intf: int, altsetting: int) -> None:
        device = self._live(dev_handle.ref)
        self._call(lambda: device.set_alt(intf, altsetting))

    def claim_interface(self, dev_handle: _Handle, intf: int) -> None:
        device = self._live(dev_handle.ref)
        if intf not in [i[0] for i in device.interfaces()]:
            raise _error("Entity not found", -5, errno.ENOENT)
        dev_handle.claimed.add(intf)

    def release_interface(self, dev_handle: _Handle, intf: int) -> None:
        dev_handle.claimed.discard(intf)

    def is_kernel_driver_active(self, dev_handle: _Handle, intf: int) -> bool:
        return False

    def detach_kernel_driver(self, dev_handle: _Handle, intf: int) -> None:
        return None

    def attach_kernel_driver(self, dev_handle: _Handle, intf: int) -> None:
        return None

    def clear_halt(self, dev_handle: _Handle, ep: int) -> None:
        return None

    def reset_device(self, dev_handle: _Handle) -> None:
        device = self._live(dev_handle.ref)
        changed = self._call(device.usb_reset)
        if changed:
            # libusb reports a device whose descriptors changed across the reset as gone.
            raise _error("Entity not found", -5, errno.ENOENT)

    # transfers ---------------------------------------------------------------------------
    def ctrl_transfer(self, dev_handle: _Handle, bmRequestType: int, bRequest: int,
                      wValue: int, wIndex: int, data: Any, timeout: int) -> int:
        device = self._live(dev_handle.ref)
        buf: array.array[int] = data
        if bmRequestType & 0x80:
            reply = self._call(lambda: device.control(bmRequestType, bRequest, wValue, wIndex,
                                                      b"", len(buf)))
            buf[:len(reply)] = array.array("B", reply)
            return len(reply)
        self._call(lambda: device.control(bmRequestType, bRequest, wValue, wIndex,
                                          buf.tobytes(), len(buf)))
        return len(buf)

    @staticmethod
    def _call(func: Any) -> Any:
        try:
            return func()
        except Stall:
            raise _error("Pipe error", -9, errno.EPIPE) from None
        except Gone:
            raise _gone() from None
