"""meta-ferry: lint-clean recipes, runtime dependencies that exist, a bundle class whose
shell step produces a bundle that `ferry bundle verify` accepts, and the rules of each
release the layer claims (scarthgap, whinlatter, wrynose), checked twice: statically on
the layer's text, and by BitBake itself parsing the layer on a stand-in of each release.

openembedded-core cannot be fetched where these tests run, so the stand-in carries only
the rules of each release the layer depends on, each with the oe-core source it comes
from (issue #23 lists what a real build of the old layer broke on).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYER = ROOT / "yocto-layer" / "meta-ferry"
VENV_BIN = ROOT / ".venv" / "bin"

# Package names a recipe in meta-ferry may RDEPEND on, with where each comes from.
# Sources (checked 2026-11): openembedded-core master
#   meta/recipes-devtools/python/python3/python3-manifest.json ("modules" rdepends: the
#   python3-<name> split packages), meta/recipes-devtools/python/python3-{cryptography,
#   requests,asn1crypto,cffi}*.bb, meta/recipes-bsp/u-boot/libubootenv_*.bb
#   (libubootenv-bin), meta/recipes-support/libusb/libusb1_*.bb;
#   meta-openembedded master meta-python/recipes-devtools/python/python3-{dbus-next,
#   pyserial,pyusb,systemd,paho-mqtt,cbor2,zstandard}*.bb (zstandard only from
#   whinlatter on: scarthgap gets it from this layer).
PYTHON3_MANIFEST = [
    "asyncio", "audio", "codecs", "compile", "compression", "core", "crypt", "ctypes",
    "curses", "datetime", "db", "debugger", "difflib", "doctest", "email", "ensurepip",
    "fcntl", "html", "idle", "image", "io", "json", "logging", "mailbox", "math", "mime",
    "mmap", "multiprocessing", "netclient", "netserver", "numbers", "pickle", "pkgutil",
    "plistlib", "pprint", "profile", "pydoc", "resource", "shell", "sqlite3", "statistics",
    "stringold", "syslog", "terminal", "threading", "tkinter", "tomllib", "unittest",
    "unixadmin", "venv", "xml", "xmlrpc", "zoneinfo",
]
OE_CORE = {f"python3-{m}" for m in PYTHON3_MANIFEST} | {
    "python3-cryptography", "python3-requests", "python3-asn1crypto", "python3-cffi",
    "libubootenv-bin", "libusb1",
}
META_PYTHON = {
    "python3-dbus-next", "python3-pyserial", "python3-pyusb", "python3-systemd",
    "python3-paho-mqtt", "python3-cbor2", "python3-zstandard",
}


def _layer_recipes() -> list[Path]:
    """Every recipe, including the ones conf/layer.conf adds for some releases only."""
    return [*sorted(LAYER.glob("recipes-*/*/*.bb")),
            *sorted(LAYER.glob("releases/*/recipes-*/*/*.bb"))]


def _layer_provides() -> set[str]:
    names = set()
    for bb in _layer_recipes():
        names.add(bb.name.split("_")[0].removesuffix(".bb"))
        for m in re.finditer(r'^RPROVIDES:\$\{PN\}\s*\+?=\s*"([^"]*)"', bb.read_text(), re.M):
            names.update(m.group(1).split())
    return names


def _lint_files() -> list[Path]:
    files = [LAYER / "conf" / "layer.conf"]
    for pattern in ("recipes-*/*/*.bb", "recipes-*/*/*.bbappend", "classes-*/*.bbclass",
                    "releases/*/recipes-*/*/*.bb"):
        files += sorted(LAYER.glob(pattern))
    return files


def _oelint() -> str:
    path = shutil.which("oelint-adv") or str(VENV_BIN / "oelint-adv")
    if not Path(path).exists():
        pytest.fail("oelint-adv missing: run 'bash .ci/setup' (.ci/deps/yocto.pip)")
    return path


@pytest.mark.parametrize("path", _lint_files(), ids=lambda p: str(p.relative_to(LAYER)))
def test_oelint_adv_default_rules_pass(path: Path) -> None:
    proc = subprocess.run([_oelint(), "--quiet", "--jobs", "1", str(path)],
                          capture_output=True, text=True, cwd=LAYER)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_suppression_has_a_reason() -> None:
    for path in _lint_files():
        for line in path.read_text().splitlines():
            if "nooelint:" in line:
                assert re.search(r"nooelint:\s*\S+\s+-\s+\w+.{10,}", line), (
                    f"{path.name}: suppression without a written reason: {line}")


def _var_values(text: str, var_regex: str) -> list[str]:
    values = []
    for m in re.finditer(var_regex + r'\s*[+?:.]*=\s*"((?:[^"\\]|\\.)*)"', text, re.M | re.S):
        values += m.group(1).replace("\\\n", " ").split()
    return values


def test_rdepends_names_exist() -> None:
    known = OE_CORE | META_PYTHON | _layer_provides()
    seen = []
    for bb in _layer_recipes() + sorted(LAYER.glob("recipes-*/*/*.inc")):
        text = bb.read_text()
        names = _var_values(text, r"^RDEPENDS:\$\{PN\}(?::[\w-]+)*")
        for m in re.finditer(r'^PACKAGECONFIG\[[\w-]+\]\s*=\s*"([^"]*)"', text, re.M):
            fields = m.group(1).split(",")
            if len(fields) > 3:
                names += fields[3].split()
        for name in names:
            if name.startswith("${") or name.startswith("$"):
                continue
            seen.append(name)
            assert name in known, f"{bb.name}: RDEPENDS on unknown package {name!r}"
    # the daemon's hard runtime dependencies are all declared
    for must in ("python3-dbus-next", "python3-cryptography", "python3-requests",
                 "python3-systemd", "python3-asn1crypto", "python3-zstandard",
                 "python3-pyserial", "python3-pyusb"):
        assert must in seen, f"ferry's recipe does not RDEPEND on {must}"


def test_recipe_rdepends_cover_pyproject_dependencies() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    text = (LAYER / "recipes-core" / "ferry" / "ferry_0.1.0.bb").read_text()
    for dep in deps:
        name = re.split(r"[<>=!~\[ ;]", dep, maxsplit=1)[0].lower()
        oe_name = {"pyserial": "python3-pyserial", "pyusb": "python3-pyusb",
                   "dbus-next": "python3-dbus-next"}.get(name, f"python3-{name}")
        assert oe_name in text, f"pyproject needs {dep} but the recipe lacks {oe_name}"


def test_layer_conf_compat_and_depends() -> None:
    text = (LAYER / "conf" / "layer.conf").read_text()
    assert re.search(r'LAYERDEPENDS_ferry = "core openembedded-layer meta-python"', text)
    compat = re.search(r'LAYERSERIES_COMPAT_ferry = "([^"]*)"', text)
    assert compat and "scarthgap" in compat.group(1).split()


def test_conf_recipe_provides_virtual_and_example_config_loads() -> None:
    text = (LAYER / "recipes-core" / "ferry" / "ferry-conf.bb").read_text()
    assert 'RPROVIDES:${PN} += "virtual-ferry-conf"' in text
    assert "example keyring is still in use" in text
    from ferry.daemon.config import load_config

    toml = (LAYER / "recipes-core" / "ferry" / "files" / "ferry.toml").read_text()
    for key, value in {"@FERRY_COMPATIBLE@": "acme-gw", "@FERRY_BOOT_SCHEME@": "bootchooser",
                       "@FERRY_ENV_FLAGS@": "boolean", "@FERRY_SLOT_A_DEVICE@": "/dev/sda2",
                       "@FERRY_SLOT_B_DEVICE@": "/dev/sda3"}.items():
        toml = toml.replace(key, value)
    path = ROOT / ".venv" / "ferry-conf-test.toml"
    path.write_text(toml)
    try:
        config = load_config(path)
    finally:
        path.unlink()
    assert config.gateway.compatible == "acme-gw"
    assert [s.bootname for s in config.slots] == ["A", "B"]


def _shell_function(text: str, name: str) -> str:
    m = re.search(rf"^{name}\(\)\s*\{{\n(.*?)\n\}}", text, re.M | re.S)
    assert m, f"{name} not found"
    return m.group(1)


def _expand(body: str, variables: dict[str, str]) -> str:
    """Bitbake's ${VAR} expansion for the plain variables the task uses."""
    def repl(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in variables:
            raise AssertionError(f"the task uses ${{{name}}}, which the test does not set")
        return variables[name]
    return re.sub(r"\$\{([A-Z_][A-Z0-9_]*)\}", repl, body)


def test_bundle_class_step_builds_a_verifiable_bundle(tmp_path: Path) -> None:
    ferry = VENV_BIN / "ferry"
    pki = tmp_path / "pki"
    subprocess.run([ferry, "bundle", "dev-pki", str(pki)], check=True, capture_output=True)
    key, cert, ca = pki / "signer.key", pki / "signer.pem", pki / "ca.pem"
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    rootfs = deploy / "core-image-minimal-qemuarm64.rootfs.ext4"
    rootfs.write_bytes(b"\x53\xef" * 300_000)
    mcu = deploy / "sensor-mcu.bin"
    mcu.write_bytes(bytes(range(256)) * 64)

    body = _shell_function((LAYER / "classes-recipe" / "ferry-bundle.bbclass").read_text(),
                           "do_ferry_bundle")
    script = _expand(body, {
        "FERRY_BUNDLE_ROOTFS_FILE": str(rootfs),
        "FERRY_BUNDLE_TARGETS": f"smp-serial:sensor-mcu={mcu}",
        "FERRY_BUNDLE_KEY": str(key), "FERRY_BUNDLE_CERT": str(cert),
        "FERRY_BUNDLE_KEYRING": "", "FERRY_BUNDLE_KEYRING_VERSION": "",
        "FERRY_BUNDLE_VERSION": "2.0.0", "FERRY_BUNDLE_COMPATIBLE": "qemuarm64",
        "FERRY_BUNDLE_COMPRESS": "zstd", "FERRY_BUNDLE_NAME": "ferry-bundle-example-qemuarm64",
        "B": str(tmp_path / "build"), "DEPLOY_DIR_IMAGE": str(deploy),
    })
    env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin"}
    subprocess.run(["bash", "-c", script], check=True, env=env, cwd=tmp_path)
    bundle = deploy / "ferry-bundle-example-qemuarm64.swu"
    assert bundle.stat().st_size > 0
    verify = subprocess.run([ferry, "bundle", "verify", "--keyring", str(ca), str(bundle)],
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    inspect = subprocess.run([ferry, "--json", "bundle", "inspect", str(bundle)],
                             capture_output=True, text=True, check=True).stdout
    assert "2.0.0" in inspect and "qemuarm64" in inspect and "sensor-mcu" in inspect


# --- Release rules, checked on the layer's text (issue #23) -----------------------------

RELEASES = ("scarthgap", "whinlatter", "wrynose")
FERRY_BB = LAYER / "recipes-core" / "ferry" / "ferry_0.1.0.bb"
README = ROOT / "yocto-layer" / "README.md"


def _layer_texts() -> dict[Path, str]:
    """Every metadata file of the layer with its comment lines blanked: a comment that
    mentions ${AUTOREV} or ${UNPACKDIR} is documentation, not an assignment."""
    files = [LAYER / "conf" / "layer.conf", *sorted(LAYER.glob("**/*.bb")),
             *sorted(LAYER.glob("**/*.bbappend")), *sorted(LAYER.glob("**/*.bbclass")),
             *sorted(LAYER.glob("**/*.inc"))]
    return {f: "\n".join("" if line.lstrip().startswith("#") else line
                         for line in f.read_text().splitlines()) for f in files}


def _assignment(text: str, var: str) -> str:
    m = re.search(rf'^{var}\s*\??=\s*"([^"]*)"', text, re.M)
    assert m, f"{var} is not set"
    return m.group(1)


def test_srcrev_is_a_pinned_commit_of_this_repository() -> None:
    # scarthgap meta/conf/bitbake.conf: AUTOREV = "${@bb.fetch2.get_autorev(d)}"; with it,
    # every parse runs git ls-remote, and BB_NO_NETWORK = "1" stops the whole build
    # (bitbake lib/bb/fetch2/__init__.py check_network_access, raised from git.py _lsremote).
    for path, text in _layer_texts().items():
        assert "AUTOREV" not in text, f"{path.name}: uses AUTOREV; pin a commit instead"
    text = FERRY_BB.read_text()
    srcrev = _assignment(text, "SRCREV")
    assert re.fullmatch(r"[0-9a-f]{40}", srcrev), f"SRCREV {srcrev!r} is not a commit hash"
    kind = subprocess.run(["git", "cat-file", "-t", srcrev], cwd=ROOT, capture_output=True,
                          text=True)
    assert kind.stdout.strip() == "commit", f"SRCREV {srcrev} is no commit of this repository"
    assert _assignment(text, "PV") == "0.1.0+git"
    assert srcrev in README.read_text(), "yocto-layer/README.md does not name the pin"


def test_no_unpackdir_default_and_no_source_dir_under_workdir() -> None:
    # bitbake.conf from whinlatter on: UNPACKDIR ??= "${WORKDIR}/sources"; a second ??= in
    # a recipe wins (the last weak default is the one used), and insane.bbclass then stops
    # on "Using UNPACKDIR = ${WORKDIR} is not supported" / "Using S = ${WORKDIR} is no longer
    # supported"; S naming WORKDIR, or S = ${UNPACKDIR}/git, is an error there too (Yocto
    # 5.3 migration notes, "WORKDIR changes").
    for path, text in _layer_texts().items():
        assert not re.search(r"^UNPACKDIR\s*[?:+.]*=", text, re.M), f"{path.name} sets UNPACKDIR"
        for m in re.finditer(r'^S\s*[?:+.]*=\s*"([^"]*)"', text, re.M):
            value = m.group(1)
            assert "WORKDIR" not in value, f"{path.name}: S = {value!r} names WORKDIR"
            assert not value.endswith("/git"), f"{path.name}: S = {value!r}; git unpacks to ${{BP}}"


def test_unpackdir_is_only_read_with_a_fallback() -> None:
    # Scarthgap has no UNPACKDIR (its bitbake.conf sets S = "${WORKDIR}/${BP}" and
    # base.bbclass unpacks into WORKDIR), so a literal ${UNPACKDIR} in a task stays in the
    # shell as an empty variable: "-d ${UNPACKDIR}/boot.cmd" becomes "-d /boot.cmd".
    for path, text in _layer_texts().items():
        assert "${UNPACKDIR}" not in text, f"{path.name}: ${{UNPACKDIR}} without a fallback"
    append = (LAYER / "recipes-bsp" / "u-boot" / "u-boot_%.bbappend").read_text()
    assert re.search(r"""^FERRY_UBOOT_FILES:df-ferry = "\$\{@d\.getVar\('UNPACKDIR'\) or """
                     r"""d\.getVar\('WORKDIR'\)\}"$""", append, re.M)
    for task in ("do_compile:append:df-ferry", "do_deploy:append:df-ferry"):
        assert "${FERRY_UBOOT_FILES}/" in _shell_function(append, re.escape(task))


# Python import name -> OE recipe, where they differ by more than the python3- prefix.
OE_RECIPE_OF_IMPORT: dict[str, str] = {}


def _third_party_imports(paths: list[Path]) -> set[str]:
    import ast
    import sys

    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("ferry",)}


def test_native_depends_match_what_bundle_create_imports() -> None:
    # ferry-bundle.bbclass runs ferry-native's `ferry bundle create`: the CLI command
    # (daemon/cli/bundle.py) and packaging/. What they import from outside the standard
    # library must be in ferry-native's sysroot, and nothing else is asked for there.
    sources = [*sorted((ROOT / "packaging").glob("*.py")), ROOT / "daemon" / "cli" / "bundle.py"]
    imports = _third_party_imports(sources)
    assert {"cryptography", "asn1crypto", "zstandard"} <= imports, imports
    wanted = {OE_RECIPE_OF_IMPORT.get(n, f"python3-{n}") + "-native" for n in imports}
    declared = set(_var_values(FERRY_BB.read_text(), r"^DEPENDS:append:class-native"))
    assert declared == wanted, (f"ferry-native DEPENDS {sorted(declared)} but packaging/ "
                                f"imports need {sorted(wanted)}")
    known = OE_CORE | META_PYTHON | _layer_provides()
    for dep in declared:
        assert dep.removesuffix("-native") in known, f"nothing provides {dep}"


def _readme_wks_file(release: str) -> str:
    """The WKS_FILE the README tells users of `release` to set."""
    m = re.search(rf'^WKS_FILE = "([^"]+)"\s+# {release}\b', README.read_text(), re.M)
    assert m, f"README gives no WKS_FILE for {release}"
    return m.group(1)


# Where each release's image_types_wic.bbclass looks for WKS_FILE (WKS_SEARCH_PATH), and
# the name of wic's boot-partition plugin there. Scarthgap and whinlatter: the recipe's
# folder, <every BBPATH entry>/wic and scripts/lib/wic/canned-wks; plugin file
# scripts/lib/wic/plugins/source/bootimg-partition.py on scarthgap, renamed
# bootimg_partition.py on whinlatter (Yocto 5.3 migration notes, "Wic plugins containing
# dashes should be renamed"). Wrynose: <every BBPATH entry>/files/wic, and its sanity
# check refuses <layer>/wic and <layer>/scripts/lib/wic/canned-wks (Yocto 6.0 migration
# notes, "WIC files to be moved under files/wic").
WKS_DIRS = {"scarthgap": ("wic", "scripts/lib/wic/canned-wks"),
            "whinlatter": ("wic", "scripts/lib/wic/canned-wks"),
            "wrynose": ("files/wic",)}
BOOT_PLUGIN = {"scarthgap": "bootimg-partition", "whinlatter": "bootimg_partition",
               "wrynose": "bootimg_partition"}


def _layer_wks_prepend() -> list[str]:
    """The layer's own folders ferry-global.bbclass puts in front of WKS_SEARCH_PATH."""
    text = (LAYER / "classes-global" / "ferry-global.bbclass").read_text()
    found = re.findall(r'^WKS_SEARCH_PATH:prepend:df-ferry = "\$\{FERRY_LAYERDIR\}/([^":]+):"',
                       text, re.M)
    if found:
        assert re.search(r'^FERRY_LAYERDIR = "\$\{LAYERDIR\}"',
                         (LAYER / "conf" / "layer.conf").read_text(), re.M)
    return found


@pytest.mark.parametrize("release", RELEASES)
def test_wks_file_is_found_and_uses_the_release_plugin_name(release: str) -> None:
    search = [LAYER / d for d in [*_layer_wks_prepend(), *WKS_DIRS[release]]]
    name = _readme_wks_file(release)
    found = next((p / name for p in search if (p / name).is_file()), None)
    assert found, f"{release}: {name} is not in {[str(p) for p in search]}"
    sources = re.findall(r"--source\s+(\S+)", found.read_text())
    assert BOOT_PLUGIN[release] in sources, f"{found.name} on {release}: {sources}"
    assert not {"bootimg-partition", "bootimg_partition"} - {BOOT_PLUGIN[release]} & set(sources)
    if release == "wrynose":
        for refused in ("wic", "scripts/lib/wic/canned-wks"):
            assert not (LAYER / refused).exists(), f"wrynose refuses {refused}/ in a layer"


def test_the_two_wks_files_differ_only_in_the_plugin_name() -> None:
    def parts(name: str) -> list[str]:
        text = (LAYER / "files" / "wic" / name).read_text()
        return [line.replace("bootimg-partition", "bootimg_partition")
                for line in text.splitlines() if line and not line.startswith("#")]

    assert parts("ferry-ab.wks") == parts("ferry-ab-scarthgap.wks")
    assert any("--source bootimg_partition" in line for line in parts("ferry-ab.wks"))


def test_zstandard_recipe_is_only_parsed_on_scarthgap() -> None:
    # providers.py (sortPriorities, findBestProvider): bitbake keeps only the recipes of the
    # highest layer priority before it compares versions, so a layer at priority 6 shadows
    # meta-python's (5) newer python3-zstandard wherever both are parsed.
    text = (LAYER / "conf" / "layer.conf").read_text()
    unconditional = re.findall(r"\$\{LAYERDIR\}/(recipes-[^\s\"\\]+)", text)
    for pattern in unconditional:
        assert not [p for p in LAYER.glob(pattern) if "zstandard" in p.name]
    recipes = [p for p in _layer_recipes() if p.name.startswith("python3-zstandard_")]
    assert recipes and all(p.relative_to(LAYER).parts[:2] == ("releases", "scarthgap")
                           for p in recipes), recipes
    assert "if s in ('scarthgap',)" in text


def test_readme_documents_the_pin_boot_files_and_each_release() -> None:
    text = README.read_text()
    compat = re.search(r'LAYERSERIES_COMPAT_ferry = "([^"]*)"',
                       (LAYER / "conf" / "layer.conf").read_text())
    assert compat
    for release in compat.group(1).split():
        assert f"### {release}" in text, f"README has no notes for {release}"
    assert re.search(r'IMAGE_BOOT_FILES:append = "[^"]*\bboot\.scr\b', text)
    assert 'SRCREV:pn-ferry = "${AUTOREV}"' in text  # how to follow main on purpose
    assert "BB_NO_NETWORK" in text


# --- BitBake's own parser on a stand-in of each release ---------------------------------
#
# The `bb` library is BitBake 2.19 from PyPI's bitbake-setup (.ci/deps/yocto.pip). It
# parses the real layer: conf/layer.conf (BBFILES with its inline python, LAYERDIR),
# the global classes, every recipe with its bbappends and BBCLASSEXTEND variants, and its
# fetcher unpacks. The stand-in oe-core below is written for these tests, not copied:
# it has only what the layer's recipes need, and for each release the rules they depend
# on, with where they come from.

STANDIN_COMMON = """
TMPDIR = "${TOPDIR}/tmp"
DL_DIR = "${TOPDIR}/downloads"
BB_NO_NETWORK = "1"
PN = "${@bb.parse.vars_from_file(d.getVar('FILE', False), d)[0] or 'defaultpkgname'}"
PV = "${@bb.parse.vars_from_file(d.getVar('FILE', False), d)[1] or '1.0'}"
BPN = "${@d.getVar('PN').removesuffix('-native')}"
BP = "${BPN}-${PV}"
WORKDIR = "${TMPDIR}/work/${PN}/${PV}"
D = "${WORKDIR}/image"
B = "${S}"
DEPLOYDIR = "${WORKDIR}/deploy-${PN}"
DEPLOY_DIR_IMAGE = "${TMPDIR}/deploy/images/${MACHINE}"
MACHINE = "qemuarm64"
UBOOT_ARCH = "arm64"
DISTRO_FEATURES = "systemd usrmerge ferry"
CLASSOVERRIDE ?= "class-target"
DISTROOVERRIDES ?= ""
OVERRIDES = "${CLASSOVERRIDE}:${DISTROOVERRIDES}:pn-${PN}"
THISDIR = "${@os.path.dirname(d.getVar('FILE'))}"
FILE_DIRNAME = "${@os.path.dirname(d.getVar('FILE'))}"
FILESEXTRAPATHS ?= "__default:"
# FILESEXTRAPATHS ends in oe-core's "__default:" marker, dropped here
EXTRAPATHS = "${@':'.join(p for p in d.getVar('FILESEXTRAPATHS').split(':')[:-2] if p)}"
FILESPATH = "${EXTRAPATHS}:${FILE_DIRNAME}/${BPN}:${FILE_DIRNAME}/files"
SRCREV ??= "INVALID"
AUTOREV = "${@bb.fetch2.get_autorev(d)}"
DEPENDS = ""
SRC_URI = ""
sysconfdir = "/etc"
datadir = "/usr/share"
nonarch_libdir = "/usr/lib"
systemd_system_unitdir = "/usr/lib/systemd/system"
DISTRO_VERSION = "1.0"
COMMON_LICENSE_DIR = "${TOPDIR}/licenses"
"""

STANDIN_RELEASE = {
    # scarthgap meta/conf/bitbake.conf: S = "${WORKDIR}/${BP}", SRCPV = "", no UNPACKDIR;
    # base.bbclass base_do_unpack: fetcher.unpack(d.getVar('WORKDIR')); bitbake 2.8
    # fetch2/git.py unpack(): destsuffix defaults to "git/".
    "scarthgap": 'S = "${WORKDIR}/${BP}"\nSRCPV = ""\n',
    # whinlatter and wrynose bitbake.conf: UNPACKDIR ??= "${WORKDIR}/sources",
    # S = "${UNPACKDIR}/${BP}", BB_GIT_DEFAULT_DESTSUFFIX = "${BP}" (Yocto 5.3 migration
    # notes, "WORKDIR changes"); base.bbclass unpacks into UNPACKDIR.
    "whinlatter": ('UNPACKDIR ??= "${WORKDIR}/sources"\nS = "${UNPACKDIR}/${BP}"\n'
                   'BB_GIT_DEFAULT_DESTSUFFIX = "${BP}"\n'),
    "wrynose": ('UNPACKDIR ??= "${WORKDIR}/sources"\nS = "${UNPACKDIR}/${BP}"\n'
                'BB_GIT_DEFAULT_DESTSUFFIX = "${BP}"\n'),
}

# image_types_wic.bbclass's search path: see WKS_DIRS above.
STANDIN_WKS_SEARCH = {
    release: "WKS_SEARCH_PATH ?= \"${THISDIR}:${@':'.join('%s/%s' % (p, sub) for p in "
             "d.getVar('BBPATH').split(':') for sub in " + repr(dirs) + ")}\"\n"
    for release, dirs in WKS_DIRS.items()
}

STANDIN_FILES = {
    "classes-global/base.bbclass": "",
    # oe-core's distrooverrides: df-<feature> for each DISTRO_FEATURES_OVERRIDES feature on.
    "classes/distrooverrides.bbclass": (
        'DISTRO_FEATURES_OVERRIDES ?= ""\n'
        "DISTROOVERRIDES .= \"${@''.join(':df-' + f for f in "
        "d.getVar('DISTRO_FEATURES_OVERRIDES').split() "
        "if f in d.getVar('DISTRO_FEATURES').split())}\"\n"),
    "classes-recipe/native.bbclass": 'CLASSOVERRIDE = "class-native"\n',
    "classes-recipe/nativesdk.bbclass": 'CLASSOVERRIDE = "class-nativesdk"\n',
    "classes-recipe/deploy.bbclass": "addtask deploy after do_compile\n",
    "classes-recipe/python_setuptools_build_meta.bbclass": "",
    "classes-recipe/systemd.bbclass": "",
    "classes-recipe/useradd.bbclass": "",
    "classes-recipe/pypi.bbclass": "",
    "classes-recipe/image_types_wic.bbclass": (
        'WKS_FULL_PATH = "${@bb.utils.which(d.getVar(\'WKS_SEARCH_PATH\'), '
        'd.getVar(\'WKS_FILE\'))}"\n'),
    "recipes-bsp/u-boot/u-boot_2024.01.bb": (
        'LICENSE = "GPL-2.0-or-later"\n'
        'SRC_URI = "git://source.denx.de/u-boot/u-boot.git;protocol=https;branch=master"\n'
        'SRCREV = "866ca972d6c3cabeaf6dbac431e8e08bb30b3c8e"\n'
        "inherit deploy\n"
        "do_compile() {\n    oe_runmake\n}\n"
        "do_deploy() {\n    install -d ${DEPLOYDIR}\n}\n"),
    "recipes-core/images/gateway-image.bb": 'LICENSE = "MIT"\ninherit image_types_wic\n',
}


def _bitbake() -> Any:
    """BitBake's library; its hash-equivalence client (hashserv, not shipped with
    bitbake-setup) is only imported, never used by parsing."""
    import sys
    import types

    if "hashserv" not in sys.modules:
        hashserv = types.ModuleType("hashserv")
        hashserv.__path__ = []
        client = types.ModuleType("hashserv.client")
        hashserv.client = client  # type: ignore[attr-defined]
        sys.modules["hashserv"] = hashserv
        sys.modules["hashserv.client"] = client
    try:
        import bb
        import bb.data
        import bb.fetch2
        import bb.parse
        import bb.parse.parse_py  # registers the .bb/.conf handlers
        import bb.siggen
    except ImportError:
        pytest.fail("BitBake's bb library missing: run 'bash .ci/setup' (.ci/deps/yocto.pip)")
    return bb


class _World:
    """oe-core stand-in + meta-ferry, configured like cooker does (layer.conf of each
    layer with LAYERDIR expanded, bitbake.conf, INHERIT), ready to parse recipes."""

    def __init__(self, tmp: Path, release: str) -> None:
        self.bb = bb = _bitbake()
        self.tmp = tmp
        core = tmp / "core"
        for rel, text in STANDIN_FILES.items():
            (core / rel).parent.mkdir(parents=True, exist_ok=True)
            (core / rel).write_text(text)
        (core / "conf").mkdir(exist_ok=True)
        (core / "conf" / "layer.conf").write_text(
            'BBPATH .= ":${LAYERDIR}"\nBBFILES += "${LAYERDIR}/recipes-*/*/*.bb"\n'
            f'BBFILE_COLLECTIONS += "core"\nLAYERSERIES_CORENAMES = "{release}"\n')
        (core / "conf" / "bitbake.conf").write_text(
            STANDIN_COMMON + STANDIN_RELEASE[release] + STANDIN_WKS_SEARCH[release])
        d = bb.data.init()
        bb.parse.siggen = bb.siggen.init(d)
        for var, value in (("TOPDIR", str(tmp)), ("HOME", str(tmp)),
                           ("PATH", "/usr/bin:/bin"), ("__bbclasstype", "global")):
            d.setVar(var, value)
        for layer in (core, LAYER):
            d.setVar("LAYERDIR", str(layer))
            d = bb.parse.handle(str(layer / "conf" / "layer.conf"), d, True, baseconfig=True)
            d.expandVarref("LAYERDIR")
            d.delVar("LAYERDIR")
        d = bb.parse.handle("conf/bitbake.conf", d, True, baseconfig=True)
        for cls in ["base", *(d.getVar("INHERIT") or "").split()]:
            bb.parse.BBHandler.inherit(cls, "configuration INHERITs", 0, d)
        d.setVar("__bbclasstype", "recipe")
        self.d = d

    def files(self) -> list[Path]:
        import glob

        return sorted(Path(f) for pattern in self.d.getVar("BBFILES").split()
                      for f in glob.glob(pattern))

    def parse(self, recipe: str) -> dict[str, Any]:
        """All variants of the recipe named `recipe`, its bbappends applied."""
        import fnmatch

        files = self.files()
        (fn,) = [f for f in files if f.suffix == ".bb" and f.name.split("_")[0] in
                 (recipe, recipe + ".bb")]
        appends = [str(a) for a in files if a.suffix == ".bbappend" and
                   fnmatch.fnmatch(fn.stem, a.stem.replace("%", "*"))]
        d = self.bb.data.createCopy(self.d)
        if appends:
            d.setVar("__BBAPPEND", " ".join(appends))
        return dict(self.bb.parse.handle(str(fn), d, 0))

    def unpack(self, d: Any, uris: list[str]) -> None:
        """do_fetch + do_unpack as the release's base.bbclass runs them."""
        root = d.getVar("UNPACKDIR") or d.getVar("WORKDIR")
        Path(root).mkdir(parents=True, exist_ok=True)
        fetcher = self.bb.fetch2.Fetch(uris, d)
        fetcher.download()
        fetcher.unpack(root)


def _insane_checks(d: Any, release: str) -> None:
    """What insane.bbclass / do_unpack refuse from whinlatter on (Yocto 5.3 migration
    notes, "WORKDIR changes"); scarthgap accepts all of these."""
    if release == "scarthgap":
        return
    workdir = d.getVar("WORKDIR")
    assert d.getVar("S") != workdir, "S = ${WORKDIR}"
    assert d.getVar("B") != workdir, "B = ${WORKDIR}"
    assert d.getVar("UNPACKDIR") != workdir, "UNPACKDIR = ${WORKDIR}"
    assert "WORKDIR" not in d.getVar("S", False), f"S = {d.getVar('S', False)}"


@pytest.mark.parametrize("release", RELEASES)
def test_bitbake_parses_every_recipe_offline(release: str, tmp_path: Path) -> None:
    world = _World(tmp_path, release)
    names = {f.name for f in world.files()}
    assert ("python3-zstandard_0.23.0.bb" in names) == (release == "scarthgap"), names
    for recipe in ("ferry", "ferry-conf", "ferry-bundle-example", "u-boot",
                   *(["python3-zstandard"] if release == "scarthgap" else [])):
        variants = world.parse(recipe)
        for variant, d in variants.items():
            assert not d.getVar("__SKIPPED"), f"{recipe} {variant}: {d.getVar('__SKIPPED')}"
            _insane_checks(d, release)
            # what base.bbclass's fetcher_hashes_dummyfunc[vardepvalue] evaluates while
            # parsing: with ${AUTOREV} this runs git ls-remote and BB_NO_NETWORK stops it
            world.bb.fetch2.get_hashvalue(d)
        for variant, d in variants.items():
            for task in ("do_compile", "do_install", "do_deploy", "do_ferry_bundle"):
                body = d.getVar(task) or ""
                left = re.findall(r"\$\{[^}]+\}", body)
                assert not left, f"{recipe} {variant} {task} on {release} keeps {left}"
    ferry = world.parse("ferry")
    assert set(ferry) == {"", "native"}
    srcrev = _assignment(FERRY_BB.read_text(), "SRCREV")
    assert world.bb.fetch2.get_hashvalue(ferry[""]) == srcrev
    native = ferry["native"]
    assert native.getVar("PN") == "ferry-native"
    assert set(native.getVar("DEPENDS").split()) == {
        "python3-asn1crypto-native", "python3-cryptography-native", "python3-zstandard-native"}
    assert native.getVar("PACKAGECONFIG") == ""


@pytest.mark.parametrize("release", RELEASES)
def test_bitbake_unpacks_every_source_where_the_tasks_read_it(release: str,
                                                              tmp_path: Path) -> None:
    world = _World(tmp_path, release)

    uboot = world.parse("u-boot")[""]
    body = uboot.getVar("do_compile") + uboot.getVar("do_deploy")
    assert "${" not in body, body
    world.unpack(uboot, [u for u in uboot.getVar("SRC_URI").split() if u.startswith("file://")])
    used = re.findall(r"-d (\S+\.cmd) |install -m 0644 (\S+/fw_env\.config) ", body)
    assert len(used) == 2, body
    for path in (Path(a or b) for a, b in used):
        assert path.is_file(), f"{release}: the U-Boot append reads {path}, not unpacked there"

    conf = world.parse("ferry-conf")[""]
    world.unpack(conf, conf.getVar("SRC_URI").split())
    assert sorted(p.name for p in Path(conf.getVar("S")).iterdir()) == [
        "example-ca.cert.pem", "ferry.toml", "fw_env.config"]

    # ferry itself, at the pinned commit, from a local clone of this repository
    # (a PREMIRRORS entry, so the recipe's SRC_URI is fetched as written)
    ferry = world.parse("ferry")[""]
    mirror = tmp_path / "mirror" / "ferry.git"
    subprocess.run(["git", "clone", "--bare", "--quiet", str(ROOT), str(mirror)], check=True)
    ferry.setVar("PREMIRRORS", f"git://github.com/ferry-ota/ferry.git "
                               f"git://{mirror};protocol=file")
    world.unpack(ferry, ferry.getVar("SRC_URI").split())
    source = Path(ferry.getVar("S"))
    assert (source / "pyproject.toml").is_file(), f"{release}: nothing unpacked at S={source}"
    install = ferry.getVar("do_install")
    units = ferry.getVar("SYSTEMD_SERVICE:ferry").split()
    for needed in [*units, *re.findall(r"\$\{S\}/systemd/([\w.-]+)", install)]:
        if needed != "$unit":
            assert (source / "systemd" / needed).is_file(), f"pinned commit lacks {needed}"


@pytest.mark.parametrize("release", RELEASES)
def test_bitbake_finds_the_readme_wks_file(release: str, tmp_path: Path) -> None:
    world = _World(tmp_path, release)
    image = world.parse("gateway-image")[""]
    image.setVar("WKS_FILE", _readme_wks_file(release))
    found = image.getVar("WKS_FULL_PATH")
    assert found and Path(found).parent == LAYER / "files" / "wic", (release, found)
    assert f"--source {BOOT_PLUGIN[release]} " in Path(found).read_text()


def test_ferry_toml_is_readable_by_root_and_group_ferry_only() -> None:
    # ferry.toml may hold backend.target_token and MQTT/ChirpStack credentials (issue #16):
    # 0640 root:ferry, with the group created for the recipe's own do_install (useradd).
    text = (LAYER / "recipes-core" / "ferry" / "ferry-conf.bb").read_text()
    body = _shell_function(text, "do_install")
    assert "chmod 0640 ${D}${sysconfdir}/ferry/ferry.toml" in body
    assert "chgrp ferry ${D}${sysconfdir}/ferry/ferry.toml" in body
    assert "0644 ${D}${sysconfdir}/ferry/ferry.toml" not in body
    assert re.search(r"^inherit .*\buseradd\b", text, re.M)
    assert re.search(r'^GROUPADD_PARAM:\$\{PN\} = ".*\bferry\b', text, re.M)


def _run_install(recipe: Path, function: str, variables: dict[str, str], d: Path) -> None:
    """Run a recipe's install shell function with BitBake's ${VAR} expansion of the
    given variables (innermost first, so ${SYSTEMD_SERVICE:${PN}} works); any other
    ${...} left in the body fails the test."""
    body = _shell_function(recipe.read_text(), re.escape(function))
    # chgrp needs the group useradd makes in the real build; here only modes are checked
    script = body.replace("chgrp ferry ", ": ")
    values = {"D": str(d), **variables}
    for _ in range(3):
        script = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_:]*)\}",
                        lambda m: values.get(m.group(1), m.group(0)), script)
    assert "${" not in script, script
    subprocess.run(["bash", "-euc", script], check=True)


