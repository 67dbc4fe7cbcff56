# nooelint: oelint.bbclass.underscores - named like meta-rauc's sanity-meta-rauc.bbclass
# Warn when meta-ferry is in the layer list but the distro has not enabled ferry.
# The bbappends in this layer only act when DISTRO_FEATURES contains "ferry", so a
# build without it silently gets stock U-Boot and no A/B boot script.

addhandler ferry_check_distro_features
ferry_check_distro_features[eventmask] = "bb.event.SanityCheck"
ferry_check_distro_features[doc] = "Warn when DISTRO_FEATURES lacks ferry"

python ferry_check_distro_features() {
    skip = e.data.getVar('SKIP_META_FERRY_SANITY_CHECK') == "1"
    if skip:
        return
    if not bb.utils.contains('DISTRO_FEATURES', 'ferry', True, False, e.data):
        bb.warn("meta-ferry is included but 'ferry' is not in DISTRO_FEATURES: "
                "add DISTRO_FEATURES:append = \" ferry\" to your distro or local.conf "
                "(or set SKIP_META_FERRY_SANITY_CHECK = \"1\" to silence this)")
}
