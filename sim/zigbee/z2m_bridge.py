"""A stand-in for Zigbee2MQTT on an MQTT broker, for tests and ``ferry sim zigbee --z2m``.

It speaks the topics and payload shapes of Zigbee2MQTT's bridge API as its source
(``lib/extension/otaUpdate.ts``, ``lib/extension/bridge.ts`` of 2.2.1 and 2.14.1) and
docs define them: retained ``bridge/devices`` and ``bridge/info`` (version, ``config``,
``restart_required``), device state with ``update.{state,progress,remaining,
installed_version,latest_version}``, ``bridge/request/device/ota_update/{check,update}``
answered on ``bridge/response/...`` with ``{data, status, error?, transaction?}``,
``update/abort`` (2.14), ``bridge/logging`` debug lines, ``state.json`` as its state
cache and ``database.db`` as herdsman's device table.

What Z2M decides (which index entry, force, offline, hardware version, error texts) is
``z2m_ota``, per release (``version="2.14"`` or ``"2.2"``). Like Z2M, the stand-in
reads ``ota.zigbee_ota_override_index_location`` once at start (``requiresRestart``):
``set_override_index`` changes the published setting only, ``restart`` applies it.
The block transfer itself is what the population simulation covers; here the subject
is the MQTT contract and the index rules, and the node checks the file it would
receive (``wire.check_ota_file``).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferry.sim.zigbee import z2m_ota
from ferry.sim.zigbee.wire import check_ota_file


@dataclass
class BridgeDevice:
    ieee: str
    friendly_name: str
    manufacturer_code: int
    image_type: int
    file_version: int
    fail: str = ""  # when set, updates of this device fail with this reason
    supports_ota: bool = True
    hw_query: int | None = None  # hardware version the node puts in its query
    hw_basic: int | None = None  # Basic-cluster HWVersion Z2M stored at interview
    model: str = "SIM-1"


class FakeZigbee2Mqtt:
    def __init__(self, host: str, port: int, data_dir: Path, devices: list[BridgeDevice], *,
                 base_topic: str = "zigbee2mqtt", index_file: str = "ferry-ota-index.json",
                 step_delay_s: float = 0.05, version: str = "2.14", online: bool = False,
                 override_index: str | None = "", debug_logging: bool = False,
                 update_check_interval_min: float = 1440.0,
                 main_index: list[dict[str, Any]] | None = None) -> None:
        import paho.mqtt.client as mqtt

        if version not in z2m_ota.RELEASES:
            raise ValueError(f"unknown Zigbee2MQTT release {version!r}; "
                             f"known: {', '.join(z2m_ota.RELEASES)}")
        self.release = z2m_ota.RELEASES[version]
        self.base = base_topic
        self.data_dir = Path(data_dir)
        self.index_file = index_file
        # configuration.yaml's setting; "" means "ferry's index_file", None "not set"
        self.configured_index = index_file if override_index == "" else override_index
        self.active_index = self.configured_index  # read at start only (requiresRestart)
        self.restart_required = False
        self.online = online
        self.main_index = main_index or []
        self.debug_logging = debug_logging
        self.update_check_interval_s = update_check_interval_min * 60.0
        self.devices = {d.ieee: d for d in devices}
        self.step_delay_s = step_delay_s
        self.requests: list[tuple[str, Any]] = []
        self.served: list[tuple[str, int, bool]] = []  # (ieee, file version, forced entry)
        self._in_progress: set[str] = set()
        self._abort: set[str] = set()
        self._last_checked: dict[str, float] = {}
        self._states: dict[str, str] = {}  # update.state last published per device
        self.responses: list[tuple[str, dict[str, Any]]] = []
        self._answered = threading.Condition()
        self._lock = threading.Lock()
        api = getattr(mqtt, "CallbackAPIVersion", None)
        self.client: Any = (mqtt.Client(api.VERSION2, client_id=f"fake-z2m-{id(self)}")
                            if api else mqtt.Client(client_id=f"fake-z2m-{id(self)}"))
        self.client.on_message = self._on_message
        self._ready = threading.Event()
        self.client.on_subscribe = lambda *a: self._ready.set()
        self.client.connect(host, port)
        self.client.loop_start()
        self.client.subscribe(f"{self.base}/bridge/request/device/ota_update/#")
        if not self._ready.wait(10):
            raise RuntimeError("fake Zigbee2MQTT could not subscribe on the broker")
        self._publish_info()
        self._publish_devices()
        self._save_state()

    # ---- settings ------------------------------------------------------------------

    def set_override_index(self, location: str | None) -> None:
        """As ``bridge/request/options`` would: saved, applied at the next restart."""
        self.configured_index = location
        self.restart_required = self.configured_index != self.active_index
        self._publish_info()

    def restart(self) -> None:
        self.active_index = self.configured_index
        self.restart_required = False
        self._publish_info()

    # ---- what Z2M publishes ------------------------------------------------------

    def _publish(self, topic: str, payload: Any, *, retain: bool = False) -> None:
        self.client.publish(f"{self.base}/{topic}", json.dumps(payload), qos=1,
                            retain=retain).wait_for_publish(5)

    def _publish_info(self) -> None:
        self._publish("bridge/info", {
            "version": self.release.version, "log_level": "debug" if self.debug_logging
            else "info", "restart_required": self.restart_required,
            "config": {"ota": {"zigbee_ota_override_index_location": self.configured_index,
                               "update_check_interval": self.update_check_interval_s / 60,
                               "disable_automatic_update_check": False},
                       "advanced": {"log_debug_to_mqtt_frontend": self.debug_logging}},
        }, retain=True)

    def _resolve(self, ident: str) -> BridgeDevice | None:
        for d in self.devices.values():
            if ident in (d.ieee, d.friendly_name):
                return d
        return None

    def _publish_devices(self) -> None:
        listing: list[dict[str, Any]] = [{"ieee_address": "0x00124b0000000000",
                                          "friendly_name": "Coordinator", "type": "Coordinator"}]
        for d in self.devices.values():
            listing.append({
                "ieee_address": d.ieee, "friendly_name": d.friendly_name, "type": "EndDevice",
                "supported": True, "manufacturer": "ferry-sim", "model_id": d.model,
                "software_build_id": f"{d.file_version:08x}",
                "definition": {"model": d.model, "vendor": "ferry-sim",
                               "description": "simulated node", "supports_ota": d.supports_ota},
            })
        self._publish("bridge/devices", listing, retain=True)

    def _state(self, d: BridgeDevice, state: str, latest: int | None = None,
               **extra: Any) -> None:
        upd = {"state": state, "installed_version": d.file_version,
               "latest_version": latest if latest is not None else d.file_version, **extra}
        self._publish(d.friendly_name, {"update": upd})

    def state_of(self, ieee: str) -> str:
        return self._states.get(ieee, "idle")

    def _save_state(self) -> None:
        states = {d.ieee: {"update": {"state": "idle", "installed_version": d.file_version,
                                      "latest_version": d.file_version}}
                  for d in self.devices.values()}
        (self.data_dir / "state.json").write_text(json.dumps(states))
        rows = [json.dumps({"id": i + 2, "type": "EndDevice", "ieeeAddr": d.ieee,
                            "manufId": d.manufacturer_code, "modelId": d.model,
                            "hwVersion": d.hw_basic, "swBuildId": f"{d.file_version:08x}",
                            "interviewCompleted": True})
                for i, d in enumerate(self.devices.values())]
        (self.data_dir / "database.db").write_text("\n".join(rows) + "\n")

    def _respond(self, topic: str, msg: Any, data: dict[str, Any], error: str = "") -> None:
        body: dict[str, Any] = {"data": data if not error else {},
                                "status": "error" if error else "ok"}
        if error:
            body["error"] = error
        if isinstance(msg, dict) and "transaction" in msg:
            body["transaction"] = msg["transaction"]
        self._publish(f"bridge/response/device/ota_update/{topic}", body)
        with self._answered:
            self.responses.append((topic, body))
            self._answered.notify_all()

    def wait_response(self, match: Callable[[dict[str, Any]], bool],
                      timeout: float = 30.0) -> dict[str, Any]:
        """The first answer Z2M published that ``match`` accepts (tests press buttons)."""
        with self._answered:
            found: list[dict[str, Any]] = []

            def ready() -> bool:
                found[:] = [b for _t, b in self.responses if match(b)]
                return bool(found)

            if not self._answered.wait_for(ready, timeout):
                raise TimeoutError(f"no matching answer within {timeout} s")
            return found[0]

    def _view(self, d: BridgeDevice) -> z2m_ota.NodeView:
        return z2m_ota.NodeView(d.ieee, d.model, d.manufacturer_code, d.image_type,
                                d.file_version, d.hw_query, d.hw_basic)

    def _lookup(self, d: BridgeDevice) -> tuple[z2m_ota.NodeView, dict[str, Any] | None]:
        node = self._view(d)
        if self.debug_logging:
            self._publish("bridge/logging", {"level": "debug", "message":
                                             node.debug_line(self.release),
                                             "namespace": "zh:controller:device"})
        entries = z2m_ota.load_index(self.release, self.data_dir, self.active_index,
                                     self.online, self.main_index)
        return node, z2m_ota.match(self.release, entries, node)

    # ---- a node's own Query Next Image Request (onZigbeeEvent) ---------------------

    def node_query(self, ieee: str) -> str:
        """The node asks on its own; Z2M checks (at most once per update_check_interval)
        and publishes the update state. Returns the state published ("" if none)."""
        d = self.devices[ieee]
        with self._lock:
            if ieee in self._in_progress:
                return ""
            last = self._last_checked.get(ieee)
            if last is not None and time.monotonic() - last <= self.update_check_interval_s:
                return ""
            self._last_checked[ieee] = time.monotonic()
        try:
            node, meta = self._lookup(d)
            state = "available" if z2m_ota.available(meta, node) else "idle"
        except z2m_ota.OtaFailure:
            state = "idle"
            meta = None
        self._states[ieee] = state
        self._state(d, state, meta["fileVersion"] if meta else None)
        return state

    # ---- requests --------------------------------------------------------------------

    def _on_message(self, _c: Any, _u: Any, m: Any) -> None:
        sub = m.topic.split("/ota_update/", 1)[-1]
        try:
            msg: Any = json.loads(m.payload)
        except json.JSONDecodeError:
            msg = m.payload.decode()
        self.requests.append((m.topic, msg))
        ident = msg["id"] if isinstance(msg, dict) else str(msg)
        parts = sub.split("/")
        kind = parts[0]
        modifier = parts[1] if len(parts) > 1 else ""
        if modifier == "abort" and not self.release.can_abort:
            modifier = ""  # 2.2.1's unanchored pattern: "update/abort" is an update
        threading.Thread(target=self._handle, args=(kind, modifier, msg, ident),
                         daemon=True).start()

    def _handle(self, kind: str, modifier: str, msg: Any, ident: str) -> None:
        rel = self.release
        d = self._resolve(ident)
        if d is None:
            self._respond(kind, msg, {}, f"Device '{ident}' does not exist")
            return
        with self._lock:
            busy = d.ieee in self._in_progress
            if busy and modifier == "abort":
                self._abort.add(d.ieee)
            elif not busy and modifier != "abort" and d.supports_ota:
                self._in_progress.add(d.ieee)
        if modifier == "abort":
            if busy:
                self._respond("update/abort", msg, {"id": ident})
            else:
                self._respond(kind, msg, {}, "No OTA in progress to abort for device "
                                             f"'{d.friendly_name}'")
            return
        if not d.supports_ota:
            self._respond(kind, msg, {}, f"Device '{d.friendly_name}' does not support OTA updates")
            return
        if busy:
            self._respond(kind, msg, {}, rel.busy_error.format(name=d.friendly_name))
            return
        try:
            if kind == "check":
                self._check(d, msg, ident)
            elif kind == "update":
                self._update(d, msg, ident)
        finally:
            with self._lock:
                self._in_progress.discard(d.ieee)
                self._abort.discard(d.ieee)

    def _check(self, d: BridgeDevice, msg: Any, ident: str) -> None:
        try:
            node, meta = self._lookup(d)
        except z2m_ota.OtaFailure as exc:
            self._respond("check", msg, {}, self.release.check_error.format(
                name=d.friendly_name, e=exc))
            return
        avail = z2m_ota.available(meta, node)
        self._last_checked[d.ieee] = time.monotonic()
        self._states[d.ieee] = "available" if avail else "idle"
        self._state(d, self._states[d.ieee], meta["fileVersion"] if meta else None)
        self._respond("check", msg, {"id": ident, "update_available": avail})

    def _update(self, d: BridgeDevice, msg: Any, ident: str) -> None:
        rel = self.release
        fail = rel.update_error.format
        try:
            node, meta = self._lookup(d)
            data = z2m_ota.get_image(rel, self.data_dir, meta, node)
        except z2m_ota.OtaFailure as exc:
            self._respond("update", msg, {}, fail(name=d.friendly_name, e=exc))
            return
        if data is None or meta is None:  # 2.14: the node was told NO_IMAGE_AVAILABLE
            self._respond("update", msg, {}, f"Update of '{d.friendly_name}' failed "
                                             "(No image currently available)")
            return
        version = int(meta["fileVersion"])
        self.served.append((d.ieee, version, bool(meta.get("force"))))
        problem = check_ota_file(data, d.manufacturer_code, d.image_type, version)
        for pct in (0.0, 25.0, 50.0, 75.0):
            if d.ieee in self._abort:
                self._state(d, "available", version)
                self._respond("update", msg, {}, fail(
                    name=d.friendly_name, e=f"OTA for device {d.ieee} was aborted"))
                return
            self._state(d, "updating", version, progress=pct, remaining=60)
            time.sleep(self.step_delay_s)
        problem = problem or d.fail
        if problem:
            self._state(d, "available", version)
            self._respond("update", msg, {}, fail(name=d.friendly_name, e=problem))
            return
        before = d.file_version
        d.file_version = version
        self._states[d.ieee] = "idle"
        self._state(d, "idle", d.file_version)
        self._save_state()
        frm: dict[str, Any] = {"software_build_id": f"{before:08x}", "date_code": ""}
        to: dict[str, Any] = {"software_build_id": f"{version:08x}", "date_code": ""}
        if rel.reports_file_version:
            frm["file_version"], to["file_version"] = before, version
        self._respond("update", msg, {"id": ident, "from": frm, "to": to})

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
