"""The gateway config: one TOML file (``/etc/ferry/ferry.toml``), read with ``tomllib``.

Every section is a frozen dataclass and the loader is driven by the dataclass fields:
to add a setting, add a field with a default to the right class (and a line to
docs/configuration.md). Unknown keys are an error naming the key, because a typo in a
field config (``atempts = 5``) that silently keeps the default is worse than a refusal.

Relative paths are taken relative to the directory of the config file, so a test or
``ferry demo`` can keep a whole gateway in one temp directory.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferry.errors import FerryError

DEFAULT_PATH = Path("/etc/ferry/ferry.toml")

# No access for "other" to anything ferry creates as the gateway (journal, staged
# firmware, resume heads, slot records), group read at most: ferryd sets it at start and
# so does ``ferry --config`` (the standalone CLI acts as the gateway too); ferryd.service
# says the same with UMask=.
STATE_UMASK = 0o027

SCHEMES = ("bootchooser", "bootcount")
FLAG_MODES = ("incremental", "boolean")


class ConfigError(FerryError):
    """The config file is missing, unreadable or holds a wrong key or value."""

    exit_code = 2


@dataclass(frozen=True)
class GatewayConfig:
    compatible: str
    version: str | None = None
    version_file: Path | None = None
    data_dir: Path = Path("/var/lib/ferry")

    def running_version(self) -> str:
        """Version of the running system: ``version``, else the first line of ``version_file``."""
        if self.version is not None:
            return self.version
        if self.version_file is not None:
            try:
                text = self.version_file.read_text(encoding="utf-8").strip()
            except OSError as err:
                raise ConfigError(
                    f"cannot read gateway.version_file {self.version_file}: {err.strerror}"
                ) from err
            return text.splitlines()[0].strip() if text else ""
        return ""


@dataclass(frozen=True)
class BootloaderConfig:
    # "bootchooser": BOOT_ORDER / BOOT_<x>_LEFT (RAUC); "bootcount": upgrade_available,
    # bootcount, bootlimit, altbootcmd and boot_part_var (Mender).
    scheme: str = "bootchooser"
    fw_env_config: Path = Path("/etc/fw_env.config")
    # Meaning of the redundant env's flag byte; must match the U-Boot build (see
    # docs/bootloader.md): "boolean" for env/flash.c (NOR), "incremental" otherwise.
    flags: str = "incremental"
    attempts: int = 3
    cmdline: Path = Path("/proc/cmdline")
    boot_part_var: str = "ferry_boot_part"
    # ferry's own lock, in ferryd's RuntimeDirectory (root-only, never world-writable).
    # libubootenv's fw_setenv locks /var/lock/fw_printenv.lock instead (docs/configuration.md).
    lock_file: Path = Path("/run/ferry/fw_env.lock")
    # Refuse to activate a slot until U-Boot's boot script has saved
    # ferry_saveenv_canary=1 and ferry can read it back (as Mender's saveenv canary).
    canary: bool = True


@dataclass(frozen=True)
class SlotConfig:
    name: str
    bootname: str
    device: Path
    # Value of bootloader.boot_part_var that selects this slot (bootcount scheme);
    # defaults to the boot name. Mender uses partition numbers here.
    bootpart: str | None = None


@dataclass(frozen=True)
class KeyringConfig:
    path: Path = Path("/etc/ferry/keyring.pem")
    # SWUpdate's '<key hex> <ivt hex>' file (its -K): decrypts bundles whose images are
    # encrypted (docs/bundle-format.md, "Encryption"); none: such bundles are refused.
    decryption_key: Path | None = None
    # This gateway as a recipient of bundles' key envelopes (sw-description.key, CMS
    # EnvelopedData; docs/bundle-format.md, "Key envelope"): its PEM private key (RSA or
    # EC) and the certificate the bundles were wrapped for. Give both or neither.
    recipient_key: Path | None = None
    recipient_cert: Path | None = None


@dataclass(frozen=True)
class InstallConfig:
    min_version: str | None = None
    allow_same_version: bool = False
    # argv run to reboot; empty means ask systemd over D-Bus.
    reboot_command: tuple[str, ...] = ()
    max_bundle_size: int | None = None
    # Bundle downloads: no byte for this long -> reconnect and resume with Range;
    # give up after this many failed attempts in a row (backoff with jitter between).
    download_stall_timeout: float = 60.0
    download_retries: int = 6
    # Target images staged on the data partition: the most bytes one may decompress to
    # when the signed sw-description declares no decompressed-size (a zstd/gzip bomb
    # stops here), and the free space staging always leaves for the journal.
    max_target_image_size: int = 64 << 20
    staging_reserve: int = 16 << 20


@dataclass(frozen=True)
class HealthConfig:
    window_seconds: float = 300.0
    # Ask systemd over D-Bus for SystemState == "running" (off for the simulator/tests).
    system_state: bool = True
    required_units: tuple[str, ...] = ()
    checks: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class BackendConfig:
    url: str | None = None
    tenant: str = "DEFAULT"
    controller_id: str | None = None
    target_token: str | None = None
    gateway_token: str | None = None
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    poll_jitter: float = 0.1
    # Each [[target]] is a DDI controller of its own (docs/backend.md, "Devices as
    # controllers"), polled with gateway_token; off by default so that turning a
    # gateway on does not create a target per MCU on a server that did not ask for it.
    device_controllers: bool = False
    # Device polls per gateway poll interval, whatever the number of devices: the
    # traffic bound (N devices never mean N times the gateway's rate).
    device_polls_per_poll: int = 10
    # Device actions with the same image on one broadcast medium (a LoRa multicast
    # group, a Zigbee coordinator) are gathered this many seconds, then flashed as one
    # campaign (ferry.daemon.backend.campaign); 0 flashes what is gathered at once.
    campaign_window: float = 60.0
    # Each node a LoRa [[target]] lists (option devices), and each node a Zigbee
    # population target (address "*") discovers, is a controller of its own, so a
    # rollout gives each node an action and ferry coalesces them into one campaign.
    node_controllers: bool = False
    # How often the device poller asks the coordinators of Zigbee population targets
    # which nodes they have (ferry.daemon.backend.discovery); seconds.
    node_discovery_interval: float = 3600.0


@dataclass(frozen=True)
class TargetConfig:
    name: str
    transport: str
    address: str = ""
    baud: int | None = None
    image_id: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    # This target's DDI controller id when [backend] device_controllers is on;
    # default "<backend.controller_id>.<name>" (ferry.daemon.backend.controllers)
    controller_id: str | None = None
    # This target's own DDI TargetToken, for a server without gateway tokens
    # (goosebit 0.2.12): its polls and downloads carry it instead of the GatewayToken.
    target_token: str | None = None


@dataclass(frozen=True)
class Config:
    gateway: GatewayConfig
    bootloader: BootloaderConfig = field(default_factory=BootloaderConfig)
    slots: tuple[SlotConfig, ...] = ()
    keyring: KeyringConfig = field(default_factory=KeyringConfig)
    install: InstallConfig = field(default_factory=InstallConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    targets: tuple[TargetConfig, ...] = ()
    path: Path | None = None

    def slot(self, key: str) -> SlotConfig:
        """The slot whose name or boot name is ``key``."""
        for s in self.slots:
            if key in (s.name, s.bootname):
                return s
        names = ", ".join(f"{s.name} ({s.bootname})" for s in self.slots) or "none"
        raise ConfigError(f"no slot named {key!r} in the config; slots: {names}")


# Sections that appear once ([name]) and arrays of tables ([[name]]), in file order.
_SECTIONS: dict[str, type] = {
    "gateway": GatewayConfig,
    "bootloader": BootloaderConfig,
    "keyring": KeyringConfig,
    "install": InstallConfig,
    "health": HealthConfig,
    "backend": BackendConfig,
}
_ARRAYS: dict[str, tuple[str, type]] = {
    "slot": ("slots", SlotConfig),
    "target": ("targets", TargetConfig),
}


def load_config(path: str | Path = DEFAULT_PATH) -> Config:
    """Read and check the config; raises ConfigError naming the file and the key."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as err:
        raise ConfigError(
            f"cannot read config {p}: {err.strerror}; pass --config PATH"
        ) from err
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{p}: not valid TOML: {err}") from err
    return config_from_dict(data, base=p.resolve().parent, path=p)


