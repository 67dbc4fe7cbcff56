"""``ferry flash lora GROUP IMAGE``: one FUOTA campaign to one multicast group.

The same transport the daemon's proxy phase uses. GROUP is the network server's
multicast group id (ChirpStack: its UUID); the members and their keys come from
``--devices`` and ``--keys-file``. Expect minutes to hours: class A setup waits for
each node's uplinks, and the broadcast is bound by the sub-band's duty cycle.
"""

from __future__ import annotations

import argparse
from typing import Any

OPTION_FLAGS = ("devices", "keys_file", "application_id", "mqtt_host", "mqtt_port",
                "mqtt_username", "mqtt_password", "api_url", "api_token_file", "dr",
                "frequency", "duty_cycle", "loss_estimate", "answer_timeout", "start_margin",
                "state_dir", "node_limits", "frag_max_size", "frag_max_nb",
                "frag_max_redundancy", "ts004_version", "session_cnt")


def transport_options(args: argparse.Namespace) -> dict[str, Any]:
    """Transport options from the command line (tests replace this to reach a simulator)."""
    return {k: str(getattr(args, k)) for k in OPTION_FLAGS if getattr(args, k) is not None}


def run(args: argparse.Namespace) -> int:
    from ferry.daemon.cli.flashrun import flash_image
    from ferry.proxy.lora.transport import create
    from ferry.proxy.transport import Target

    target_opts = {"force": "1"} if args.force else {}
    if args.version:
        target_opts["spec_version"] = args.version
    target = Target(name="cli", transport="lora", address=args.group, options=target_opts)

    def nodes(result: Any) -> None:
        for key, value in sorted(result.detail.items()):
            if key.startswith("node."):
                print(f"  {key[5:]}: {value}")

    return flash_image(create(transport_options(args)), target, args.image, label="lora",
                       as_json=bool(getattr(args, "json", False)), after=nodes)


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "lora",
        help="send an image to a LoRaWAN multicast group (FUOTA: TS003/TS004/TS005)",
        description="Send one image to the LoRa nodes of a multicast group: clock sync, "
        "multicast and fragmentation session setup, then fragments with forward error "
        "correction under the sub-band's duty cycle, topped up until every node has it. "
        "Talks to ChirpStack v4 (MQTT integration + REST API).",
    )
    parser.add_argument("group", metavar="GROUP", help="multicast group id (ChirpStack UUID)")
    parser.add_argument("image", metavar="IMAGE", help="firmware image as the nodes expect it")
    parser.add_argument("--devices", required=True, metavar="EUI,...",
                        help="DevEUIs of the group's members")
    parser.add_argument("--keys-file", dest="keys_file", required=True, metavar="PATH",
                        help='JSON {"<devEui>": "<GenAppKey hex>"} (keep it 0600)')
    parser.add_argument("--application-id", dest="application_id", required=True,
                        metavar="UUID", help="ChirpStack application of the devices")
    parser.add_argument("--mqtt-host", dest="mqtt_host", metavar="HOST")
    parser.add_argument("--mqtt-port", dest="mqtt_port", type=int, metavar="PORT")
    parser.add_argument("--mqtt-username", dest="mqtt_username")
    parser.add_argument("--mqtt-password", dest="mqtt_password")
    parser.add_argument("--api-url", dest="api_url", metavar="URL",
                        help="ChirpStack REST API, e.g. http://127.0.0.1:8090")
    parser.add_argument("--api-token-file", dest="api_token_file", metavar="PATH")
    parser.add_argument("--dr", type=int, help="EU868 multicast data rate (default 5)")
    parser.add_argument("--frequency", type=int, metavar="HZ", help="default 869525000")
    parser.add_argument("--duty-cycle", dest="duty_cycle", type=float, help="default 0.1")
    parser.add_argument("--loss-estimate", dest="loss_estimate", type=float,
                        help="frame loss the first redundancy is planned for (default 0.1)")
    parser.add_argument("--answer-timeout", dest="answer_timeout", type=float, metavar="S")
    parser.add_argument("--start-margin", dest="start_margin", type=float, metavar="S")
    parser.add_argument("--state-dir", dest="state_dir", metavar="DIR")
    parser.add_argument("--node-limits", dest="node_limits", choices=("stock",),
                        help="the nodes run LoRaMac-node's stock FragDecoder build (at most "
                        "21 fragments of 50 B, 5 lost data fragments recoverable)")
    parser.add_argument("--frag-max-size", dest="frag_max_size", type=int, metavar="B",
                        help="the nodes' FRAG_MAX_SIZE: largest fragment they accept")
    parser.add_argument("--frag-max-nb", dest="frag_max_nb", type=int, metavar="N",
                        help="the nodes' FRAG_MAX_NB: most fragments per session")
    parser.add_argument("--frag-max-redundancy", dest="frag_max_redundancy", type=int,
                        metavar="N", help="the nodes' FRAG_MAX_REDUNDANCY: most lost data "
                        "fragments they can recover")
    parser.add_argument("--ts004-version", dest="ts004_version", type=int, choices=(1, 2),
                        help="skip PackageVersionReq and speak this TS004 version")
    parser.add_argument("--session-cnt", dest="session_cnt", type=int, metavar="N",
                        help="TS004 v2 SessionCnt (default: last + 1 from --state-dir)")
    parser.add_argument("--version", metavar="V", help="version this image carries")
    parser.add_argument("--force", action="store_true",
                        help="send even if the group already has --version")
    parser.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the result as JSON (same as ferry --json)")
    parser.set_defaults(func=run)
