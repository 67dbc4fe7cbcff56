# Scarthgap only: its meta-python has no python3-zstandard, which ferry (target) and
# ferry-native (`ferry bundle create`) import. conf/layer.conf adds releases/scarthgap/ to
# BBFILES only when LAYERSERIES_CORENAMES names scarthgap. On whinlatter and later this
# file is never parsed: meta-python's newer zstandard is the only provider there. Being
# parsed next to it would not be enough to lose: bitbake ranks layer priority (6 here,
# 5 for meta-python) before versions (bitbake lib/bb/providers.py, sortPriorities).
SUMMARY = "Python bindings to the Zstandard (zstd) compression library"
DESCRIPTION = "zstandard is a Python binding to the zstd C library; ferry uses it to \
               stream zstd-compressed rootfs images into the inactive slot."
# nooelint: oelint.vars.homepageping - the build hosts that lint this layer have no network
HOMEPAGE = "https://github.com/indygreg/python-zstandard"
BUGTRACKER = "https://github.com/indygreg/python-zstandard/issues"
SECTION = "devel/python"
CVE_PRODUCT = "python-zstandard"
LICENSE = "BSD-3-Clause"
LIC_FILES_CHKSUM = "file://LICENSE;md5=3ae87c50fd64b6f0942823686871e758"

SRC_URI[sha256sum] = "b2d8c62d08e7255f68f7a740bae85b3c9b8e5466baa9cbf7f57f1cde0ac6bc09"

inherit pypi python_setuptools_build_meta

DEPENDS += "python3-cffi-native"

RDEPENDS:${PN} += "python3-cffi"

BBCLASSEXTEND = "native nativesdk"
