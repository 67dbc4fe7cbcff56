"""ferry's override index and .ota files as Zigbee2MQTT's own OTA code (npm) reads them,
run in Node on the files ferry wrote: zigbee-herdsman 10.9.2 (Z2M 2.14.1: ``getOtaIndex``,
``Device.checkOta``/``findMatchingOtaImage``, ``getOtaFirmware``/``parseOtaImage``) and
zigbee-herdsman-converters 23.20.1 (Z2M 2.2.1: ``lib/ota`` ``isUpdateAvailable``). This
checks against the real code what the stand-in models: a forced entry is offered to
siblings on the same or a newer version while ferry's update runs, and to none of them
once ferry has made it ordinary; 2.14 matches the hardware range on the query's hardware
version and falls back to the override index offline; 2.2 matches on the Basic-cluster
value and fails offline with "fetch failed". Never skipped: .ci/deps/zigbee.sh installs
both packages into .cache/."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ferry.proxy.registry import get_transport
from ferry.proxy.transport import Target
from ferry.proxy.zigbee import otafile
from ferry.proxy.zigbee.overrideindex import OverrideIndex
from ferry.proxy.zigbee.z2mdata import query_hardware_version
from ferry.sim.zigbee.z2m_bridge import BridgeDevice, FakeZigbee2Mqtt

CACHE = Path(__file__).resolve().parents[2] / ".cache"
HERDSMAN = CACHE / "zigbee-herdsman-10.9.2"  # Zigbee2MQTT 2.14.1
CONVERTERS = CACHE / "zigbee-herdsman-converters-23.20.1"  # Zigbee2MQTT 2.2.1
MFR, ITYPE = 0x1234, 0x0001
A, B = "0x00124b0000cccc01", "0x00124b0000cccc02"

# Runs herdsman's code on a JSON job from argv; prints one JSON result line.
CHECK_JS = r"""
const path = require("node:path");
const job = JSON.parse(process.argv[1]);  // node -e CODE JOB
const zh = path.join(job.root, "node_modules", "zigbee-herdsman", "dist");
const logs = [];
require(path.join(zh, "utils", "logger.js")).setLogger({info() {}, warning() {}, error() {},
  debug(m) { logs.push(typeof m === "function" ? m() : m); }});
const ota = require(path.join(zh, "controller", "helpers", "ota.js"));
const {Device} = require(path.join(zh, "controller", "model", "device.js"));
ota.setOtaConfiguration(job.dataDir, job.index);
// checkOta/findMatchingOtaImage read only these fields of the device
const device = {endpoints: [{supportsOutputCluster: () => true}], modelID: "SIM-1",
  manufacturerName: "ferry-sim", ieeeAddr: "0x00124b0000cccc09", meta: {},
  findMatchingOtaImage: Device.prototype.findMatchingOtaImage};
(async () => {
  const out = {checks: [], firmware: []};
  for (const current of job.checks) {
    const r = await Device.prototype.checkOta.call(
      device, {downgrade: false, url: job.mainUrl}, current, {});
    out.checks.push({available: r.available, url: r.availableMeta ? r.availableMeta.url : null});
  }
  for (const f of job.firmware) {
    const image = ota.parseOtaImage(await ota.getOtaFirmware(f.url, f.sha512));
    const h = image.header;
    out.firmware.push({manufacturerCode: h.manufacturerCode, imageType: h.imageType,
      fileVersion: h.fileVersion, totalImageSize: h.totalImageSize,
      minimumHardwareVersion: h.minimumHardwareVersion ?? null,
      maximumHardwareVersion: h.maximumHardwareVersion ?? null, bytes: image.raw.length});
  }
  out.logs = logs;
  console.log(JSON.stringify(out));
})().catch((e) => { console.log(JSON.stringify({error: String(e && e.message)})); });
"""


# zigbee-herdsman-converters 23.20.1 src/lib/ota.ts (Z2M 2.2.1): isUpdateAvailable with the
# node's query; fetch is Node's own unless the job says offline/online, then a stand-in for
# the network: offline rejects as undici does, online serves an empty main index.
CHECK_22_JS = r"""
const path = require("node:path");
const job = JSON.parse(process.argv[1]);  // node -e CODE JOB
const zhc = path.join(job.root, "node_modules", "zigbee-herdsman-converters", "dist", "lib");
require(path.join(zhc, "logger.js")).setLogger(
  {debug() {}, info() {}, warning() {}, error() {}});