def test_ferry_installs_every_file_of_systemd_dir_where_the_box_needs_it(
        tmp_path: Path) -> None:
    """The gateway in a box (issue #17) found org.ferry.Ferry1.service not installed, so
    nothing D-Bus-activated ferryd on a Yocto image; every file in systemd/ has a place."""
    d = tmp_path / "image"
    _run_install(FERRY_BB, "do_install:append:class-target", {
        "S": str(ROOT), "systemd_system_unitdir": "/usr/lib/systemd/system",
        "datadir": "/usr/share", "nonarch_libdir": "/usr/lib", "PN": "ferry",
        "SYSTEMD_SERVICE:ferry": _assignment(FERRY_BB.read_text(),
                                             r"SYSTEMD_SERVICE:\$\{PN\}")}, d)
    installed = {p.name for p in d.rglob("*") if p.is_file()}
    expected = {p.name for p in (ROOT / "systemd").iterdir()} - {"ferry.tmpfiles",
                                                                 "ferry.sysusers"}
    assert expected <= installed, expected - installed
    assert (d / "usr/share/dbus-1/system-services/org.ferry.Ferry1.service").is_file()
    assert (d / "usr/lib/tmpfiles.d/ferry.conf").is_file()
    assert (d / "usr/lib/sysusers.d/ferry.conf").is_file()
    files = re.search(r'^FILES:\$\{PN\} \+= "(.*?)"', FERRY_BB.read_text(), re.M | re.S)
    assert files and "${datadir}/dbus-1/system-services" in files.group(1)


