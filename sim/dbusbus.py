"""A private dbus-daemon's configuration, for tests, benchmarks and the demo.

The bus is open to every user and every name (so an unprivileged test caller can reach
it); ``include`` adds a policy file on top, e.g. ferry's own
``systemd/org.ferry.Ferry1.conf`` exactly as installed on gateways.
"""

from __future__ import annotations

from pathlib import Path


def private_bus_config(socket_dir: Path, include: Path | None = None) -> str:
    extra = f"\n  <include>{include}</include>" if include is not None else ""
    return f"""<busconfig>
  <listen>unix:path={socket_dir}/bus</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
  </policy>{extra}
</busconfig>
"""
