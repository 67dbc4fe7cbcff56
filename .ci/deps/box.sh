#!/usr/bin/env bash
# Build (or find in /var/cache/ferry) the gateway in a box for tests/system/test_box.py.
# Setup does the slow, network-bound part (mmdebstrap, PyPI wheels, the NOR modules);
# the test fixture calls the same builder again, which only re-assembles the disk when
# ferry's source changed since (tests/system/box/build.py explains the two cache levels).
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/python tests/system/box/build.py >/dev/null