def config_from_dict(
    data: dict[str, Any], *, base: Path | None = None, path: Path | None = None
) -> Config:
    """Build a Config from parsed TOML; ``base`` anchors relative paths."""
    where = str(path) if path is not None else "config"
    kwargs: dict[str, Any] = {"path": path}
    for key, value in data.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: [{key}] must be a table")
            kwargs[key] = _build(_SECTIONS[key], value, f"{where}: [{key}]", base)
        elif key in _ARRAYS:
            attr, cls = _ARRAYS[key]
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise ConfigError(f"{where}: {key} must be an array of tables [[{key}]]")
            kwargs[attr] = tuple(
                _build(cls, v, f"{where}: [[{key}]] #{i + 1}", base) for i, v in enumerate(value)
            )
        else:
            known = ", ".join(sorted([*_SECTIONS, *_ARRAYS]))
            raise ConfigError(f"{where}: unknown section {key!r} (known: {known})")
    if "gateway" not in kwargs:
        raise ConfigError(f"{where}: missing [gateway] section (needs at least 'compatible')")
    cfg = Config(**kwargs)
    _check(cfg, where)
    return cfg


def _check(cfg: Config, where: str) -> None:
    bl = cfg.bootloader
    if bl.scheme not in SCHEMES:
        raise ConfigError(
            f"{where}: bootloader.scheme = {bl.scheme!r}; use one of {', '.join(SCHEMES)}"
        )
    if bl.flags not in FLAG_MODES:
        raise ConfigError(
            f"{where}: bootloader.flags = {bl.flags!r}; use one of {', '.join(FLAG_MODES)}"
        )
    if not 1 <= bl.attempts <= 9:
        # U-Boot's setexpr counts in hex; the boot scripts compare single digits.
        raise ConfigError(f"{where}: bootloader.attempts = {bl.attempts}; use 1 to 9")
    seen: set[str] = set()
    for s in cfg.slots:
        for key in (s.name, s.bootname):
            if key in seen:
                raise ConfigError(f"{where}: slot name or boot name {key!r} used twice")
            seen.add(key)
        if not s.bootname.isalnum():
            raise ConfigError(
                f"{where}: slot {s.name} bootname {s.bootname!r} must be letters and digits "
                "(it becomes part of the variable BOOT_<bootname>_LEFT)"
            )
    ins = cfg.install
    if ins.max_target_image_size <= 0:
        raise ConfigError(f"{where}: install.max_target_image_size = "
                          f"{ins.max_target_image_size}; use a size in bytes above 0")
    if ins.staging_reserve < 0:
        raise ConfigError(f"{where}: install.staging_reserve = {ins.staging_reserve}; "
                          "use a size in bytes, 0 or more")
    kr = cfg.keyring
    if (kr.recipient_key is None) != (kr.recipient_cert is None):
        raise ConfigError(f"{where}: keyring.recipient_key and keyring.recipient_cert go "
                          "together (the key and the certificate bundles are wrapped for)")
    names = [t.name for t in cfg.targets]
    for n in names:
        if names.count(n) > 1:
            raise ConfigError(f"{where}: target name {n!r} used twice")
    _check_device_controllers(cfg, where)


