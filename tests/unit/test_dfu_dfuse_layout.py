"""DfuSe memory-map strings: parsed by the host, rendered independently by the simulator."""

from __future__ import annotations

import pytest

from ferry.proxy.dfu.dfuse import ERASABLE, READABLE, WRITEABLE, MemoryLayout
from ferry.proxy.dfu.errors import DfuError, ImageTooLarge
from ferry.sim.dfu.device import dfuse_alts


def test_stm32f4_layout_from_the_reference():
    layout = MemoryLayout.parse("@Internal Flash  /0x08000000/04*016Kg,01*064Kg,07*128Kg")
    assert layout.name == "Internal Flash"
    assert [(s.start, s.count, s.page_size) for s in layout.segments] == [
        (0x08000000, 4, 16384), (0x08010000, 1, 65536), (0x08020000, 7, 131072)]
    assert layout.segments[0].rights == READABLE | ERASABLE | WRITEABLE
    assert layout.page(0x08005000) == (0x08004000, 16384, 7)
    assert layout.page(0x08100000) is None
    assert layout.pages(0x08003000, 0x2000, WRITEABLE) == [0x08000000, 0x08004000]


def test_several_regions_and_byte_pages():
    layout = MemoryLayout.parse("@Option Bytes  /0x1FFFC000/01*016 e/0x1FFEC000/01*016 e")
    assert [s.start for s in layout.segments] == [0x1FFFC000, 0x1FFEC000]
    assert layout.segments[0].page_size == 16


def test_simulator_layout_strings_parse():
    for region in dfuse_alts():
        layout = MemoryLayout.parse(region.layout_string())
        assert layout.start == region.start
        assert sum(s.count * s.page_size for s in layout.segments) == region.size


def test_image_past_the_end_is_too_large():
    layout = MemoryLayout.parse("@Flash/0x08000000/02*001Kg")
    with pytest.raises(ImageTooLarge, match="does not fit"):
        layout.pages(0x08000000, 2049, WRITEABLE)


def test_read_only_memory_is_not_writeable():
    layout = MemoryLayout.parse("@OTP/0x1FFF7800/01*512 a")
    with pytest.raises(DfuError, match="not writeable"):
        layout.pages(0x1FFF7800, 16, WRITEABLE)


@pytest.mark.parametrize("text", ["Flash/0x0/1*1Kg", "@Flash/zz/1*1Kg", "@Flash/0x0/1x1Kg"])
def test_malformed_maps_are_refused(text):
    with pytest.raises(DfuError):
        MemoryLayout.parse(text)
