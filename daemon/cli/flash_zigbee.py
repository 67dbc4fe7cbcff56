"""``ferry flash zigbee NODE IMAGE``: one Zigbee OTA file onto one node.

The same transport the daemon's proxy phase uses (Zigbee2MQTT over MQTT). Broker and
Zigbee2MQTT data directory come from the flags, or from the first ``[[target]]`` with
transport "zigbee" in the gateway config (``--config``).
"""

from __future__ import annotations

import argparse
from typing import Any


def _config_options(args: argparse.Namespace) -> dict[str, Any]:
    if not getattr(args, "config", None):
        return {}
    from ferry.daemon.config import load_config

    cfg = load_config(args.config)
    picked = [t for t in cfg.targets if t.transport == "zigbee"]
    exact = [t for t in picked if args.node in (t.name, t.address)]
    chosen = (exact or picked)[:1]
    return dict(chosen[0].options) if chosen else {}


def transport_options(args: argparse.Namespace) -> dict[str, Any]:
    opts = _config_options(args)
    if args.mqtt:
        host, _, port = args.mqtt.rpartition(":")
        opts["mqtt_host"], opts["mqtt_port"] = host or "127.0.0.1", int(port)
    if args.base_topic:
        opts["base_topic"] = args.base_topic
    if args.z2m_data_dir:
        opts["z2m_data_dir"] = args.z2m_data_dir
    if args.index_file:
        opts["index_file"] = args.index_file
    return opts


def run(args: argparse.Namespace) -> int:
    from ferry.daemon.cli.flashrun import flash_image
    from ferry.proxy.transport import Target
    from ferry.proxy.zigbee.transport import create

    options = {"force": "1"} if args.force else {}
    if args.manufacturer:
        options["spec_manufacturer"] = args.manufacturer
    if args.image_type:
        options["spec_image_type"] = args.image_type
    target = Target(name=args.node, transport="zigbee", address=args.node, options=options)
    return flash_image(create(transport_options(args)), target, args.image, label="zigbee",
                       as_json=bool(getattr(args, "json", False)))


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "zigbee",
        help="update one Zigbee node with an OTA file (through Zigbee2MQTT, or zigpy)",
        description="Hand one Zigbee OTA file to Zigbee2MQTT and have it update NODE: the "
        "file goes into Z2M's local OTA index, the update is requested over MQTT, progress "
        "and the new file version are read back. With adapter = \"zigpy\" in the config's "
        "zigbee options, ferry opens the coordinator itself and serves the file (NODE \"*\": "
        "every OTA node, with one broadcast notify). Skipped when the node already runs "
        "this version or newer, unless --force.",
    )
    parser.add_argument("node", metavar="NODE", help="IEEE address (0x00124b...) or friendly name")
    parser.add_argument("image", metavar="IMAGE", help="Zigbee OTA upgrade file (.ota/.zigbee)")
    parser.add_argument("--mqtt", metavar="HOST:PORT", help="MQTT broker (default 127.0.0.1:1883)")
    parser.add_argument("--base-topic", help="Zigbee2MQTT base topic (default zigbee2mqtt)")
    parser.add_argument("--z2m-data-dir", metavar="DIR",
                        help="Zigbee2MQTT data directory (where configuration.yaml lives)")
    parser.add_argument("--index-file", metavar="NAME",
                        help="override index named in Z2M's ota.zigbee_ota_override_index_location "
                        "(default ferry-ota-index.json)")
    parser.add_argument("--manufacturer", metavar="CODE",
                        help="refuse unless the file's manufacturer code is this")
    parser.add_argument("--image-type", metavar="TYPE",
                        help="refuse unless the file's image type is this")
    parser.add_argument("--force", action="store_true",
                        help="update even when the node runs this version or a newer one")
    parser.set_defaults(func=run)
