# nooelint: oelint.file.underscores - named like meta-rauc's rauc-conf.bb: it is product
# configuration with no upstream version of its own
SUMMARY = "ferry gateway configuration, keyring and U-Boot env location"
DESCRIPTION = "Installs /etc/ferry/ferry.toml, /etc/ferry/version, the bundle keyring and \
               /etc/fw_env.config. \
               Meant to be replaced or bbappended per product: set the FERRY_* variables \
               below, or put your own files in a bbappend's FILESEXTRAPATHS."
# nooelint: oelint.vars.homepageping - the build hosts that lint this layer have no network
HOMEPAGE = "https://github.com/ferry-ota/ferry"
BUGTRACKER = "https://github.com/ferry-ota/ferry/issues"
SECTION = "admin"
CVE_PRODUCT = "ferry-ota"
LICENSE = "Apache-2.0"
# nooelint: oelint.var.licenseremotefile - only layer-written config files; no upstream source
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

# subdir=${BP} unpacks the files where bitbake.conf's default S points on every release
# (scarthgap: ${WORKDIR}/${BP}, whinlatter and later: ${UNPACKDIR}/${BP}), so S is not
# set: an S naming WORKDIR is an error from whinlatter on, and scarthgap has no UNPACKDIR.
SRC_URI = "\
    file://example-ca.cert.pem;subdir=${BP} \
    file://ferry.toml;subdir=${BP} \
    file://fw_env.config;subdir=${BP} \
"

# Product settings; override in your distro, machine or local.conf.
FERRY_COMPATIBLE ??= "${MACHINE}"
FERRY_BOOT_SCHEME ??= "bootchooser"
FERRY_ENV_FLAGS ??= "boolean"
FERRY_SLOT_A_DEVICE ??= "/dev/mmcblk0p2"
FERRY_SLOT_B_DEVICE ??= "/dev/mmcblk0p3"
FERRY_ENV_DEVICE ??= "/dev/mmcblk0"
FERRY_ENV_OFFSET ??= "0x400000"
FERRY_ENV_OFFSET_REDUND ??= "0x440000"
FERRY_ENV_SIZE ??= "0x40000"
FERRY_ENV_SECTOR ??= "0x40000"
# The gateway's own version, written to /etc/ferry/version (ferry.toml's version_file):
# what ferry reports to the backend and compares a bundle's version with. The default is
# the one ferry-bundle.bbclass signs into the bundle (FERRY_BUNDLE_VERSION), so the image
# a bundle carries reports the version the bundle was made for.
FERRY_GATEWAY_VERSION ??= "${DISTRO_VERSION}"
# The trust anchors bundles must chain to. The example CA has no private key anywhere,
# so a device that still carries it accepts no bundle at all.
FERRY_KEYRING_FILE ??= "${S}/example-ca.cert.pem"

FILES:${PN} += "\
    ${sysconfdir}/ferry \
    ${sysconfdir}/fw_env.config \
"

RPROVIDES:${PN} += "virtual-ferry-conf"

# ferry.toml may hold backend.target_token and MQTT/ChirpStack credentials: root writes
# it, group ferry (the technicians' ferry --config) reads it, nobody else (docs/security.md).
inherit useradd
USERADD_PACKAGES = "${PN}"
GROUPADD_PARAM:${PN} = "--system ferry"

# Target configuration only: no native or SDK variant.
BBCLASSEXTEND = ""

do_install() {
    install -d ${D}${sysconfdir}/ferry
    sed -e 's|@FERRY_COMPATIBLE@|${FERRY_COMPATIBLE}|' \
        -e 's|@FERRY_BOOT_SCHEME@|${FERRY_BOOT_SCHEME}|' \
        -e 's|@FERRY_ENV_FLAGS@|${FERRY_ENV_FLAGS}|' \
        -e 's|@FERRY_SLOT_A_DEVICE@|${FERRY_SLOT_A_DEVICE}|' \
        -e 's|@FERRY_SLOT_B_DEVICE@|${FERRY_SLOT_B_DEVICE}|' \
        ${S}/ferry.toml > ${D}${sysconfdir}/ferry/ferry.toml
    chgrp ferry ${D}${sysconfdir}/ferry/ferry.toml
    chmod 0640 ${D}${sysconfdir}/ferry/ferry.toml
    install -m 0644 ${FERRY_KEYRING_FILE} ${D}${sysconfdir}/ferry/keyring.pem
    echo "${FERRY_GATEWAY_VERSION}" > ${D}${sysconfdir}/ferry/version
    chmod 0644 ${D}${sysconfdir}/ferry/version
    sed -e 's|@FERRY_ENV_DEVICE@|${FERRY_ENV_DEVICE}|g' \
        -e 's|@FERRY_ENV_OFFSET@|${FERRY_ENV_OFFSET}|' \
        -e 's|@FERRY_ENV_OFFSET_REDUND@|${FERRY_ENV_OFFSET_REDUND}|' \
        -e 's|@FERRY_ENV_SIZE@|${FERRY_ENV_SIZE}|g' \
        -e 's|@FERRY_ENV_SECTOR@|${FERRY_ENV_SECTOR}|g' \
        ${S}/fw_env.config > ${D}${sysconfdir}/fw_env.config
    chmod 0644 ${D}${sysconfdir}/fw_env.config
}

python do_check_keyring() {
    import filecmp
    keyring = d.getVar('FERRY_KEYRING_FILE')
    example = os.path.join(d.getVar('S'), 'example-ca.cert.pem')
    if os.path.exists(keyring) and filecmp.cmp(keyring, example, shallow=False):
        bb.warn("ferry-conf: the example keyring is still in use; gateways built like this "
                "accept no bundle. Set FERRY_KEYRING_FILE to your CA certificate "
                "(make a development one with 'ferry bundle dev-pki DIR').")
}
do_check_keyring[doc] = "Warn when the example keyring would be shipped"
addtask check_keyring after do_install before do_package

CONFFILES:${PN} = "\
    ${sysconfdir}/ferry/ferry.toml \
    ${sysconfdir}/fw_env.config \
"
