# nooelint: oelint.bbclass.underscores - the documented user-facing name is `inherit ferry-bundle`
#
# Build a signed ferry bundle (.swu) from an image and firmware files.
#
# In a bundle recipe:
#   inherit ferry-bundle
#   FERRY_BUNDLE_ROOTFS_IMAGE = "core-image-minimal"
#   FERRY_BUNDLE_TARGETS = "smp-serial:sensor-mcu=${DEPLOY_DIR_IMAGE}/sensor-mcu.signed.bin"
#   FERRY_BUNDLE_KEY = "/path/to/signer.key.pem"
#   FERRY_BUNDLE_CERT = "/path/to/signer.cert.pem"
#   # optional: carry a new trust keyring (gateways install it after verifying the bundle
#   # against their current one; the version must be above theirs). See README "Rotating".
#   FERRY_BUNDLE_KEYRING = "/path/to/keyring-2.pem"
#   FERRY_BUNDLE_KEYRING_VERSION = "2"
#
# The bundle is written by `ferry bundle create` from ferry-native, never by a second
# implementation of the format in this class. Output: ${DEPLOY_DIR_IMAGE}/<recipe>-<machine>.swu

FERRY_BUNDLE_VERSION ??= "${DISTRO_VERSION}"
FERRY_BUNDLE_COMPATIBLE ??= "${MACHINE}"
FERRY_BUNDLE_ROOTFS_IMAGE ??= ""
FERRY_BUNDLE_COMPRESS ??= "zstd"
# Space-separated TRANSPORT:NAME=FILE entries for firmware of devices behind the gateway.
FERRY_BUNDLE_TARGETS ??= ""
FERRY_BUNDLE_KEY ??= ""
FERRY_BUNDLE_CERT ??= ""
FERRY_BUNDLE_KEYRING ??= ""
FERRY_BUNDLE_KEYRING_VERSION ??= ""
FERRY_BUNDLE_NAME ??= "${PN}-${MACHINE}"
# The image file to ship; set it yourself for another image type than ext4.
FERRY_BUNDLE_ROOTFS_FILE ??= "${@'${DEPLOY_DIR_IMAGE}/${FERRY_BUNDLE_ROOTFS_IMAGE}-${MACHINE}.rootfs.ext4' if d.getVar('FERRY_BUNDLE_ROOTFS_IMAGE') else ''}"

DEPENDS += "ferry-native"
do_ferry_bundle[depends] += "${@'${FERRY_BUNDLE_ROOTFS_IMAGE}:do_image_complete' if d.getVar('FERRY_BUNDLE_ROOTFS_IMAGE') else ''}"

INHIBIT_DEFAULT_DEPS = "1"
PACKAGES = ""
do_fetch[noexec] = "1"
do_unpack[noexec] = "1"
do_patch[noexec] = "1"
do_configure[noexec] = "1"
do_compile[noexec] = "1"
do_install[noexec] = "1"
deltask do_populate_sysroot

python ferry_bundle_check() {
    for var in ('FERRY_BUNDLE_KEY', 'FERRY_BUNDLE_CERT'):
        if not d.getVar(var):
            bb.fatal("%s is not set: ferry bundles are always signed. For a development "
                     "key pair run 'ferry bundle dev-pki DIR' and point %s at it." % (var, var))
    if bool(d.getVar('FERRY_BUNDLE_KEYRING')) != bool(d.getVar('FERRY_BUNDLE_KEYRING_VERSION')):
        bb.fatal("Set FERRY_BUNDLE_KEYRING and FERRY_BUNDLE_KEYRING_VERSION together")
    if not d.getVar('FERRY_BUNDLE_ROOTFS_IMAGE') and not d.getVar('FERRY_BUNDLE_TARGETS') \
            and not d.getVar('FERRY_BUNDLE_KEYRING'):
        bb.fatal("Set FERRY_BUNDLE_ROOTFS_IMAGE and/or FERRY_BUNDLE_TARGETS: the bundle would be empty")
}

do_ferry_bundle() {
    set -e
    args=""
    if [ -n "${FERRY_BUNDLE_ROOTFS_FILE}" ]; then
        args="$args --rootfs ${FERRY_BUNDLE_ROOTFS_FILE}"
    fi
    for target in ${FERRY_BUNDLE_TARGETS}; do
        args="$args --target $target"
    done
    if [ -n "${FERRY_BUNDLE_KEYRING}" ]; then
        args="$args --keyring ${FERRY_BUNDLE_KEYRING} --keyring-version ${FERRY_BUNDLE_KEYRING_VERSION}"
    fi
    mkdir -p ${B}
    ferry bundle create \
        --key "${FERRY_BUNDLE_KEY}" \
        --cert "${FERRY_BUNDLE_CERT}" \
        --version "${FERRY_BUNDLE_VERSION}" \
        --compatible "${FERRY_BUNDLE_COMPATIBLE}" \
        --compress "${FERRY_BUNDLE_COMPRESS}" \
        $args \
        -o "${B}/${FERRY_BUNDLE_NAME}.swu"
    install -d ${DEPLOY_DIR_IMAGE}
    install -m 0644 "${B}/${FERRY_BUNDLE_NAME}.swu" "${DEPLOY_DIR_IMAGE}/${FERRY_BUNDLE_NAME}.swu"
}
ferry_bundle_check[doc] = "Refuse to build an unsigned or empty bundle"
do_ferry_bundle[prefuncs] += "ferry_bundle_check"
do_ferry_bundle[doc] = "Build the signed ferry bundle with ferry-native's 'ferry bundle create'"
do_ferry_bundle[dirs] = "${B}"
do_ferry_bundle[cleandirs] = "${B}"
addtask ferry_bundle after do_compile before do_build
