"""The gateway config loader: schema, defaults, relative paths, and refusals naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferry.daemon.config import ConfigError, load_config

FULL = """
[gateway]
compatible = "acme-gw"
version = "1.2.0"
data_dir = "data"

[bootloader]
scheme = "bootcount"
fw_env_config = "fw_env.config"
flags = "boolean"
attempts = 2
cmdline = "cmdline"

[[slot]]
name = "rootfs.0"
bootname = "A"
device = "/dev/mmcblk0p2"

[[slot]]
name = "rootfs.1"
bootname = "B"
device = "/dev/mmcblk0p3"
bootpart = "3"

[keyring]
path = "/etc/ferry/ca.pem"

[install]
min_version = "1.0.0"
reboot_command = ["systemctl", "reboot"]
max_bundle_size = 1000000

[health]
window_seconds = 60
required_units = ["app.service"]
checks = [["/bin/true"], ["/usr/bin/test", "-e", "/run/ok"]]

[backend]
url = "http://127.0.0.1:8080"
controller_id = "gw-1"

[[target]]
name = "mcu0"
transport = "smp-serial"
address = "/dev/ttyACM0"
baud = 115200
options = { mtu = 256 }
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "ferry.toml"
    p.write_text(text)
    return p


def test_full_config_round_trip(tmp_path):
    cfg = load_config(write(tmp_path, FULL))
    assert cfg.gateway.compatible == "acme-gw"
    assert cfg.gateway.running_version() == "1.2.0"
    assert cfg.gateway.data_dir == tmp_path / "data"  # relative to the config file
    assert cfg.bootloader.scheme == "bootcount"
    assert cfg.bootloader.flags == "boolean"
    assert cfg.bootloader.fw_env_config == tmp_path / "fw_env.config"
    assert [s.bootname for s in cfg.slots] == ["A", "B"]
    assert cfg.slots[1].bootpart == "3"
    assert cfg.slot("B").name == "rootfs.1"
    assert cfg.slot("rootfs.0").device == Path("/dev/mmcblk0p2")
    assert cfg.install.reboot_command == ("systemctl", "reboot")
    assert cfg.health.window_seconds == 60.0
    assert cfg.health.checks == (("/bin/true",), ("/usr/bin/test", "-e", "/run/ok"))
    assert cfg.backend.tenant == "DEFAULT"
    assert cfg.targets[0].options == {"mtu": 256}


def test_defaults(tmp_path):
    cfg = load_config(write(tmp_path, '[gateway]\ncompatible = "x"\n'))
    assert cfg.bootloader.scheme == "bootchooser"
    assert cfg.bootloader.flags == "incremental"
    assert cfg.bootloader.attempts == 3
    assert cfg.bootloader.fw_env_config == Path("/etc/fw_env.config")
    assert cfg.slots == ()
    assert cfg.gateway.data_dir == Path("/var/lib/ferry")


def test_version_file(tmp_path):
    (tmp_path / "v").write_text("2.0.1\nbuild 7\n")
    cfg = load_config(write(tmp_path, '[gateway]\ncompatible = "x"\nversion_file = "v"\n'))
    assert cfg.gateway.running_version() == "2.0.1"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[gateway]\ncompatible = "x"\n[bootloader]\natempts = 3\n', "'atempts'"),
        ('[gateway]\ncompatible = "x"\n[bogus]\n', "'bogus'"),
        ("[gateway]\n", "'compatible'"),
        ('[bootloader]\nscheme = "bootchooser"\n', "[gateway]"),
        ('[gateway]\ncompatible = "x"\n[bootloader]\nscheme = "grub"\n', "grub"),
        ('[gateway]\ncompatible = "x"\n[bootloader]\nflags = "maybe"\n', "maybe"),
        ('[gateway]\ncompatible = "x"\n[bootloader]\nattempts = "3"\n', "attempts"),
        ('[gateway]\ncompatible = "x"\n[bootloader]\nattempts = 12\n', "1 to 9"),
        (
            '[gateway]\ncompatible = "x"\n[[slot]]\nname="a"\nbootname="A"\ndevice="/d"\n'
            '[[slot]]\nname="b"\nbootname="A"\ndevice="/e"\n',
            "used twice",
        ),
        ('[gateway]\ncompatible = "x"\n[[slot]]\nname="a"\nbootname="A"\n', "'device'"),
        ('[gateway]\ncompatible = "x"\n[install]\nallow_same_version = 1\n', "true or false"),
        ("[gateway\n", "not valid TOML"),
    ],
)
def test_refusals_name_the_problem(tmp_path, text, needle):
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text))
    assert needle in str(exc.value)


def test_missing_file_says_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="--config"):
        load_config(tmp_path / "nope.toml")
