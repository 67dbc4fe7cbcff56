"""meta-ferry: lint-clean recipes, runtime dependencies that exist, and a bundle class
whose shell step produces a bundle that `ferry bundle verify` accepts."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

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


def _layer_provides() -> set[str]:
    names = set()
    for bb in LAYER.glob("recipes-*/*/*.bb"):
        names.add(bb.name.split("_")[0].removesuffix(".bb"))
        for m in re.finditer(r'^RPROVIDES:\$\{PN\}\s*\+?=\s*"([^"]*)"', bb.read_text(), re.M):
            names.update(m.group(1).split())
    return names


def _lint_files() -> list[Path]:
    files = [LAYER / "conf" / "layer.conf"]
    for pattern in ("recipes-*/*/*.bb", "recipes-*/*/*.bbappend", "classes-*/*.bbclass"):
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
    for bb in sorted(LAYER.glob("recipes-*/*/*.bb")) + sorted(LAYER.glob("recipes-*/*/*.inc")):
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
