"""Zigbee2MQTT's OTA decisions, per release, for the Z2M stand-in (``z2m_bridge``).

Written from the published packages (npm), not from ferry's code:

- **2.14.1** (zigbee-herdsman 10.9.2): ``src/controller/helpers/ota.ts`` ``getOtaIndex``
  reads the override index FIRST and then tries the online main index inside a
  try/catch ("Failed to download main index, only override index is loaded"), so an
  offline gateway still gets the override entries. ``Device.findMatchingOtaImage``
  matches the hardware range against ``current.hardwareVersion``, the field of the
  node's Query Next Image Request. ``Device.checkOta``: ``available: meta.force ? true :
  current.fileVersion < meta.fileVersion``. ``Device.updateOta`` reads the file
  (``validateFirmware``: sha512; ``parseOtaImage``: "Size mismatch"); any failure
  there is only logged, the node gets NO_IMAGE_AVAILABLE and Z2M answers "No image
  currently available". Errors: ``lib/extension/otaUpdate.ts`` "Failed to check if OTA
  update available for '<name>' (<e>)", "OTA update of '<name>' failed (<e>)".
  ``ota_update/update/abort`` exists from 2.12.0.
- **2.2.1** (zigbee-herdsman-converters 23.20.1): ``src/lib/ota.ts`` ``getIndex``
  fetches the online main index first, outside any try: offline, Node's fetch throws
  "fetch failed" and every check and update fails with it. ``getImageMeta`` matches
  the hardware range against ``device.hardwareVersion``, the Basic-cluster attribute
  stored at interview; ``getImage`` asserts "No new image available" (unless force),
  sha512 ("File checksum validation failed"), "File version mismatch", "Image size
  mismatch", and, when the header carries a hardware range, "Hardware version
  required"/"Hardware version mismatch" against the same Basic value. Errors: "Failed
  to check if update available for '<name>' (<e>)", "Update of '<name>' failed (<e>)".
  Its topic pattern ``ota_update/(update|check)/?(downgrade)?`` is not anchored, so a
  ``update/abort`` request is an ``update`` request.
"""

from __future__ import annotations

import errno
import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Release:
    version: str
    override_first: bool  # reads the override index before (and without) the online one
    hw_from_query: bool  # hardware version from the node's query, not the Basic cluster
    can_abort: bool
    check_error: str
    update_error: str
    busy_error: str
    reports_file_version: bool  # update response from/to carry file_version


RELEASES = {
    "2.14": Release("2.14.1", True, True, True,
                    "Failed to check if OTA update available for '{name}' ({e})",
                    "OTA update of '{name}' failed ({e})",
                    "OTA update or check for update already in progress for '{name}'", True),
    "2.2": Release("2.2.1", False, False, False,
                   "Failed to check if update available for '{name}' ({e})",
                   "Update of '{name}' failed ({e})",
                   "Update or check for update already in progress for '{name}'", False),
}


class OtaFailure(Exception):
    """What Z2M's OTA code throws; the message is what ends up in the MQTT error."""


@dataclass
class NodeView:
    """What Z2M knows about a node when it checks: the query and the database row."""

    ieee: str
    model: str
    manufacturer_code: int
    image_type: int
    file_version: int
    hw_query: int | None  # in the node's Query Next Image Request (field control bit 0)
    hw_basic: int | None  # Basic cluster HWVersion from the interview (database.db)

    def query_payload(self) -> dict[str, Any]:
        q: dict[str, Any] = {"fieldControl": 1 if self.hw_query is not None else 0,
                             "manufacturerCode": self.manufacturer_code,
                             "imageType": self.image_type, "fileVersion": self.file_version}
        if self.hw_query is not None:
            q["hardwareVersion"] = self.hw_query
        return q

    def debug_line(self, rel: Release) -> str:
        """The debug log line that carries the query (published on bridge/logging)."""
        current = json.dumps(self.query_payload(), separators=(",", ":"))
        if rel.hw_from_query:
            return f"Checking OTA {self.ieee} upgrade image availability, current={current}"
        return (f"[{self.ieee} | {self.model}] Checking latest image availability, "
                f"current: {current}")


def _header(data: bytes) -> dict[str, Any]:
    if len(data) < 56 or struct.unpack_from("<I", data)[0] != 0x0BEEF11E:
        raise OtaFailure("Not a valid OTA file")
    _m, _hv, hlen, fc, mfr, itype, ver = struct.unpack_from("<IHHHHHI", data)
    (total,) = struct.unpack_from("<I", data, 52)
    h: dict[str, Any] = {"manufacturerCode": mfr, "imageType": itype, "fileVersion": ver,
                         "totalImageSize": total, "headerLength": hlen}
    pos = 56 + (1 if fc & 1 else 0) + (8 if fc & 2 else 0)
    if fc & 4:
        h["minimumHardwareVersion"], h["maximumHardwareVersion"] = \
            struct.unpack_from("<HH", data, pos)
    return h