def test_ferry_conf_writes_the_version_file_that_ferry_toml_names(tmp_path: Path) -> None:
    """The box found no /etc/ferry/version although the layer's ferry.toml names it."""
    recipe = LAYER / "recipes-core" / "ferry" / "ferry-conf.bb"
    assert 'FERRY_GATEWAY_VERSION ??= "${DISTRO_VERSION}"' in recipe.read_text()
    src = tmp_path / "src"
    src.mkdir()
    for name in ("ferry.toml", "fw_env.config", "example-ca.cert.pem"):
        shutil.copy(LAYER / "recipes-core" / "ferry" / "files" / name, src / name)
    d = tmp_path / "image"
    _run_install(recipe, "do_install", {
        "S": str(src), "sysconfdir": "/etc", "FERRY_GATEWAY_VERSION": "1.4.0",
        "FERRY_KEYRING_FILE": str(src / "example-ca.cert.pem"),
        **{f"FERRY_{k}": "x" for k in ("COMPATIBLE", "BOOT_SCHEME", "ENV_FLAGS",
                                       "SLOT_A_DEVICE", "SLOT_B_DEVICE", "ENV_DEVICE",
                                       "ENV_OFFSET", "ENV_OFFSET_REDUND", "ENV_SIZE",
                                       "ENV_SECTOR")}}, d)
    toml = tomllib.loads((d / "etc/ferry/ferry.toml").read_text())
    version_file = Path(toml["gateway"]["version_file"])
    assert (d / version_file.relative_to("/")).read_text() == "1.4.0\n"
    assert (d / version_file.relative_to("/")).stat().st_mode & 0o777 == 0o644
