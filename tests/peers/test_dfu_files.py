"""DFU files against Debian's dfu-util tools: dfu-suffix and dfuse-pack.

Files the tools write are accepted by ferry (and flash into the simulated device), and
files ferry writes pass ``dfu-suffix -c`` and ``dfuse-pack -d`` (which recomputes the CRC
and dumps every element).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ferry.proxy.dfu.files import DfuseTarget, Element, add_suffix, load_image, write_dfuse
from ferry.proxy.dfu.transport import create
from ferry.proxy.transport import Target
from ferry.sim.dfu.harness import dfuse_spec, plain_spec, setup


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (Debian package dfu-util); run 'bash .ci/setup'")
    return path


def run(*argv: str, cwd: Path) -> str:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{argv[0]} failed: {proc.stdout}{proc.stderr}"
    return proc.stdout + proc.stderr


def suffix_fields(text: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, v in re.findall(r"^([A-Za-z ]+):\t+(\S+)$", text, re.M)}


def test_file_from_dfu_suffix_is_accepted_and_flashed(tmp_path):
    payload = os.urandom(5000)
    (tmp_path / "fw.dfu").write_bytes(payload)
    run(tool("dfu-suffix"), "-v", "0x1209", "-p", "0xdf11", "-d", "0x0200", "-a", "fw.dfu",
        cwd=tmp_path)
    data = (tmp_path / "fw.dfu").read_bytes()
    image = load_image(data)
    assert image.kind == "dfu" and image.payload == payload
    assert image.suffix is not None
    assert (image.suffix.id_vendor, image.suffix.id_product, image.suffix.bcd_device) == (
        0x1209, 0xDF11, 0x0200)

    sim = setup()
    dev = sim.add(plain_spec())
    result = create(sim.host_options()).flash(
        Target("mcu", "dfu", "1209:5a01"), io.BytesIO(data))
    assert result.ok, result.message
    assert dev.firmware() == payload


def test_dfu_suffix_reports_the_ids_and_crc_ferry_wrote(tmp_path):
    data = add_suffix(os.urandom(777), 0x0483, 0xDF11, bcd_device=0x2200)
    (tmp_path / "ours.dfu").write_bytes(data)
    fields = suffix_fields(run(tool("dfu-suffix"), "-c", "ours.dfu", cwd=tmp_path))
    assert fields["Vendor ID"].lower() == "0x0483"
    assert fields["Product ID"].lower() == "0xdf11"
    assert fields["BCD device"].lower() == "0x2200"
    assert fields["BCD DFU"].lower() == "0x0100"
    assert int(fields["CRC"], 16) == int.from_bytes(data[-4:], "little")


def test_dfu_suffix_rejects_a_file_ferry_did_not_suffix(tmp_path):
    (tmp_path / "raw.bin").write_bytes(b"\x00" * 64)
    proc = subprocess.run([tool("dfu-suffix"), "-c", "raw.bin"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "Invalid DFU suffix signature" in proc.stderr


def test_file_from_dfuse_pack_is_accepted_and_flashed(tmp_path):
    a, b = os.urandom(3000), os.urandom(500)
    (tmp_path / "a.bin").write_bytes(a)
    (tmp_path / "b.bin").write_bytes(b)
    run(tool("dfuse-pack"), "-b", "0x08000000:a.bin", "-b", "0x08010000@0:b.bin",
        "-D", "0x0483:0xdf11", "out.dfu", cwd=tmp_path)
    data = (tmp_path / "out.dfu").read_bytes()
    image = load_image(data)
    assert image.kind == "dfuse"
    assert [(t.alt, [(e.address, e.data) for e in t.elements]) for t in image.targets] == [
        (0, [(0x08000000, a), (0x08010000, b)])]

    sim = setup()
    dev = sim.add(dfuse_spec())
    result = create(sim.host_options()).flash(
        Target("stm32", "dfu", "0483:df11"), io.BytesIO(data))
    assert result.ok, result.message
    assert dev.regions[0].read(0x08000000, len(a)) == a
    assert dev.regions[0].read(0x08010000, len(b)) == b


def test_dfuse_file_ferry_wrote_passes_both_tools(tmp_path):
    a, b, c = os.urandom(1000), os.urandom(10), os.urandom(64)
    data = write_dfuse([DfuseTarget(0, "Internal Flash", (Element(0x08000000, a),
                                                          Element(0x08004000, b))),
                        DfuseTarget(1, "", (Element(0x1FFFC000, c),))], 0x0483, 0xDF11)
    (tmp_path / "ours.dfu").write_bytes(data)
    fields = suffix_fields(run(tool("dfu-suffix"), "-c", "ours.dfu", cwd=tmp_path))
    assert fields["BCD DFU"].lower() == "0x011a"
    out = run(tool("dfuse-pack"), "-d", "ours.dfu", cwd=tmp_path)
    assert "CRC ERROR" not in out
    assert f"image size: {len(data)}, targets: 2" in out
    assert "usb: 0483:df11" in out
    assert (tmp_path / "ours.dfu.target0.image0.bin").read_bytes() == a
    assert (tmp_path / "ours.dfu.target0.image1.bin").read_bytes() == b
    assert (tmp_path / "ours.dfu.target1.image0.bin").read_bytes() == c
