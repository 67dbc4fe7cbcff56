#!/usr/bin/env bash
# Zigbee2MQTT's OTA code from npm, for tests/peers/test_zigbee_herdsman.py, which runs it in Node
# on the override index and .ota files ferry writes:
#   zigbee-herdsman 10.9.2             - what zigbee2mqtt 2.14.1 depends on (helpers/ota, Device)
#   zigbee-herdsman-converters 23.20.1 - what zigbee2mqtt 2.2.1 depends on (lib/ota)
# (npm view zigbee2mqtt@<version> dependencies). Installed with --ignore-scripts: no serial-port
# build, only the OTA modules are loaded. Node and npm come from Debian when the machine has none.
# Idempotent: does nothing when the pinned versions are already there.
set -euo pipefail
cd "$(dirname "$0")/../.."

have() {  # have NAME VERSION
  local pkg=".cache/$1-$2/node_modules/$1/package.json"
  [ -f "$pkg" ] && grep -q "\"version\": \"$2\"" "$pkg"
}

if have zigbee-herdsman 10.9.2 && have zigbee-herdsman-converters 23.20.1; then
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
for spec in zigbee-herdsman@10.9.2 zigbee-herdsman-converters@23.20.1; do
  name=${spec%@*} version=${spec#*@}
  have "$name" "$version" && continue
  mkdir -p ".cache/$name-$version"
  npm install --silent --ignore-scripts --no-audit --no-fund --prefix ".cache/$name-$version" "$spec"
  echo "setup: $spec in .cache/$name-$version"
done
