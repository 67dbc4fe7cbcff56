# meta-python has python3-zstandard only from whinlatter on; scarthgap lacks it. This
# recipe fills that gap. Its version is below meta-python's (0.25.0), so where
# meta-python has the recipe, bitbake prefers that one.
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
