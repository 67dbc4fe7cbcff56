# nooelint: oelint.bbclass.underscores - named like the layer's other classes (sanity-meta-ferry)
#
# Inherited globally by meta-ferry's layer.conf.
#
# bbappends in this layer act only through the df-ferry override, which oe-core's
# distrooverrides class sets when DISTRO_FEATURES contains "ferry"; a build that
# includes the layer without enabling ferry is left untouched.
inherit distrooverrides
# nooelint: oelint.vars.mispell.unknown - defined by oe-core's distrooverrides.bbclass, which oelint's list lacks
DISTRO_FEATURES_OVERRIDES += "ferry"

# Which boot script U-Boot gets and which scheme ferry writes to the env:
# "bootchooser" (RAUC-style) or "bootcount" (Mender-style). Used by the u-boot
# bbappend and by ferry-conf; set it in your distro or local.conf.
# nooelint: oelint.vars.mispell.unknown - meta-ferry's own variable, documented in yocto-layer/README.md
FERRY_BOOT_SCHEME ??= "bootchooser"

# The wks files live in files/wic, the only place wrynose accepts (a <layer>/wic folder
# stops the parse there). Scarthgap and whinlatter search <BBPATH entry>/wic and
# canned-wks only, so files/wic goes in front of WKS_SEARCH_PATH for them; wrynose
# searches files/wic itself. A :prepend does not count as a value for
# image_types_wic.bbclass's "WKS_SEARCH_PATH ?=", so the class default still follows it.
# FERRY_LAYERDIR is set by conf/layer.conf.
# nooelint: oelint.vars.specific - df-ferry comes from oe-core's distrooverrides class (above)
WKS_SEARCH_PATH:prepend:df-ferry = "${FERRY_LAYERDIR}/files/wic:"
