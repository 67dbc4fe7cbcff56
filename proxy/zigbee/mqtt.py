"""A small blocking MQTT session over paho-mqtt (1.6 or 2.x): connect, subscribe,
publish, and wait for the next message that satisfies a predicate.

The transport API is blocking (DESIGN.md), so the adapter reads messages from a queue
filled by paho's network thread instead of writing callback state machines.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ferry.proxy.zigbee.errors import AdapterError


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retained: bool


class MqttSession:
    def __init__(self, host: str, port: int, *, username: str | None = None,
                 password: str | None = None, connect_timeout: float = 10.0,
                 client_id: str | None = None) -> None:
        try:
            import paho.mqtt.client as mqtt
        except ImportError as exc:  # pragma: no cover - a dependency of ferry-ota
            raise AdapterError("paho-mqtt is not installed; install ferry-ota's "
                               "dependencies (pip install paho-mqtt)") from exc
        cid = client_id or f"ferry-{uuid.uuid4().hex[:10]}"
        api = getattr(mqtt, "CallbackAPIVersion", None)
        self._client: Any = (mqtt.Client(api.VERSION2, client_id=cid) if api is not None
                             else mqtt.Client(client_id=cid))
        if username:
            self._client.username_pw_set(username, password)
        self.messages: queue.Queue[Message] = queue.Queue()
        self._connected = threading.Event()
        self._rc: Any = None

        def on_connect(_c: Any, _u: Any, _flags: Any, rc: Any, *_rest: Any) -> None:
            self._rc = rc
            self._connected.set()

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            self.messages.put(Message(msg.topic, bytes(msg.payload), bool(msg.retain)))

        self._client.on_connect = on_connect
        self._client.on_message = on_message
        try:
            self._client.connect(host, port, keepalive=60)
        except OSError as exc:
            raise AdapterError(f"cannot reach the MQTT broker at {host}:{port} ({exc}); "
                               "is mosquitto running and the address right?") from exc
        self._client.loop_start()
        if not self._connected.wait(connect_timeout):
            self.close()
            raise AdapterError(f"MQTT broker at {host}:{port} did not accept the connection "
                               f"within {connect_timeout:.0f} s")
        if int(getattr(self._rc, "value", self._rc) or 0) != 0:
            self.close()
            raise AdapterError(f"MQTT broker at {host}:{port} refused the connection "
                               f"({self._rc}); check username and password")

    def subscribe(self, topic: str, qos: int = 1) -> None:
        done = threading.Event()
        prev = self._client.on_subscribe

        def on_subscribe(*_args: Any) -> None:
            done.set()

        self._client.on_subscribe = on_subscribe
        self._client.subscribe(topic, qos)
        done.wait(10.0)  # SUBACK: from here on no published message is missed
        self._client.on_subscribe = prev

    def publish(self, topic: str, payload: str | bytes, *, retain: bool = False) -> None:
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10.0)

    def wait_for(self, predicate: Callable[[Message], bool], timeout: float,
                 on_other: Callable[[Message], None] | None = None) -> Message | None:
        """The next message matching ``predicate``; others go to ``on_other``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                msg = self.messages.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if predicate(msg):
                return msg
            if on_other is not None:
                on_other(msg)

    def drain(self, settle: float) -> list[Message]:
        """Every message that arrives until none has come for ``settle`` seconds."""
        out = []
        while True:
            try:
                out.append(self.messages.get(timeout=settle))
            except queue.Empty:
                return out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._client.disconnect()
        with contextlib.suppress(Exception):
            self._client.loop_stop()
