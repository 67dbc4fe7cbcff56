require ferry.inc

PV = "0.1.0+git"
# ferry has no tagged release yet, so the recipe follows main. For a reproducible
# product build pin it: SRCREV:pn-ferry = "<commit>" (and :pn-ferry-native) in your distro.
# nooelint: oelint.vars.autorev - no release tag exists yet to pin; see the comment above
SRCREV = "${AUTOREV}"

inherit systemd useradd

# Optional transports: each pulls its Python bindings only when enabled.
PACKAGECONFIG ??= "smp-serial dfu"
PACKAGECONFIG[smp-serial] = ",,,python3-pyserial python3-cbor2"
PACKAGECONFIG[dfu] = ",,,python3-pyusb libusb1"
PACKAGECONFIG[zigbee] = ",,,python3-paho-mqtt"
PACKAGECONFIG[lora] = ",,,python3-paho-mqtt"

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
    install -d ${D}${nonarch_libdir}/tmpfiles.d
    install -m 0644 ${S}/systemd/ferry.tmpfiles ${D}${nonarch_libdir}/tmpfiles.d/ferry.conf
    install -d ${D}${nonarch_libdir}/sysusers.d
    install -m 0644 ${S}/systemd/ferry.sysusers ${D}${nonarch_libdir}/sysusers.d/ferry.conf
}

FILES:${PN} += "\
    ${datadir}/dbus-1/system.d \
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

# ferry-native provides `ferry bundle create` for ferry-bundle.bbclass.
BBCLASSEXTEND = "native"