# hawkBit keeps a controller id in 64 characters (256 in newer releases) without
# whitespace; goosebit puts it in a URL path. ferry's ids keep to the safe common part.
CONTROLLER_ID_CHARS = "letters, digits, '.', '_' and '-'"
CONTROLLER_ID_MAX = 64


def controller_id_problem(text: str) -> str | None:
    """Why ``text`` is not a controller id ferry will use, or None."""
    if not text:
        return "is empty"
    if len(text) > CONTROLLER_ID_MAX:
        return f"is longer than {CONTROLLER_ID_MAX} characters"
    if not all(c.isascii() and (c.isalnum() or c in "._-") for c in text):
        return f"may hold only {CONTROLLER_ID_CHARS}"
    return None


def _check_device_controllers(cfg: Config, where: str) -> None:
    b = cfg.backend
    for t in cfg.targets:
        if t.controller_id is not None:
            why = controller_id_problem(t.controller_id)
            if why:
                raise ConfigError(f"{where}: target {t.name} controller_id "
                                  f"{t.controller_id!r} {why}")
    if b.device_polls_per_poll < 1:
        raise ConfigError(f"{where}: backend.device_polls_per_poll = "
                          f"{b.device_polls_per_poll}; use 1 or more")
    if b.campaign_window < 0:
        raise ConfigError(f"{where}: backend.campaign_window = {b.campaign_window}; "
                          "use 0 or more seconds")
    if b.node_discovery_interval <= 0:
        raise ConfigError(f"{where}: backend.node_discovery_interval = "
                          f"{b.node_discovery_interval}; use more than 0 seconds")
    if not b.device_controllers:
        return
    if not b.url or not b.controller_id:
        raise ConfigError(f"{where}: backend.device_controllers needs backend.url and "
                          "backend.controller_id (device ids derive from the gateway's)")
    if b.target_token and not b.gateway_token and \
            not (cfg.targets and all(t.target_token for t in cfg.targets)):
        raise ConfigError(f"{where}: backend.device_controllers needs backend.gateway_token "
                          "(or a target_token in every [[target]]): a backend.target_token "
                          "authenticates the gateway's own controller only")


def _build(cls: type, table: dict[str, Any], where: str, base: Path | None) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        if key not in fields:
            known = ", ".join(fields)
            raise ConfigError(f"{where}: unknown key {key!r} (known: {known})")
        kwargs[key] = _convert(hints[key], value, f"{where} {key}", base)
    for name, f in fields.items():
        if (
            name not in kwargs
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ):
            raise ConfigError(f"{where}: missing required key {name!r}")
    return cls(**kwargs)


def _convert(tp: Any, value: Any, where: str, base: Path | None) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(args[0], value, where, base)
    if tp is Any:
        return value
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: expected a path string, got {value!r}")
        p = Path(value)
        if value.startswith("pkcs11:"):  # a key in a token (packaging/pkcs11.py): kept as is
            return p
        return base / p if base is not None and not p.is_absolute() else p
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected an array, got {value!r}")
        (item, _ellipsis) = typing.get_args(tp)
        return tuple(_convert(item, v, where, base) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    raise ConfigError(f"{where}: unsupported setting type {tp!r}")  # pragma: no cover
