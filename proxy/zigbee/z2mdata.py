"""What ferry reads from Zigbee2MQTT's own files and retained messages, read-only.

- ``state.json`` (``advanced.cache_state``): the last published state of each device,
  whose ``update.installed_version`` is the OTA file version Z2M last saw.
- ``database.db``: zigbee-herdsman's device table, one JSON object per line
  (``Device.toDatabaseEntry`` in zigbee-herdsman ``src/controller/model/device.ts``),
  whose ``hwVersion`` is the Basic cluster's HWVersion attribute (0x0003) read at
  interview. Z2M 2.2.x (converters ``src/lib/ota.ts`` ``getImageMeta``/``getImage``)
  matches an image's hardware range against THIS value.
- ``bridge/info`` (retained): Z2M's version, its settings (``config.ota``) and
  ``restart_required``.
- ``bridge/logging`` debug lines: the only place Z2M shows the hardware version a node
  put in its Query Next Image Request, which Z2M 2.14 (herdsman ``Device.checkOta``,
  ``current.hardwareVersion``) matches against. Z2M publishes debug lines there only
  with ``advanced.log_debug_to_mqtt_frontend: true`` (2.x) and ``log_level: debug``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def cached_installed_version(data_dir: Path, ieee: str) -> int | None:
    try:
        states = json.loads((data_dir / "state.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    upd = (states.get(ieee) or {}).get("update") or {} if isinstance(states, dict) else {}
    v = upd.get("installed_version") if isinstance(upd, dict) else None
    return v if isinstance(v, int) else None


def basic_hardware_versions(data_dir: Path) -> dict[str, int]:
    """IEEE address -> Basic-cluster HWVersion, from herdsman's database.db."""
    out: dict[str, int] = {}
    try:
        text = (data_dir / "database.db").read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("hwVersion"), int) \
                and isinstance(row.get("ieeeAddr"), str):
            out[row["ieeeAddr"]] = row["hwVersion"]
    return out


@dataclass
class BridgeInfo:
    version: str = ""  # "" when Z2M published no bridge/info
    override_index: str | None = None  # config.ota.zigbee_ota_override_index_location
    restart_required: bool = False

    @classmethod
    def parse(cls, payload: bytes) -> BridgeInfo:
        try:
            info = json.loads(payload)
        except json.JSONDecodeError:
            return cls()
        if not isinstance(info, dict):
            return cls()
        ota = ((info.get("config") or {}).get("ota") or {}) \
            if isinstance(info.get("config"), dict) else {}
        loc = ota.get("zigbee_ota_override_index_location") if isinstance(ota, dict) else None
        return cls(version=str(info.get("version") or ""),
                   override_index=str(loc) if loc else None,
                   restart_required=bool(info.get("restart_required", False)))

    @property
    def release(self) -> tuple[int, ...]:
        """(2, 14, 1) from "2.14.1" or "2.14.1-dev"; () when unknown."""
        m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", self.version)
        return tuple(int(x) for x in m.groups(default="0")) if m else ()

    @property
    def falls_back_offline(self) -> bool | None:
        """Whether Z2M answers from the override index without internet. Verified on
        2.14.1 (yes: herdsman ``getOtaIndex`` catches the main-index fetch) and 2.2.1
        (no: converters ``getIndex`` fetches the main index first, uncaught); versions
        in between are not known here, so None."""
        if not self.release:
            return None
        if self.release >= (2, 14):
            return True
        if self.release <= (2, 2, 1):
            return False
        return None

    @property
    def can_abort(self) -> bool:
        """``ota_update/update/abort`` exists from Z2M 2.12.0 (CHANGELOG: "Add ability to
        abort running OTA", #32022). Before, the same topic matches the ``update``
        pattern (2.2.1 ``otaUpdate.ts`` topicRegex is unanchored) and would START an
        update, so ferry sends it only to a Z2M known to understand it."""
        return bool(self.release) and self.release >= (2, 12)


SEEN_FILE = "query-hardware.json"  # in ferry's image directory


def remember_query_hardware(image_dir: Path, ieee: str, hw: int) -> None:
    """Keep the query's hardware version ferry saw during a check: Z2M logs it only
    then, and ``ferry devices`` should still show it later."""
    from ferry.proxy.zigbee.files import atomic_write

    seen = remembered_query_hardware(image_dir)
    if seen.get(ieee) == hw:
        return
    seen[ieee] = hw
    atomic_write(image_dir / SEEN_FILE, (json.dumps(seen, indent=1) + "\n").encode())


def remembered_query_hardware(image_dir: Path) -> dict[str, int]:
    try:
        loaded = json.loads((image_dir / SEEN_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    if not isinstance(loaded, dict):
        return {}
    return {str(k): v for k, v in loaded.items() if isinstance(v, int)}


QUERY_LINE = re.compile(r"(0x[0-9a-fA-F]{16}).*?current(?:=|: )(\{.*?\})")


def query_hardware_version(message: str, ieee: str) -> int | None:
    """The hardwareVersion of a node's Query Next Image Request in a Z2M debug line:
    herdsman 10.x "Checking OTA <ieee> upgrade image availability, current={...}",
    converters 23.x "[<ieee> | <model>] Checking latest image availability, current:
    {...}". None when the line is not about ``ieee`` or carries no hardware version."""
    m = QUERY_LINE.search(message)
    if m is None or m.group(1).lower() != ieee.lower():
        return None
    try:
        current: Any = json.loads(m.group(2))
    except json.JSONDecodeError:
        return None
    hw = current.get("hardwareVersion") if isinstance(current, dict) else None
    return hw if isinstance(hw, int) else None
