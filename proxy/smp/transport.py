"""The ``smp-serial`` transport: MCUboot images to MCUs over SMP on a UART.

Flash sequence, each step safe to repeat (the device keeps running its old image until
the new one is confirmed, and MCUboot reverts an unconfirmed test image on reset):

1. parse the image, check its SHA256 TLV, that it is meant for this target, and that it
   is not older than what runs (unless forced);
2. read buffer parameters and the image list; skip the upload if the device already
   holds the image (by MCUboot hash), else upload with resume;
3. mark it for a test boot (the answer must show it ``pending``), reset once;
4. wait for a state the device cannot have produced before it reset (``reboot``): the
   old image keeps answering for ``reset_delay`` or longer, so "new image pending, old
   active" means "not reset yet", never "rolled back";
5. confirm (unless test-only) and read back that it is confirmed.

With the target option ``defer_confirm`` (the proxy phase and ``ferry flash`` set it)
step 5 waits: ``flash`` returns "booted, not confirmed" (``FlashResult.trial``) and the
caller runs the target's health check (``health``), then ``confirm`` or ``revert``
(``trial``, ``settle``). A repeated flash that finds the image already running
unconfirmed returns the same trial instead of confirming it: after a crash the decision
is the health check's, never a side effect of resuming.

An encrypted MCUboot image goes on as it is: ferry cannot check its plaintext hash
(``mcuboot``), so every result carries ``encrypted`` and ``hash_checked`` in its detail,
and the message says who checked what: MCUboot, at boot, decrypting with its key.

Link failures (timeouts, a vanished port) before the reset are retried ``retries`` times
by reopening the port; the upload resumes at the offset the device reports. Failures
after the reset are final and each has its own message (``reboot``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, BinaryIO

from ferry.errors import FerryError
from ferry.proxy import mcuboot
from ferry.proxy.smp import healthspec
from ferry.proxy.smp import trial as trials
from ferry.proxy.smp.client import LinkError, SlotState, SmpClient, TargetTimeout
from ferry.proxy.smp.reboot import Verdict, find, wait_after_reset
from ferry.proxy.transport import (
    DEFER_CONFIRM,
    FlashResult,
    HealthReport,
    Progress,
    Target,
    TargetState,
    Trial,
    no_progress,
)

NAME = "smp-serial"
TRUE = {"1", "true", "yes", "on"}


class RefusedImage(FerryError):
    """The image is valid but must not go to this target (wrong target, downgrade)."""


def _flag(options: dict[str, Any], key: str) -> bool:
    return str(options.get(key, "")).strip().lower() in TRUE


@dataclass
class Settings:
    baud: int = 115200
    timeout: float = 5.0  # per request, on top of the line time of the data in flight
    boot_timeout: float = 60.0  # how long a reset target may take to answer again
    retries: int = 3  # reopen-and-resume attempts after link failures
    window: int | None = None  # upload requests in flight; None = from buf_count
    buf_size: int | None = None  # override a target that advertises nothing (or wrongly)
    image: int = 0  # MCUboot image number (multi-image targets)
    reset_delay: float = 0.25  # the target's CONFIG_MCUMGR_GRP_OS_RESET_MS, in seconds

    @classmethod
    def from_options(cls, *layers: dict[str, Any]) -> Settings:
        merged: dict[str, Any] = {}
        for layer in layers:
            merged.update({k: v for k, v in layer.items() if v not in (None, "")})
        s = cls()
        if "baud" in merged:
            s.baud = int(merged["baud"])
        for key in ("timeout", "boot_timeout"):
            if key in merged:
                setattr(s, key, float(merged[key]))
        if "retries" in merged:
            s.retries = int(merged["retries"])
        if "window" in merged:
            s.window = int(merged["window"])
        if "buf_size" in merged:
            s.buf_size = int(merged["buf_size"])
        if "image" in merged:
            s.image = int(merged["image"])
        if "reset_delay" in merged:
            s.reset_delay = seconds(merged["reset_delay"], "reset_delay")
        return s


def seconds(value: object, key: str) -> float:
    """``0.25``, ``0.25s`` or ``250ms``; a clear error for anything else."""
    text = str(value).strip().lower()
    scale = 1.0
    if text.endswith("ms"):
        text, scale = text[:-2], 0.001
    elif text.endswith("s"):
        text = text[:-1]
    try:
        number = float(text) * scale
    except ValueError:
        raise FerryError(f"smp-serial option {key} = {value!r} is not a time "
                         "(seconds, or e.g. 250ms)") from None
    if number < 0:
        raise FerryError(f"smp-serial option {key} = {value!r} is negative")
    return number


class SmpSerialTransport:
    name = NAME

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        self.options = dict(options or {})

    # -- Transport protocol ---------------------------------------------------------------
    def discover(self) -> list[Target]:
        """Probe the ports listed in the transport options (``ports = "a,b"``).

        A UART cannot announce itself, so only configured ports are probed; an SMP echo
        tells whether an MCU answers there.
        """
        ports = self.options.get("ports", "")
        names = ports if isinstance(ports, list) else [p for p in str(ports).split(",") if p]
        found = []
        for port in names:
            target = Target(name=os.path.basename(port), transport=NAME, address=port)
            if self.inspect(target).reachable:
                found.append(target)
        return found

    def inspect(self, target: Target) -> TargetState:
        settings = Settings.from_options(self.options, target.options)
        client = SmpClient(target.address, baud=settings.baud, timeout=min(settings.timeout, 2))
        try:
            with client:
                slots = client.image_state()
        except FerryError as err:
            return TargetState(reachable=False, detail={"error": str(err)})
        return _state_of(slots, settings.image)

    def flash(self, target: Target, image: BinaryIO, *, progress: Progress = no_progress
              ) -> FlashResult:
        settings = Settings.from_options(self.options, target.options)
        data = image.read()
        parsed = mcuboot.verify_hash(data)
        _check_metadata(target, parsed)
        new_hash = parsed.hash
        assert new_hash is not None
        test_only = _flag(target.options, "test_only") or (
            str(target.options.get("confirm", "1")).strip().lower() in {"0", "false", "no"})
        force = _flag(target.options, "force")
        defer = _flag(target.options, DEFER_CONFIRM) and not test_only
        if defer:
            self.health_spec(target)  # a bad health option stops here, before a byte

        attempt = 0
        while True:
            try:
                return self._flash_once(target, settings, data, parsed, new_hash, test_only,
                                        force, progress, defer)
            except (LinkError, TargetTimeout) as err:
                attempt += 1
                if attempt > settings.retries:
                    raise
                progress(0, len(data), f"retry {attempt}/{settings.retries}: {err}")
                _wait_for_port(target.address, settings.boot_timeout)

    # -- steps -----------------------------------------------------------------------------
    def _flash_once(self, target: Target, s: Settings, data: bytes,
                    parsed: mcuboot.McubootImage, new_hash: bytes, test_only: bool,
                    force: bool, progress: Progress, defer: bool = False) -> FlashResult:
        client = SmpClient(target.address, baud=s.baud, timeout=s.timeout)
        with client:
            params = client.read_params()
            if s.buf_size:
                client.params = type(params)(s.buf_size, params.buf_count, params.advertised)
            slots = client.image_state()
            running = _slot(slots, s.image, 0)
            if running and running.hash == new_hash:
                if not running.confirmed and defer:
                    # booted on trial by an earlier run that did not settle it: the
                    # health check decides, not this repeat
                    return _on_trial(target, running, _slot(slots, s.image, 1), parsed,
                                     {"hash": new_hash.hex(), **parsed.summary()})
                if not running.confirmed and not test_only:
                    client.set_state(None, confirm=True)
                return FlashResult(ok=True, version=str(parsed.version), skipped=True,
                                   message=f"{target.name} already runs {parsed.version}",
                                   detail={"hash": new_hash.hex(), **parsed.summary()})
            if running and running.version and not force:
                current = mcuboot.Version.parse(running.version)
                if parsed.version < current:
                    raise RefusedImage(
                        f"{target.name} runs {running.version}, image is older "
                        f"({parsed.version}); use --force to downgrade")
            previous = running
            staged = _slot(slots, s.image, 1)
            resumed = 0
            if staged and staged.hash == new_hash:
                progress(len(data), len(data), "already staged")
            else:
                resumed = client.upload(
                    data, image=s.image, window=s.window,
                    progress=lambda done, total: progress(done, total, "upload"))
                slots = client.image_state()
                staged = _slot(slots, s.image, 1)
                if staged is None or staged.hash != new_hash:
                    raise FerryError(f"{target.name}: after upload the device does not list "
                                     "the image in slot 1 (it rejected it as unbootable?)")
            if not staged.pending:
                # An image padded with imgtool --pad --confirm arrives pending-permanent
                # already; Zephyr then refuses a test request for it with
                # IMG_MGMT_ERR_IMAGE_ALREADY_PENDING (img_mgmt_set_next_boot_slot).
                progress(len(data), len(data), "test")
                staged = _slot(client.set_state(new_hash, confirm=False), s.image, 1)
            if staged is None or staged.hash != new_hash or not staged.pending:
                raise FerryError(f"{target.name}: the device did not mark {parsed.version} "
                                 "pending after the test request; nothing was reset")
            progress(len(data), len(data), "reset")
            acknowledged = client.reset()
        progress(len(data), len(data), "waiting for target")
        outcome = wait_after_reset(target.address, baud=s.baud, timeout=s.timeout,
                                   reset_delay=s.reset_delay, boot_timeout=s.boot_timeout,
                                   image=s.image, new_hash=new_hash, name=target.name)
        running = _slot(outcome.slots, s.image, 0)
        back = running.version if running else "?"
        detail = {"hash": new_hash.hex(), "resumed_at": str(resumed),
                  "reset_acknowledged": str(acknowledged).lower(),
                  "old_image_answers": str(outcome.old_answers),
                  "port_vanished": str(outcome.vanished).lower(), **parsed.summary()}
        if outcome.verdict is Verdict.ROLLED_BACK:
            return FlashResult(
                ok=False, version=back, rolled_back=True, detail=detail,
                message=f"{target.name} came back on its old image {back}: the new image "
                        f"{parsed.version} did not boot and MCUboot rolled back")
        if outcome.verdict is Verdict.REFUSED:
            return FlashResult(
                ok=False, version=back, rolled_back=True, detail=detail,
                message=f"{target.name} came back on its old image {back}: MCUboot refused "
                        f"the new image {parsed.version} at boot ({_refusal(parsed)}) "
                        "and erased it")
        if outcome.verdict is not Verdict.BOOTED or running is None:
            return FlashResult(ok=False, version=back, detail=detail,
                               message=f"{target.name} runs an unexpected image {back}")
        if test_only:
            return FlashResult(ok=True, version=running.version, detail=detail,
                               message=f"{target.name} runs {parsed.version} in test mode "
                                       "(not confirmed: the next reset reverts it)"
                                       + _booted_note(parsed))
        if defer:
            return _on_trial(target, running, previous, parsed, detail)
        progress(len(data), len(data), "confirm")
        client = SmpClient(target.address, baud=s.baud, timeout=s.timeout)
        with client:
            slots = client.set_state(None, confirm=True)
            if not any(x.confirmed for x in slots if x.slot == 0 and x.image == s.image):
                slots = client.image_state()
        running = _slot(slots, s.image, 0)
        if running is None or running.hash != new_hash or not running.confirmed:
            return FlashResult(ok=False, version=running.version if running else "",
                               detail=detail,
                               message=f"{target.name} did not confirm {parsed.version}")
        return FlashResult(ok=True, version=running.version, detail=detail,
                           message=f"{target.name} runs {parsed.version}, confirmed"
                                   + _booted_note(parsed))


    # -- Confirming capability (ferry.proxy.transport) ---------------------------------
    def health_spec(self, target: Target) -> healthspec.HealthSpec:
        return healthspec.parse({**self.options, **target.options}, who=target.name)

    def health(self, target: Target, trial: Trial, *, progress: Progress = no_progress
               ) -> HealthReport:
        s = Settings.from_options(self.options, target.options)
        return trials.health(target, baud=s.baud, timeout=s.timeout, image=s.image,
                             spec=self.health_spec(target), trial=trial, progress=progress)

    def confirm(self, target: Target, trial: Trial) -> FlashResult:
        s = Settings.from_options(self.options, target.options)
        return trials.confirm(target, baud=s.baud, timeout=s.timeout, image=s.image,
                              trial=trial)

    def revert(self, target: Target, trial: Trial, reason: str) -> FlashResult:
        s = Settings.from_options(self.options, target.options)
        return trials.revert(target, baud=s.baud, timeout=s.timeout, image=s.image,
                             reset_delay=s.reset_delay, boot_timeout=s.boot_timeout,
                             trial=trial)


_slot = find


def _on_trial(target: Target, running: SlotState, previous: SlotState | None,
              parsed: mcuboot.McubootImage, detail: dict[str, str]) -> FlashResult:
    """"Booted, not confirmed": the result that hands the decision to the caller."""
    trial = Trial(hash=running.hash.hex(), version=running.version,
                  previous_hash=previous.hash.hex() if previous else "",
                  previous_version=previous.version if previous else "",
                  note=_booted_note(parsed))
    state = ("its application confirmed it itself" if running.confirmed
             else "not confirmed yet: the next reset reverts it")
    return FlashResult(ok=True, version=running.version, detail=detail, trial=trial,
                       message=f"{target.name} runs {parsed.version} on trial ({state})"
                               + _booted_note(parsed))


def _refusal(parsed: mcuboot.McubootImage) -> str:
    """Why MCUboot may have refused the image, as far as ferry can tell."""
    if parsed.encrypted and not parsed.hash_checked:
        return (f"encrypted {parsed.encrypted}: the device's key does not decrypt it, or "
                "the decrypted image fails its hash or signature check; ferry cannot tell "
                "which without the key")
    return "hash or signature check"


def _booted_note(parsed: mcuboot.McubootImage) -> str:
    """An encrypted image that booted: MCUboot, not ferry, checked its plaintext hash."""
    if parsed.encrypted and not parsed.hash_checked:
        return (f" (encrypted {parsed.encrypted}: ferry could not check the plaintext "
                "hash; MCUboot checked it when it decrypted the image)")
    return ""


def _state_of(slots: list[SlotState], image: int) -> TargetState:
    running = _slot(slots, image, 0)
    detail: dict[str, str] = {}
    if running:
        detail.update(hash=running.hash.hex(), confirmed=str(running.confirmed).lower())
    staged = _slot(slots, image, 1)
    if staged:
        detail.update(staged_version=staged.version, staged_pending=str(staged.pending).lower())
    return TargetState(reachable=True, version=running.version if running else "",
                       detail=detail)


def _check_metadata(target: Target, parsed: mcuboot.McubootImage) -> None:
    """Refuse images the bundle says are for another target or another version."""
    opts = target.options
    fmt = opts.get("spec_format", "")
    if fmt and fmt != "mcuboot":
        raise RefusedImage(f"{target.name}: smp-serial carries MCUboot images, the bundle "
                           f"says this one is {fmt!r}")
    want_id = opts.get("spec_image_id", "")
    if want_id and target.hardware_id and want_id != target.hardware_id:
        raise RefusedImage(f"{target.name} expects image id {target.hardware_id!r}, the bundle's "
                           f"image is for {want_id!r}")
    spec_version = opts.get("spec_version", "")
    if spec_version:
        try:
            declared = mcuboot.Version.parse(spec_version)
        except mcuboot.ImageError:
            declared = None
        if declared is not None and declared != parsed.version:
            raise RefusedImage(f"{target.name}: the bundle declares version {spec_version}, "
                               f"the image header says {parsed.version}")


def _wait_for_port(port: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(port):
        if time.monotonic() > deadline:
            raise LinkError(f"serial port {port} did not come back within {timeout:.0f} s; "
                            "check the USB-serial adapter")
        time.sleep(0.2)


def create(options: dict[str, Any]) -> SmpSerialTransport:
    return SmpSerialTransport(options)
