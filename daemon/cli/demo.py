"""``ferry demo [--keep] [--fail health] [--real-uboot]``: the whole story in a few minutes.

In a temp dir: goosebit (a real DDI server) on 127.0.0.1, a simulated gateway (file
slots A/B, a U-Boot env file, a simulated bootloader), a simulated UART MCU on a pty;
a signed version-2 bundle with a new rootfs and new MCU firmware is built, uploaded
and assigned in goosebit, and the gateway side (the DDI runner over the real install
pipeline, boot check and proxy phase) takes it to the end. It ends with ``ferry
status`` beside goosebit's view of the device. Exit code 0 means the story ended as
it should (committed and flashed; with ``--fail health``: rolled back and reported).

The second act (after a successful gateway update, issue 19): the MCU is a DDI
controller of its own (``[backend] device_controllers``). goosebit 0.2.12 knows no
GatewayToken, so the demo takes goosebit's own route: device auth in ``lax`` mode and
a TargetToken for the MCU's device set through goosebit's API, which ferry sends for
that device (``[[target]] target_token``). The operator assigns a target-only bundle
to the MCU alone; ferry's device poller flashes it through the real SMP transport and
reports to the MCU's action, and the demo prints both goosebit views: the MCU's entry
finished on the new firmware, the gateway's entry unchanged.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferry.daemon.cli import exitcodes
from ferry.errors import FerryError

COMPATIBLE = "ferry-demo-gw"
CONTROLLER_ID = "ferry-demo-gw-1"
OLD_VERSION, NEW_VERSION = "1.0.0", "2.0.0"
MCU_OLD, MCU_NEW = (1, 0, 0, 0), (1, 4, 0, 0)
MCU_ALONE, MCU_ALONE_VERSION = (1, 5, 0, 0), "1.5.0"  # the second act's firmware
STEPS = 7
STEPS_TWO_ACTS = 10


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "demo",
        help="run the whole story locally: goosebit, a simulated gateway and MCU, one update",
        description="Start goosebit (a hawkBit-DDI server) on 127.0.0.1, a simulated gateway "
        "with A/B slots and a simulated UART MCU, build a signed version-2 bundle with a new "
        "rootfs and new MCU firmware, assign it in goosebit and let ferry install it, reboot, "
        "check health, commit, flash the MCU and report. Everything lives in one temp dir.",
    )
    p.add_argument("--keep", action="store_true",
                   help="leave goosebit, the gateway and the MCU running and say how to "
                   "explore them (Ctrl-C stops)")
    p.add_argument("--fail", choices=["health"],
                   help="'health': the new rootfs fails its health check, so the gateway "
                   "rolls back to the old slot and goosebit shows the failure with its reason")
    p.add_argument("--real-uboot", action="store_true",
                   help="boot through the real U-Boot in QEMU when it is installed")
    p.add_argument("--dir", metavar="DIR", help="work here instead of a new temp dir")
    p.add_argument("--port", type=int, default=0,
                   help="goosebit's port on 127.0.0.1 (default: a free one)")
    p.set_defaults(func=run)


class Display:
    """Numbered steps and indented detail lines, with elapsed seconds, for a console."""

    def __init__(self, stream: Any = None, steps: int = STEPS) -> None:
        self.stream = stream or sys.stdout
        self.steps = steps
        self.t0 = time.monotonic()
        self.lock = threading.Lock()

    def _out(self, text: str) -> None:
        with self.lock:
            self.stream.write(text + "\n")
            self.stream.flush()

    def step(self, n: int, text: str) -> None:
        self._out(f"\n[{n}/{self.steps}] {text}")

    def info(self, text: str) -> None:
        self._out(f"  {time.monotonic() - self.t0:6.1f}s  {text}")

    def note(self, text: str) -> None:
        self._out(f"          ! {text}")


@dataclass
class Demo:
    args: argparse.Namespace
    ui: Display
    workdir: Path
    cleanup: list[Any] = field(default_factory=list)
    mcu: Any = None
    goosebit: Any = None
    gateway: Any = None
    pipeline: Any = None
    runner: Any = None
    bundle: Path | None = None
    progress_seen: dict[str, int] = field(default_factory=dict)
    real_uboot: bool = False
    mcu_token: str = field(default_factory=lambda: secrets.token_hex(12))

    # -- the story --------------------------------------------------------------------

    def run(self) -> int:
        a = self.args
        self.ui.info(f"working in {self.workdir}")
        self.real_uboot = bool(a.real_uboot) and self._real_uboot_check()
        self._start_goosebit()
        self._start_targets()
        self._start_gateway()
        self._build_bundle()
        self._assign()
        outcome = self._deploy()
        ok = self._ending(outcome)
        if ok and self.ui.steps == STEPS_TWO_ACTS and self.mcu is not None:
            ok = self._act_two()
        if a.keep:
            self._keep()
        return exitcodes.OK if ok else exitcodes.FAILED

    def _real_uboot_check(self) -> bool:
        from ferry.sim import uboot_qemu

        lacking = uboot_qemu.missing()
        if lacking:
            self.ui.note(f"--real-uboot needs {'; '.join(lacking)}. Going on with the "
                         "simulated bootloader (sim/bootsim.py), which runs the same boot "
                         "script logic.")
            return False
        build = ("the redundant-env build cached by .ci/deps/uboot.sh"
                 if uboot_qemu.redundant_build() else "Debian's single-copy-env build")
        self.ui.note(f"--real-uboot: every boot runs the real U-Boot ({build}) in QEMU, "
                     "with ferry's boot script")
        return True

    def _start_goosebit(self) -> None:
        from ferry.sim.goosebit import Goosebit

        self.ui.step(1, "backend: goosebit, a hawkBit-DDI server (PyPI), on 127.0.0.1")
        gb = Goosebit(self.workdir / "goosebit", port=self.args.port, device_auth="lax")
        gb.start(timeout=180)
        self.goosebit = gb
        self.cleanup.append(gb.stop)
        self.ui.info(f"goosebit is up at {gb.url} (state and log in {gb.state_dir})")

    def _start_targets(self) -> None:
        self.ui.step(2, "targets: simulated devices behind the gateway")
        try:
            from ferry.sim.mcu import McuConfig, SimMcu
            from ferry.sim.mcu import image as mcu_image
        except ImportError as exc:
            self.ui.note(f"the simulated UART MCU is not available ({exc}); going on without "
                         "targets")
            return
        running = mcu_image.build(MCU_OLD, b"demo firmware 1.0.0\n" * 400)
        mcu = SimMcu(McuConfig(baud=115200), running=running).start()
        self.mcu = mcu
        self.cleanup.append(mcu.stop)
        self.ui.info(f"UART MCU 'mcu0' (SMP over serial, MCUboot) on {mcu.port} at 115200 "
                     "baud, running firmware 1.0.0")

    def _start_gateway(self) -> None:
        from ferry.daemon.backend import ddi
        from ferry.daemon.backend.health import transport_inspect
        from ferry.daemon.backend.pipeline_adapter import PipelineGateway
        from ferry.daemon.backend.runner import DeploymentRunner
        from ferry.daemon.boot.bootloader import make_bootloader
        from ferry.daemon.config import load_config
        from ferry.packaging.devpki import write_dev_pki
        from ferry.sim.gateway import SimGateway, TargetEntry

        self.ui.step(3, "gateway: simulated A/B slots, U-Boot env, bootloader; ferry on top")
        pki = write_dev_pki(self.workdir / "pki")
        targets = []
        if self.mcu is not None:
            targets.append(TargetEntry("mcu0", "smp-serial", self.mcu.port, baud=115200,
                                       target_token=self.mcu_token))
        gw_root = self.workdir / "gateway"

        def on_boot(slot: str, rootfs: dict[str, str]) -> None:
            health = rootfs.get("health", "?")
            who = "the real U-Boot (QEMU)" if self.real_uboot else "U-Boot"
            self.ui.info(f"gateway boots: {who} picks slot {slot}, rootfs version "
                         f"{rootfs.get('version', '?')}")
            if self.gateway is not None and self.gateway.boots > 1:
                self.ui.info("its health check " + ("passes" if health == "ok" else
                             f"FAILS: {rootfs.get('reason', '?')}; ferry retries it for "
                             "the health window, then marks the slot bad"))
            if health == "ok":
                # what ferry-mark-good.service does after boot-complete.target on a real
                # gateway: only a rootfs whose own health gate passes gets there
                make_bootloader(load_config(gw_root / "ferry.toml"), warn=False).mark_good(slot)

        gw = SimGateway(gw_root, compatible=COMPATIBLE, keyring=pki.ca_cert,
                        backend_url=self.goosebit.url, controller_id=CONTROLLER_ID,
                        device_controllers=self.mcu is not None, targets=targets,
                        on_boot=on_boot, real_uboot=self.real_uboot)
        self.gateway = gw
        gw.create(OLD_VERSION)
        os.environ["FERRY_BOOT_ID_PATH"] = str(gw.boot_id_path)
        config = load_config(gw.config_path)
        from ferry.daemon.boot.slots import record_slot_version

        record_slot_version(config, "rootfs.0", OLD_VERSION)  # as factory provisioning does

        def inspect(tc: Any) -> Any:
            return transport_inspect(tc)

        self.pipeline = PipelineGateway(config, reboot=self._reboot, boot_id=gw.boot_id,
                                        immediate_reboot=True, inspect=inspect,
                                        progress=self._progress, system=("running", ()),
                                        uptime=gw.uptime)
        client = ddi.DdiClient(ddi.DdiSettings.from_config(config.backend))
        self.runner = DeploymentRunner(client, self.pipeline, config.gateway.data_dir,
                                       log=lambda m: None)
        self.ui.info(f"gateway '{CONTROLLER_ID}' ({COMPATIBLE}) runs {OLD_VERSION} from slot "
                     f"A; config {gw.config_path}")
        res = self.runner.step()
        self.ui.info(f"first DDI poll: goosebit registered the gateway; combined health sent "
                     f"as configData (goosebit asks for a poll every {res.sleep:.0f} s)")

    def _reboot(self) -> None:
        self.ui.info("ferry asks for a reboot")
        self.gateway.reboot()

    def _progress(self, phase: str, done: int, total: int) -> None:
        if total <= 1 and phase not in ("activate", "reboot"):
            return
        if phase in ("activate", "reboot"):
            if done == 0 and phase == "activate":
                self.ui.info("slot written; one atomic U-Boot env write makes it the next "
                             "boot's choice")
            return
        pct = done * 100 // total if total else 100
        bucket = pct // 25
        if self.progress_seen.get(phase, -1) >= bucket:
            return
        self.progress_seen[phase] = bucket
        if phase.startswith("flash:"):
            _, name, what = [*phase.split(":", 2), "", ""][:3]
            self.ui.info(f"{name}: {what or 'flash'} {pct}% ({done}/{total})")
        else:
            word = {"write": "writing the inactive slot", "stage": "staging target firmware",
                    "download": "downloading"}.get(phase, phase)
            self.ui.info(f"{word}: {pct}%")

    def _build_bundle(self) -> None:
        from ferry.packaging.description import TargetSpec
        from ferry.packaging.writer import ImageInput, create_bundle, load_signing_key
        from ferry.sim.gateway import rootfs_image

        fail = self.args.fail == "health"
        self.ui.step(4, f"bundle: version {NEW_VERSION}, new rootfs"
                     + (" (built to FAIL its health check)" if fail else "")
                     + (" + MCU firmware 1.4.0" if self.mcu is not None else ""))
        out = self.workdir / "bundles"
        out.mkdir(exist_ok=True)
        rootfs = rootfs_image(out / f"rootfs-{NEW_VERSION}.img", NEW_VERSION,
                              healthy=not fail,
                              reason="app.service: failed to start (config schema v3 "
                                     "unknown to this build)")
        images = [ImageInput(rootfs, "zstd")]
        if self.mcu is not None:
            from ferry.sim.mcu import image as mcu_image

            fw = out / "mcu0-1.4.0.bin"
            fw.write_bytes(mcu_image.build(MCU_NEW, b"demo firmware 1.4.0\n" * 600))
            images.append(ImageInput(fw, None, TargetSpec("smp-serial", "mcu0", "mcuboot",
                                                          "1.4.0")))
        pki = self.workdir / "pki"
        signing = load_signing_key(pki / "signer.key", pki / "signer.pem")
        self.bundle = out / f"ferry-demo-{NEW_VERSION}.swu"
        create_bundle(self.bundle, signing=signing, version=NEW_VERSION,
                      compatible=[COMPATIBLE], images=images)
        self.ui.info(f"signed with the dev PKI in {pki}: {self.bundle} "
                     f"({self.bundle.stat().st_size // 1024} KiB)")

    def _assign(self) -> None:
        assert self.bundle is not None
        self.ui.step(5, "operator: upload the bundle to goosebit and assign it to the gateway")
        sw = self.goosebit.upload(self.bundle)
        self.goosebit.assign(CONTROLLER_ID, sw)
        self.ui.info(f"PUT /api/v1/software -> software {sw}; PATCH /api/v1/devices "
                     f"assigns it to {CONTROLLER_ID}")

    def _deploy(self) -> Any:
        self.ui.step(6, "gateway: poll, download, verify, install, reboot, health check, "
                     "commit, flash targets, report")
        last = None
        for _ in range(20):
            res = self.runner.step()
            if res.event == "idle":
                time.sleep(min(res.sleep, 1.0))
                continue
            words = {"rebooting": "installed; the new slot is on trial until ferry's boot "
                                  "check commits it",
                     "finished": f"action {res.action_id} closed: {res.detail}",
                     "waiting": res.detail}
            self.ui.info(words.get(res.event, f"{res.event} {res.detail}"))
            last = res
            if res.event == "finished":
                break
        return last

    def _ending(self, last: Any) -> bool:
        from ferry.daemon.backend.health import render_text

        self.ui.step(7, "the outcome: ferry status (combined health) beside goosebit's view")
        health = self.pipeline.health()
        cmd = f"ferry --config {self.gateway.config_path} status"
        try:
            from ferry.daemon.cli.status import collect_standalone, render

            text = render(collect_standalone(str(self.gateway.config_path)))
        except (ImportError, FerryError) as exc:
            self.ui.note(f"'ferry status' is not usable here ({exc}); showing the health model")
            text = render_text(health)
        left = [f"$ {cmd}", *text.splitlines()]
        dev = self.goosebit.device(CONTROLLER_ID)
        log = self.goosebit.log(CONTROLLER_ID).strip().splitlines()
        right = ["goosebit: device " + CONTROLLER_ID, "-" * (17 + len(CONTROLLER_ID)),
                 f"state:      {dev.get('last_state')}",
                 f"sw_version: {dev.get('sw_version')}",
                 f"assigned:   {(dev.get('assigned_software') or {}).get('version')}",
                 f"progress:   {dev.get('progress')}",
                 f"hardware:   {(dev.get('hardware') or {}).get('revision')}",
                 "action log:", *[f"  {line}" for line in log[-8:]]]
        width = shutil.get_terminal_size((80, 24)).columns
        colw = max(len(x) for x in left) + 3
        if width >= colw + max(len(x) for x in right):
            for i in range(max(len(left), len(right))):
                lt = left[i] if i < len(left) else ""
                rt = right[i] if i < len(right) else ""
                print(lt.ljust(colw) + rt)
        else:
            print("\n".join(left))
            print()
            print("\n".join(right))
        g = health.gateway
        mcu = next((t for t in health.targets if t.name == "mcu0"), None)
        if self.args.fail == "health":
            ok = (last is not None and last.detail == "failure" and g.booted_slot == "A"
                  and g.version == OLD_VERSION and dev.get("last_state") == "Error")
            story = ("the new rootfs failed its health check: the gateway rolled back to "
                     f"slot A ({OLD_VERSION}), the MCU was left alone, and goosebit shows "
                     "the failure with its reason")
        else:
            ok = (last is not None and last.detail == "success" and g.booted_slot == "B"
                  and g.committed and g.version == NEW_VERSION
                  and dev.get("last_state") == "Finished"
                  and (mcu is None or mcu.version.startswith("1.4")))
            story = (f"the gateway runs {NEW_VERSION} from slot B, committed"
                     + (", and mcu0 runs firmware 1.4.0" if mcu is not None else "")
                     + "; goosebit shows the deployment finished")
        print()
        print(("DEMO OK: " + story) if ok else "DEMO FAILED: the story did not end as "
              "expected; see the lines above and the logs in " + str(self.workdir))
        return ok

    # -- the second act: the MCU as a controller of its own ----------------------------------

    def _act_two(self) -> bool:
        from ferry.daemon.backend.controllers import device_ids
        from ferry.daemon.backend.devices import DevicePoller
        from ferry.daemon.config import load_config
        from ferry.daemon.install.pipeline import make_context

        config = load_config(self.gateway.config_path)
        cid = next(c for c, tc in device_ids(config).items() if tc.name == "mcu0")
        self.ui.step(8, f"operator: the MCU as a device of its own in goosebit ({cid})")
        self.goosebit.register_device(cid, self.mcu_token)
        refused = self._poll_without_token(config, cid)
        self.ui.info("goosebit 0.2.12 reads only TargetToken (no GatewayToken): device auth "
                     f"is in lax mode and PUT /api/v1/devices gave {cid} a token of its "
                     f"own, [[target]] target_token in ferry.toml; a poll without it: "
                     f"{refused}")
        ctx = make_context(config, progress=self._progress)
        self.progress_seen.clear()
        poller = DevicePoller(config, ctx, log=lambda m: None)
        poller.step()
        row = poller.status()["mcu0"]
        self.ui.info(f"ferry polls {cid} with its TargetToken: {row['backend']}; its "
                     "configData (transport, address, running version) went up")
        gw_before = self.goosebit.device(CONTROLLER_ID)
        bundle = self._build_mcu_bundle()
        self.ui.step(9, f"operator: a target-only bundle (MCU firmware {MCU_ALONE_VERSION}, "
                     "no rootfs) assigned to the MCU alone")
        sw = self.goosebit.upload(bundle)
        self.goosebit.assign(cid, sw)
        self.ui.info(f"software {sw} assigned to {cid}; the gateway's own entry is not "
                     "touched")
        self.ui.step(10, "the MCU's controller: poll, download, verify, flash, report; "
                     "both goosebit views")
        st = poller.states[cid]
        deadline = time.monotonic() + 120
        while not st.last_action and time.monotonic() < deadline:
            st.next_poll = min(st.next_poll, time.time())
            poller.step()
            if not st.last_action:
                time.sleep(0.5)
        self.ui.info(f"action {st.last_action or '(none closed)'}")
        return self._ending_two(cid, gw_before)

    def _poll_without_token(self, config: Any, cid: str) -> str:
        from dataclasses import replace

        from ferry.daemon.backend import ddi

        settings = replace(ddi.DdiSettings.from_config(config.backend), controller_id=cid,
                           target_token="", gateway_token="")
        try:
            ddi.DdiClient(settings).poll()
        except ddi.DdiHttpError as exc:
            return f"HTTP {exc.status}, refused"
        except ddi.DdiError as exc:
            return f"failed ({exc})"
        return "ANSWERED (device auth is off?)"

    def _build_mcu_bundle(self) -> Path:
        from ferry.packaging.description import TargetSpec
        from ferry.packaging.writer import ImageInput, create_bundle, load_signing_key
        from ferry.sim.mcu import image as mcu_image

        out = self.workdir / "bundles"
        fw = out / f"mcu0-{MCU_ALONE_VERSION}.bin"
        fw.write_bytes(mcu_image.build(MCU_ALONE, b"demo firmware 1.5.0\n" * 600))
        pki = self.workdir / "pki"
        bundle = out / f"ferry-demo-mcu0-{MCU_ALONE_VERSION}.swu"
        create_bundle(bundle, signing=load_signing_key(pki / "signer.key", pki / "signer.pem"),
                      version=MCU_ALONE_VERSION, compatible=[COMPATIBLE],
                      images=[ImageInput(fw, None, TargetSpec("smp-serial", "mcu0", "mcuboot",
                                                              MCU_ALONE_VERSION))])
        return bundle

    def _view(self, device: str) -> list[str]:
        dev = self.goosebit.device(device)
        log = self.goosebit.log(device).strip().splitlines()
        return ["goosebit: device " + device, "-" * (17 + len(device)),
                f"state:      {dev.get('last_state')}",
                f"sw_version: {dev.get('sw_version')}",
                f"assigned:   {(dev.get('assigned_software') or {}).get('version')}",
                "action log:", *[f"  {line}" for line in log[-6:]]]

    def _ending_two(self, cid: str, gw_before: dict[str, Any]) -> bool:
        from ferry.daemon.backend.health import transport_inspect

        left, right = self._view(CONTROLLER_ID), self._view(cid)
        colw = max(len(x) for x in left) + 3
        if shutil.get_terminal_size((80, 24)).columns >= colw + max(len(x) for x in right):
            for i in range(max(len(left), len(right))):
                lt = left[i] if i < len(left) else ""
                print(lt.ljust(colw) + (right[i] if i < len(right) else ""))
        else:
            print("\n".join(left) + "\n\n" + "\n".join(right))
        gw, mcu = self.goosebit.device(CONTROLLER_ID), self.goosebit.device(cid)
        health = self.pipeline.health()
        tc = next(t for t in self.pipeline.config.targets if t.name == "mcu0")
        running = transport_inspect(tc).version
        same = all(gw.get(k) == gw_before.get(k) for k in ("sw_version", "last_state"))
        ok = (mcu.get("last_state") == "Finished" and mcu.get("sw_version") == MCU_ALONE_VERSION
              and running.startswith(MCU_ALONE_VERSION) and same
              and health.gateway.booted_slot == "B" and health.gateway.version == NEW_VERSION)
        print()
        print(f"ACT TWO OK: mcu0 runs {running} and its goosebit entry shows it finished; the "
              f"gateway's entry is unchanged ({gw.get('sw_version')}, {gw.get('last_state')})"
              if ok else "ACT TWO FAILED: the MCU's own deployment did not end as expected; "
              f"see the lines above and the logs in {self.workdir}")
        return ok

    def _keep(self) -> None:
        gw = self.gateway
        cfg = gw.config_path
        print(f"""
