"""What ferry makes of Zigbee2MQTT's answers and published settings, per release: the
"fetch failed" hint (2.2 offline vs. an unreachable URL on 2.14), the override setting
compared as Z2M resolves it, the hardware version of a node's query in either
release's debug line, and which hardware value a release matches an image's range on."""

from __future__ import annotations

from pathlib import Path


def test_fetch_failed_is_explained_per_release() -> None:
    from ferry.proxy.zigbee.z2m import explain
    from ferry.proxy.zigbee.z2mdata import BridgeInfo

    err = "Update of 'lamp' failed (fetch failed)"
    old = explain(err, BridgeInfo(version="2.2.1"))
    assert old.startswith(err) and "upgrade Zigbee2MQTT to 2.14" in old
    assert "give the gateway access" in old.lower()
    unknown = explain(err, BridgeInfo())
    assert "upgrade Zigbee2MQTT to 2.14" in unknown
    new = explain(err, BridgeInfo(version="2.14.1"))
    assert "upgrade" not in new and "http(s) URL" in new
    assert BridgeInfo(version="2.14.1").can_abort
    assert not BridgeInfo(version="2.2.1").can_abort and not BridgeInfo().can_abort


def test_query_hardware_version_from_both_releases_debug_lines() -> None:
    from ferry.proxy.zigbee.z2mdata import query_hardware_version

    ieee = "0x00124b0000aaaa01"
    herdsman = (f"Checking OTA {ieee} upgrade image availability, current="
                '{"fieldControl":1,"manufacturerCode":4660,"imageType":1,'
                '"fileVersion":65536,"hardwareVersion":3}')
    converters = (f"[{ieee} | SIM-1] Checking latest image availability, current: "
                  '{"fieldControl":0,"manufacturerCode":4660,"imageType":1,"fileVersion":1}')
    assert query_hardware_version(herdsman, ieee) == 3
    assert query_hardware_version(converters, ieee) is None  # no hardware version sent
    assert query_hardware_version(herdsman, "0x00124b0000aaaa02") is None


def test_z2m_setting_is_compared_as_z2m_resolves_it(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from ferry.proxy.zigbee.z2m import Z2MOptions, Zigbee2Mqtt
    from ferry.proxy.zigbee.z2mdata import BridgeInfo

    def adapter(index_file: str, loc: str | None, version: str = "2.14.1") -> Zigbee2Mqtt:
        a = Zigbee2Mqtt(Z2MOptions(tmp_path, index_file=index_file))
        a._info = BridgeInfo(version=version, override_index=loc)
        return a

    absolute = str(tmp_path / "ferry-ota-index.json")
    assert adapter("ferry-ota-index.json", "ferry-ota-index.json").configuration_problem() == ""
    assert adapter(absolute, "ferry-ota-index.json").configuration_problem() == ""
    assert adapter("ferry-ota-index.json", absolute).configuration_problem() == ""
    other = adapter("ferry-ota-index.json", "index.json").configuration_problem()
    assert "'index.json'" in other and "restart" in other
    unset = adapter("ferry-ota-index.json", None).configuration_problem()
    assert "restart Zigbee2MQTT" in unset
    assert adapter("ferry-ota-index.json", None, version="").configuration_problem() == ""


def test_hardware_hint_names_the_value_each_release_matches() -> None:
    from ferry.proxy.zigbee.z2m import hardware_hint
    from ferry.proxy.zigbee.z2mdata import BridgeInfo

    old, new = BridgeInfo(version="2.2.1"), BridgeInfo(version="2.14.1")
    assert hardware_hint(old, (1, 3), 2, None) == ""
    assert "Basic-cluster hardware version, 0x0005" in hardware_hint(old, (1, 3), 5, 2)
    assert "does not have" in hardware_hint(old, (1, 3), None, 2)
    assert "Query Next Image Request, 0x0000" in hardware_hint(new, (1, 3), 2, 0)
    assert hardware_hint(new, (1, 3), None, None) == ""  # unknown is not missing
    assert hardware_hint(new, None, None, None) == ""
    assert hardware_hint(BridgeInfo(version="2.9.0"), (1, 3), None, None) == ""