const ota = require(path.join(zhc, "ota.js"));
globalThis.fetch = async (url) => {
  if (!job.online) throw new TypeError("fetch failed");
  return {ok: true, status: 200, body: {}, json: async () => []};
};
ota.setConfiguration({dataDir: job.dataDir,
  overrideIndexLocation: path.join(job.dataDir, job.index)});
(async () => {
  const out = {checks: []};
  for (const c of job.checks) {
    const device = {ieeeAddr: "0x00124b0000cccc09", modelID: "SIM-1",
      manufacturerName: "ferry-sim", hardwareVersion: c.basic ?? undefined, meta: {},
      endpoints: [{supportsOutputCluster: () => true}]};
    try {
      const r = await ota.isUpdateAvailable(device, {}, c.query, false);
      out.checks.push({available: r.available});
    } catch (e) {
      out.checks.push({error: String(e && e.message)});
    }
  }
  console.log(JSON.stringify(out));
})();
"""


def _node(root: Path = HERDSMAN) -> str:
    node = shutil.which("node")
    if node is None or not (root / "node_modules").is_dir():
        pytest.fail(f"node or {root.name} missing; run bash .ci/setup (.ci/deps/zigbee.sh)")
    return node


def _closed_url() -> str:
    import socket

    with socket.socket() as s:  # a port nobody listens on: fetch fails at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/index.json"


def herdsman(data_dir: Path, checks: list[dict[str, Any]],
             firmware: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    job = {"root": str(HERDSMAN), "dataDir": str(data_dir), "index": "ferry-ota-index.json",
           "mainUrl": _closed_url(), "checks": checks, "firmware": firmware or []}
    out = subprocess.run([_node(), "-e", CHECK_JS, json.dumps(job)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    assert "error" not in result, result
    return result


def _query(version: int, hw: int | None = None) -> dict[str, Any]:
    q: dict[str, Any] = {"fieldControl": 0 if hw is None else 1, "manufacturerCode": MFR,
                         "imageType": ITYPE, "fileVersion": version}
    if hw is not None:
        q["hardwareVersion"] = hw
    return q


def _image(version: int, hw: tuple[int, int] | None = None) -> bytes:
    hdr = otafile.OtaHeader(MFR, ITYPE, version, header_string=b"lamp fw",
                            min_hardware_version=hw[0] if hw else None,
                            max_hardware_version=hw[1] if hw else None)
    return otafile.build_simple(hdr, bytes(range(256)) * 8).serialize()


def test_forced_entry_reaches_siblings_only_while_ferrys_update_runs(
        broker: int, tmp_path: Path) -> None:
    data = tmp_path / "z2m"
    data.mkdir()
    bridge = FakeZigbee2Mqtt("127.0.0.1", broker, data, [
        BridgeDevice(A, "lamp_a", MFR, ITYPE, 0x00020000),
        BridgeDevice(B, "lamp_b", MFR, ITYPE, 0x00020000)], step_delay_s=0.1)
    siblings = [_query(0x00020000), _query(0x00030000), _query(0x00010000)]
    during: list[dict[str, Any]] = []

    def progress(done: int, total: int, phase: str) -> None:
        if phase == "upload" and not during:  # the forced entry as Z2M reads it now
            during.append(herdsman(data, siblings))

    try:
        opts = {"mqtt_host": "127.0.0.1", "mqtt_port": str(broker), "z2m_data_dir": str(data),
                "request_timeout_s": "30", "update_timeout_s": "60"}
        target = Target(name=A, transport="zigbee", address=A, hardware_id="0x1234:0x0001",
                        options={"force": "1"})
        res = get_transport("zigbee", opts).flash(target, io.BytesIO(_image(0x00020000)),
                                                  progress=progress)
    finally:
        bridge.close()
    assert res.ok, res.message
    # While it runs: herdsman offers the forced image to the same and a NEWER version.
    assert [c["available"] for c in during[0]["checks"]] == [True, True, True]
    # Afterwards: only the older sibling, as an ordinary upgrade.
    after = herdsman(data, siblings, firmware=[])
    assert [c["available"] for c in after["checks"]] == [False, False, True]
    entry = json.loads((data / "ferry-ota-index.json").read_text())[0]
    assert after["checks"][2]["url"] == entry["url"]
    # herdsman reads ferry's file through the relative url and checks its sha512
    fw = herdsman(data, [], firmware=[{"url": entry["url"], "sha512": entry["sha512"]}])
    assert fw["firmware"][0]["fileVersion"] == 0x00020000
    assert fw["firmware"][0]["bytes"] == entry["fileSize"]


def test_hardware_range_is_matched_on_the_query(tmp_path: Path) -> None:
    idx = OverrideIndex(tmp_path)
    raw = _image(0x00030000, hw=(2, 4))
    entry = idx.stage(raw, otafile.parse(raw).header, force=False)
    result = herdsman(tmp_path, [_query(0x00010000, hw=3), _query(0x00010000, hw=5),
                                 _query(0x00010000)],
                      firmware=[{"url": entry["url"], "sha512": entry["sha512"]}])
    # in range; out of range; a query without a hardware version matches no ranged entry
    assert [c["available"] for c in result["checks"]] == [True, False, False]
    # herdsman's own debug line is where ferry finds the query's hardware version
    ieee = "0x00124b0000cccc09"
    seen = [query_hardware_version(line, ieee) for line in result["logs"]]
    assert [v for v in seen if v is not None] == [3, 5]
    assert [c["url"] for c in result["checks"]] == [entry["url"], None, None]
    fw = result["firmware"][0]
    assert (fw["minimumHardwareVersion"], fw["maximumHardwareVersion"]) == (2, 4)
    assert fw["totalImageSize"] == len(raw)


def converters(data_dir: Path, checks: list[dict[str, Any]], *, online: bool
               ) -> list[dict[str, Any]]:
    job = {"root": str(CONVERTERS), "dataDir": str(data_dir), "index": "ferry-ota-index.json",
           "online": online, "checks": checks}
    out = subprocess.run([_node(CONVERTERS), "-e", CHECK_22_JS, json.dumps(job)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result: list[dict[str, Any]] = json.loads(out.stdout.strip().splitlines()[-1])["checks"]
    return result


def test_z2m_2_2_code_offline_force_and_basic_hardware_version(tmp_path: Path) -> None:
    idx = OverrideIndex(tmp_path)
    raw = _image(0x00020000, hw=(2, 4))
    hdr = otafile.parse(raw).header
    same = {"query": _query(0x00020000, hw=3), "basic": 3}
    older_query_only = {"query": _query(0x00010000, hw=3), "basic": None}
    older_basic = {"query": _query(0x00010000), "basic": 3}
    checks = [same, older_query_only, older_basic]
    with idx.type_lock(MFR, ITYPE, exclusive=True, timeout_s=5):
        entry = idx.stage(raw, hdr, force=True)
        # offline: the online index is fetched first, and nothing else happens
        assert converters(tmp_path, checks, online=False) == [{"error": "fetch failed"}] * 3
        during = converters(tmp_path, checks, online=True)
        idx.unforce(entry)
    # forced: the same version is offered; the hardware range is matched on the Basic
    # value, so the node that reports it only in its query never matches
    assert [c.get("available") for c in during] == [True, False, True]
    after = converters(tmp_path, checks, online=True)
    assert [c.get("available") for c in after] == [False, False, True]