Everything keeps running (Ctrl-C stops it). To explore:
  goosebit UI:     {self.goosebit.url}/ui  (user {_admin()[0]}, password {_admin()[1]})
  ferry status:    FERRY_BOOT_ID_PATH={gw.boot_id_path} ferry --config {cfg} status
  ferry history:   ferry --config {cfg} history
  boot log:        {gw.root / 'boot.log'}
  goosebit log:    {self.goosebit.log_path}
  U-Boot env:      fw_printenv -c {gw.root / 'fw_env.config'}
  the MCU:         {self.mcu.port if self.mcu else '(none)'} (smp-serial, 115200 baud)
The gateway keeps polling goosebit: assign another bundle there and watch it install.""")
        stop = threading.Event()
        t = threading.Thread(target=self.runner.run, args=(stop,), daemon=True)
        t.start()
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("\nstopping")
        finally:
            stop.set()


def _admin() -> tuple[str, str]:
    from ferry.sim.goosebit import ADMIN

    return ADMIN


def run(args: argparse.Namespace) -> int:
    if args.dir:
        workdir = Path(args.dir).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        if any(workdir.iterdir()):
            raise DemoError(f"{workdir} is not empty; give an empty or new directory")
        temp = False
    else:
        workdir = Path(tempfile.mkdtemp(prefix="ferry-demo-"))
        temp = True
    ui = Display(steps=STEPS if args.fail else STEPS_TWO_ACTS)
    print("ferry demo: one bundle, from the operator's click to every device behind the "
          "gateway" + (" (with a failing health check)" if args.fail else ""))
    demo = Demo(args, ui, workdir)
    try:
        return demo.run()
    except FerryError as exc:
        print(f"\nferry demo: {exc}", file=sys.stderr)
        print(f"ferry demo: files and logs are in {workdir}", file=sys.stderr)
        temp = False
        return exitcodes.FAILED
    finally:
        for fn in reversed(demo.cleanup):
            try:
                fn()
            except Exception as exc:  # cleanup goes on whatever one part says
                print(f"ferry demo: cleanup: {exc}", file=sys.stderr)
        os.environ.pop("FERRY_BOOT_ID_PATH", None)
        if temp and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


class DemoError(FerryError):
    exit_code = exitcodes.USAGE
