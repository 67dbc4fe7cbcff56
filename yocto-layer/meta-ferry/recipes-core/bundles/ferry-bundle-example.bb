# nooelint: oelint.file.underscores - a bundle recipe has no upstream version; the bundle's version is FERRY_BUNDLE_VERSION
SUMMARY = "Example ferry bundle: core-image-minimal plus firmware for one UART MCU"
DESCRIPTION = "Builds ${DEPLOY_DIR_IMAGE}/ferry-bundle-example-${MACHINE}.swu. Copy it to \
               your own layer and set the FERRY_BUNDLE_* variables for your product."
# nooelint: oelint.vars.homepageping - the build hosts that lint this layer have no network
HOMEPAGE = "https://github.com/ferry-ota/ferry"
BUGTRACKER = "https://github.com/ferry-ota/ferry/issues"
SECTION = "admin"
CVE_PRODUCT = "ferry-ota"
LICENSE = "MIT"
# nooelint: oelint.var.licenseremotefile - a bundle recipe has no source of its own
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

# Everything comes from other recipes' deploy output.
SRC_URI = ""

inherit ferry-bundle

FERRY_BUNDLE_ROOTFS_IMAGE = "core-image-minimal"
# Firmware for a device behind the gateway, e.g. an MCUboot image signed with imgtool:
# FERRY_BUNDLE_TARGETS = "smp-serial:sensor-mcu=${DEPLOY_DIR_IMAGE}/sensor-mcu.signed.bin"
FERRY_BUNDLE_KEY ??= "${TOPDIR}/ferry-pki/signer.key"
FERRY_BUNDLE_CERT ??= "${TOPDIR}/ferry-pki/signer.pem"

BBCLASSEXTEND = ""
