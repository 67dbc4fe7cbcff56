#!/usr/bin/env bash
# Build U-Boot qemu_arm64 from Debian's source package with a redundant env and
# BOOTCOUNT_ENV (test-recipes §1.8), cached under /var/cache/ferry/. The system tests
# in tests/system/test_uboot_qemu.py use it; Debian's own build has neither option.
# Idempotent: does nothing when the cached u-boot.bin exists.
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
ver=$(dpkg-query -W -f='${Version}' u-boot-qemu)
cache=${FERRY_UBOOT_CACHE:-/var/cache/ferry}
out="$cache/u-boot-$ver-redund"
if [ -s "$out/u-boot.bin" ]; then
  exit 0
fi
echo "uboot.sh: building U-Boot $ver with redundant env + bootcount into $out"
src_list=/etc/apt/sources.list.d/ferry-deb-src.sources
if [ ! -e "$src_list" ]; then
  $SUDO tee "$src_list" >/dev/null <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  $SUDO apt-get -q -o DPkg::Lock::Timeout=300 update >/dev/null
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
apt-get source -q --download-only "u-boot=$ver" >/dev/null 2>&1 || {
  $SUDO apt-get -q -o DPkg::Lock::Timeout=300 update >/dev/null
  apt-get source -q --download-only "u-boot=$ver" >/dev/null
}
dpkg-source -x u-boot_*.dsc src >/dev/null  # unpacks and applies Debian's patches
cd src
O="$work/build"
mkdir -p "$O"
zcat /usr/share/doc/u-boot-qemu/configs/config.qemu_arm64.gz > "$O/.config"
./scripts/config --file "$O/.config" -e SYS_REDUNDAND_ENVIRONMENT -e BOOTCOUNT_LIMIT -e BOOTCOUNT_ENV
make -s O="$O" CROSS_COMPILE=aarch64-linux-gnu- olddefconfig >/dev/null
./scripts/config --file "$O/.config" --set-val ENV_ADDR_REDUND 0x4040000
make -s O="$O" CROSS_COMPILE=aarch64-linux-gnu- olddefconfig >/dev/null
make -s O="$O" CROSS_COMPILE=aarch64-linux-gnu- -j2 >"$work/build.log" 2>&1 || {
  tail -40 "$work/build.log"; exit 1; }
$SUDO mkdir -p "$out.tmp"
$SUDO cp "$O/u-boot.bin" "$O/.config" "$out.tmp/"
$SUDO rm -rf "$out"
$SUDO mv "$out.tmp" "$out"
echo "uboot.sh: built $out/u-boot.bin"
