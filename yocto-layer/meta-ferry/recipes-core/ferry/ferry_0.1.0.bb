require ferry.inc

# ferry-native runs `ferry bundle create` for ferry-bundle.bbclass, which imports
# packaging/: these are the third-party modules it imports (cryptography, asn1crypto,
# zstandard). tests/unit/test_yocto_layer.py fails when packaging/'s imports and this
# list disagree.
DEPENDS:append:class-native = " \
    python3-asn1crypto-native \
    python3-cryptography-native \
    python3-zstandard-native \
"

# The release pin: a fixed commit of ferry's main branch, and PV in the "<release>+git"
# form oe-core uses for recipes built from a git commit (scarthgap's bitbake.conf sets
# SRCPV = "": PV no longer carries the revision). A fixed SRCREV also keeps every bitbake
# call off the network: "${AUTOREV}" runs git ls-remote while parsing and stops the
# whole build under BB_NO_NETWORK = "1". To follow main on purpose, see
# yocto-layer/README.md ("Following main").
PV = "0.1.0+git"
SRCREV = "d30dfd12cbdd386691ca2069a2ae65c619d9a191"

inherit systemd useradd

# Optional transports: each pulls its Python bindings only when enabled.
PACKAGECONFIG ??= "smp-serial dfu"
PACKAGECONFIG[smp-serial] = ",,,python3-pyserial python3-cbor2"
PACKAGECONFIG[dfu] = ",,,python3-pyusb libusb1"
PACKAGECONFIG[zigbee] = ",,,python3-paho-mqtt"
PACKAGECONFIG[lora] = ",,,python3-paho-mqtt"
# ferry-native only writes bundles: no transport.
PACKAGECONFIG:class-native = ""

USERADD_PACKAGES = "${PN}"
GROUPADD_PARAM:${PN} = "--system ferry"

SYSTEMD_PACKAGES = "${PN}"
SYSTEMD_SERVICE:${PN} = "ferryd.service ferry-health.service ferry-mark-good.service"

do_install:append:class-target() {
    # Units, D-Bus policy, tmpfiles.d and sysusers.d come from the source tree's
    # systemd/ folder so the layer never carries a second copy that drifts.
    install -d ${D}${systemd_system_unitdir}
    for unit in ${SYSTEMD_SERVICE:${PN}}; do
        install -m 0644 ${S}/systemd/$unit ${D}${systemd_system_unitdir}/
    done
    install -d ${D}${datadir}/dbus-1/system.d
    install -m 0644 ${S}/systemd/org.ferry.Ferry1.conf ${D}${datadir}/dbus-1/system.d/
    # D-Bus activation: a `ferry` call starts ferryd (SystemdService=ferryd.service) when
    # it is not running, as on Debian; without it the CLI falls back or fails (the box).
    install -d ${D}${datadir}/dbus-1/system-services
    install -m 0644 ${S}/systemd/org.ferry.Ferry1.service ${D}${datadir}/dbus-1/system-services/
    install -d ${D}${nonarch_libdir}/tmpfiles.d
    install -m 0644 ${S}/systemd/ferry.tmpfiles ${D}${nonarch_libdir}/tmpfiles.d/ferry.conf
    install -d ${D}${nonarch_libdir}/sysusers.d
    install -m 0644 ${S}/systemd/ferry.sysusers ${D}${nonarch_libdir}/sysusers.d/ferry.conf
}

FILES:${PN} += "\
    ${datadir}/dbus-1/system.d \
    ${datadir}/dbus-1/system-services \
    ${nonarch_libdir}/sysusers.d \
    ${nonarch_libdir}/tmpfiles.d \
"

RDEPENDS:${PN}:append:class-target = " \
    libubootenv-bin \
    python3-asn1crypto \
    python3-asyncio \
    python3-compression \
    python3-core \
    python3-crypt \
    python3-cryptography \
    python3-datetime \
    python3-dbus-next \
    python3-json \
    python3-logging \
    python3-requests \
    python3-sqlite3 \
    python3-systemd \
    python3-threading \
    python3-tomllib \
    python3-zstandard \
    virtual-ferry-conf \
"

BBCLASSEXTEND = "native"