def _node_error(exc: OSError, path: Path) -> str:
    """Node's readFileSync message, e.g. "EACCES: permission denied, open '<path>'"."""
    code = errno.errorcode.get(exc.errno or 0, "EIO")
    return f"{code}: {(exc.strerror or '').lower()}, open '{path}'"


def _read(data_dir: Path, url: str) -> bytes:
    path = Path(url) if Path(url).is_absolute() else data_dir / url
    try:
        return path.read_bytes()
    except OSError as exc:
        raise OtaFailure(_node_error(exc, path)) from exc


def load_index(rel: Release, data_dir: Path, override: str | None, online: bool,
               main_index: list[dict[str, Any]]) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    if not rel.override_first and not online:
        raise OtaFailure("fetch failed")  # undici's message for an unreachable host
    if override:
        path = Path(override) if Path(override).is_absolute() else data_dir / override
        try:
            local = json.loads(path.read_text())
        except OSError as exc:
            raise OtaFailure(_node_error(exc, path)) from exc
        for meta in local:  # fillImageInfo: fields missing from the entry come from the file
            if any(meta.get(k) is None for k in ("imageType", "manufacturerCode",
                                                 "fileVersion")):
                h = _header(_read(data_dir, str(meta["url"])))
                for k in ("imageType", "manufacturerCode", "fileVersion"):
                    meta.setdefault(k, h[k])
            entries.append(meta)
    return entries + (list(main_index) if online else [])


def match(rel: Release, entries: list[dict[str, Any]], node: NodeView) -> dict[str, Any] | None:
    hw = node.hw_query if rel.hw_from_query else node.hw_basic
    for i in entries:
        if (i.get("imageType"), i.get("manufacturerCode")) != (node.image_type,
                                                               node.manufacturer_code):
            continue
        if i.get("minFileVersion") is not None and node.file_version < i["minFileVersion"]:
            continue
        if i.get("maxFileVersion") is not None and node.file_version > i["maxFileVersion"]:
            continue
        if i.get("modelId") and i["modelId"] != node.model:
            continue
        if i.get("hardwareVersionMin") is not None and (hw is None
                                                        or hw < i["hardwareVersionMin"]):
            continue
        if i.get("hardwareVersionMax") is not None and (hw is None
                                                        or hw > i["hardwareVersionMax"]):
            continue
        return i
    return None


def available(meta: dict[str, Any] | None, node: NodeView) -> bool:
    if meta is None:
        return False
    return bool(meta.get("force")) or node.file_version < int(meta["fileVersion"])


def get_image(rel: Release, data_dir: Path, meta: dict[str, Any] | None,
              node: NodeView) -> bytes | None:
    """The file Z2M will serve; None where 2.14 answers "No image currently available",
    OtaFailure where 2.2 throws."""
    if not rel.override_first:  # 2.2.1 getImage
        if meta is None:
            raise OtaFailure(f"[{node.ieee} | {node.model}] No image currently available")
        if not (meta["fileVersion"] > node.file_version or meta.get("force")):
            raise OtaFailure("No new image available")
        data = _read(data_dir, str(meta["url"]))
        if meta.get("sha512") and hashlib.sha512(data).hexdigest() != meta["sha512"]:
            raise OtaFailure("File checksum validation failed")
        h = _header(data)
        if h["fileVersion"] != meta["fileVersion"]:
            raise OtaFailure("File version mismatch")
        if meta.get("fileSize") and h["totalImageSize"] != meta["fileSize"]:
            raise OtaFailure("Image size mismatch")
        if h["manufacturerCode"] != node.manufacturer_code:
            raise OtaFailure("Manufacturer code mismatch")
        if h["imageType"] != node.image_type:
            raise OtaFailure("Image type mismatch")
        if "minimumHardwareVersion" in h:
            if node.hw_basic is None:
                raise OtaFailure("Hardware version required")
            if not h["minimumHardwareVersion"] <= node.hw_basic <= h["maximumHardwareVersion"]:
                raise OtaFailure("Hardware version mismatch")
        return data
    # 2.14.1 updateOta: checkOta, then getOtaFirmware; failures only logged
    if not available(meta, node) or meta is None:
        return None
    try:
        data = _read(data_dir, str(meta["url"]))
    except OtaFailure:
        return None
    if meta.get("sha512") and hashlib.sha512(data).hexdigest() != meta["sha512"]:
        return None
    try:
        h = _header(data)
    except OtaFailure:
        return None
    if h["totalImageSize"] != len(data):
        return None
    return data
