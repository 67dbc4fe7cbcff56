#!/usr/bin/env bash
# zigbee-herdsman (npm), the OTA code of Zigbee2MQTT 2.14.1, for tests/peers/test_zigbee_herdsman.py:
# ferry's override index and .ota files are read by herdsman's own getOtaIndex/checkOta/
# getOtaFirmware. Installed with --ignore-scripts (no serial-port build; only the OTA helpers
# and the Device model are loaded). Node and npm come from Debian when the machine has none.
# Idempotent: does nothing when the pinned version is already there.
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION=10.9.2  # what zigbee2mqtt 2.14.1 depends on (npm view zigbee2mqtt@2.14.1 dependencies)
DEST=.cache/zigbee-herdsman-$VERSION
if [ -f "$DEST/node_modules/zigbee-herdsman/package.json" ] \
   && grep -q "\"version\": \"$VERSION\"" "$DEST/node_modules/zigbee-herdsman/package.json"; then
  exit 0
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  # not in zigbee.apt: a machine with NodeSource's nodejs (which bundles npm) cannot also
  # install Debian's npm package (nodejs Conflicts: npm), so only when both are absent
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get -q -o DPkg::Lock::Timeout=300 update >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q -o DPkg::Lock::Timeout=300 \
    --no-install-recommends nodejs npm >/dev/null
fi
mkdir -p "$DEST"
npm install --silent --ignore-scripts --no-audit --no-fund --prefix "$DEST" "zigbee-herdsman@$VERSION"
echo "setup: zigbee-herdsman $VERSION in $DEST"
