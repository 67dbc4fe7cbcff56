#!/usr/bin/env bash
# Unpack Debian's amd64 kernel (modules included) for the DFU QEMU guest test.
# Cached in /var/cache/ferry-dfu/kroot; a second run only checks that it is there.
set -euo pipefail
CACHE=${FERRY_DFU_CACHE:-/var/cache/ferry-dfu}
if [ -e "$CACHE/kroot/.ready" ]; then exit 0; fi
SUDO=""; if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
$SUDO mkdir -p "$CACHE"; $SUDO chown "$(id -u)" "$CACHE"
pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -1)
if [ -z "$pkg" ]; then
  $SUDO apt-get -q -o DPkg::Lock::Timeout=300 update >/dev/null
  pkg=$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -1)
fi
kver=${pkg#linux-image-}
tmp=$(mktemp -d "$CACHE/dl.XXXXXX")
chmod 0755 "$CACHE"
# apt-get download drops to user _apt, which must be able to write the directory.
if id _apt >/dev/null 2>&1; then chown _apt "$tmp"; fi
(cd "$tmp" && apt-get download -q "$pkg" >/dev/null)
rm -rf "$CACHE/kroot"
dpkg -x "$tmp"/*.deb "$CACHE/kroot"
rm -rf "$tmp"
/sbin/depmod -b "$CACHE/kroot" "$kver"
echo "$kver" > "$CACHE/kroot/.ready"
echo "dfu: guest kernel $kver unpacked in $CACHE/kroot"
