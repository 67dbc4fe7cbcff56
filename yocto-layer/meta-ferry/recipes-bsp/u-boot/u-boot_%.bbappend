# ferry's A/B boot script and the U-Boot options it relies on. Everything here is
# behind the df-ferry override (layer.conf: distrooverrides + DISTRO_FEATURES_OVERRIDES),
# so U-Boot is untouched unless the distro enables ferry (DISTRO_FEATURES += "ferry").
#
# FERRY_BOOT_SCHEME picks the boot script and must match [bootloader] scheme in
# /etc/ferry/ferry.toml:
#   bootchooser - RAUC-style BOOT_ORDER / BOOT_<x>_LEFT counters kept in the env
#   bootcount   - Mender-style upgrade_available / bootcount / bootlimit / altbootcmd
#                 (CONFIG_BOOTCOUNT_LIMIT + CONFIG_BOOTCOUNT_ENV, turned on by ferry.cfg)
# ferry.cfg also turns on the redundant environment, the only power-safe layout.

FILESEXTRAPATHS:prepend:df-ferry := "${THISDIR}/files:"

DEPENDS:append:df-ferry = " u-boot-mkimage-native"

SRC_URI:append:df-ferry = " \
    file://boot-bootchooser.cmd \
    file://boot-bootcount.cmd \
    file://ferry.cfg \
    file://fw_env.config \
"

# Where do_unpack put the file:// entries above. Scarthgap unpacks into WORKDIR and has no
# UNPACKDIR at all (a literal "${UNPACKDIR}" would stay in the shell and become "/..."),
# whinlatter and later unpack into UNPACKDIR; d.getVar() sees whichever this release has.
FERRY_UBOOT_FILES:df-ferry = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}"

# nooelint: oelint.func.specific - df-ferry comes from oe-core's distrooverrides class (layer.conf)
do_compile:append:df-ferry() {
    uboot-mkimage -A ${UBOOT_ARCH} -O linux -T script -C none -n "ferry ${FERRY_BOOT_SCHEME}" \
        -d ${FERRY_UBOOT_FILES}/boot-${FERRY_BOOT_SCHEME}.cmd ${B}/boot.scr
}

# nooelint: oelint.func.specific - df-ferry comes from oe-core's distrooverrides class (layer.conf)
do_deploy:append:df-ferry() {
    install -m 0644 ${B}/boot.scr ${DEPLOYDIR}/boot.scr
    install -m 0644 ${FERRY_UBOOT_FILES}/fw_env.config ${DEPLOYDIR}/fw_env.config.ferry
}
