"""``ferry install SOURCE [--force]``: install a bundle from a path or an http(s) URL.

Standalone for now: it reads the gateway config (``--config``), runs the install
pipeline in this process and reboots through the configured command or systemd.
``--resume`` continues a deployment a crash or a reboot interrupted (what ferryd does
at start), so a technician can finish one by hand.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ferry.daemon.cli import exitcodes
from ferry.daemon.cli.progress import ProgressBar

PHASE_WORDS = {"write": "writing slot", "stage": "staging", "activate": "activating",
               "reboot": "rebooting"}


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "install",
        help="install a bundle (.swu) from a path or an http(s) URL",
        description="Verify a signed bundle, write its rootfs into the inactive slot, stage "
        "its target firmware, activate the slot and reboot. After the reboot ferry checks "
        "health and commits or rolls back.",
    )
    p.add_argument("source", nargs="?", help="bundle path or http(s) URL")
    p.add_argument("--force", action="store_true",
                   help="allow a downgrade or the same version (never below [install] "
                   "min_version)")
    p.add_argument("--resume", action="store_true",
                   help="continue the deployment a crash or reboot interrupted")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="print the deployment as JSON at the end")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.source and not args.resume:
        print("ferry install: give a bundle path or URL, or --resume", file=sys.stderr)
        return exitcodes.USAGE
    if not args.config and not args.resume:
        return run_via_ferryd(args)
    # Only the standalone install pays for the pipeline's imports (journal, sqlite3,
    # packaging): a third of the CPU of a client that just hands the bundle to ferryd.
    from ferry.daemon.config import DEFAULT_PATH, load_config
    from ferry.daemon.install.pipeline import install, make_context, resume

    config = load_config(args.config or DEFAULT_PATH)
    bars: dict[str, ProgressBar] = {}
    quiet = bool(getattr(args, "json", False))

    def progress(phase: str, done: int, total: int) -> None:
        if quiet or total <= 1:
            return
        bar = bars.get(phase)
        if bar is None:
            bar = bars[phase] = ProgressBar(PHASE_WORDS.get(phase, phase), total)
        bar.update(done)

    ctx = make_context(config, progress=progress)
    if args.resume:
        from ferry.daemon.service.fdsource import UNRESUMABLE, fail_unresumable

        failed = fail_unresumable(ctx)
        if failed is not None:
            print(f"ferry install: deployment {failed} failed: {UNRESUMABLE}",
                  file=sys.stderr)
            return exitcodes.FAILED
        dep = resume(ctx)
        if dep is None:
            print("ferry install: no deployment to resume")
            return exitcodes.OK
    else:
        dep_id = install(config, args.source, force=args.force, ctx=ctx)
        dep = ctx.journal.get(dep_id)
    if quiet:
        import json

        print(json.dumps(dep.as_dict(), indent=2, sort_keys=True))
    else:
        print(describe(dep))
    if dep.result in ("failure", "rolled-back", "cancelled"):
        return exitcodes.FAILED
    return exitcodes.OK


def run_via_ferryd(args: argparse.Namespace) -> int:
    """Hand the install to ferryd and follow its Progress; Ctrl-C detaches only."""
    from ferry.daemon.cli import dbus_client as client

    source = args.source  # a local file is opened here, with our rights (dbus_client)
    quiet = bool(getattr(args, "json", False))
    current: dict[str, Any] = {"phase": "", "bar": None}
    events = {"activate": "activating the new slot", "reboot": "asking for the reboot"}

    def progress(pct: int, phase: str, depth: int) -> None:
        if quiet or phase in ("", "installing", "done", "failed", "cancelled"):
            return
        if phase != current["phase"]:
            if current["bar"] is not None:
                current["bar"].finish()  # one finished line per phase
                current["bar"] = None
            current["phase"] = phase
            if phase in events:
                print(events[phase], file=sys.stderr)
            else:
                current["bar"] = ProgressBar(PHASE_WORDS.get(phase, phase), 100,
                                             unit="percent")
        if current["bar"] is not None:
            current["bar"].update(pct)

    try:
        result, error = client.install(source, force=args.force, on_progress=progress)
    except KeyboardInterrupt:
        print("\nferry: detached; the install goes on in ferryd. Follow it with "
              "'ferry status', stop it with 'ferry cancel'.", file=sys.stderr)
        return exitcodes.INTERRUPTED
    if current["bar"] is not None:
        current["bar"].finish()
    outcome = {0: "ok", 1: "failed", 2: "cancelled", client.RESULT_DAEMON_GONE: "interrupted"}.get(
        result, str(result))
    if quiet:
        import json

        print(json.dumps({"result": outcome, "error": error}))
    elif result == 0:
        print("ferry: installed; the gateway reboots into the new slot, then checks "
              "health and commits (see 'ferry status')")
    else:
        print(f"ferry: install {outcome}: {error}", file=sys.stderr)
    return {0: exitcodes.OK, 2: exitcodes.CANCELLED}.get(result, exitcodes.FAILED)


def describe(dep: Any) -> str:
    slot = f" into slot {dep.to_slot}" if dep.to_slot else ""
    if dep.result == "success":
        return f"deployment {dep.id}: {dep.version} installed{slot} and committed"
    if dep.result is not None:
        return f"deployment {dep.id}: {dep.result}: {dep.error or ''}".rstrip(": ")
    if dep.state == "rebooting":
        return f"deployment {dep.id}: {dep.version} written{slot}; rebooting to try it"
    return f"deployment {dep.id}: {dep.state}"
