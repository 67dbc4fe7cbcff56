"""ferry.sim.zigbee is the far end of the wire: it must not load ferry's own protocol code,
or a shared misunderstanding of the cluster spec would pass its own test."""

from __future__ import annotations

import subprocess
import sys


def test_sim_zigbee_does_not_import_ferry_proxy_or_packaging() -> None:
    code = (
        "import sys\n"
        "import ferry.sim.zigbee.clock, ferry.sim.zigbee.wire, ferry.sim.zigbee.node\n"
        "import ferry.sim.zigbee.network, ferry.sim.zigbee.population\n"
        "import ferry.sim.zigbee.z2m_bridge\n"
        "bad = [m for m in sys.modules if m.startswith(('ferry.proxy', 'ferry.packaging'))]\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
