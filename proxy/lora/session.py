"""One FUOTA campaign to one multicast group, from clock sync to the last top-up.

The steps follow TS005's class C flow: (1) clock sync (TS003), (2) McGroupSetup,
(3) FragSessionSetup, (4) McClassCSessionReq, all unicast and each waiting for the
node's answer (class A downlinks ride on uplinks, so waits are long in the field);
(5) at SessionTime the fragments go to the group, paced by the duty cycle; (6) status
rounds (FragSessionStatusReq to the group) and parity top-ups until every node has
rebuilt the block or the class C window closes.

A node that fails a setup step is dropped from the campaign and reported; the others
carry on, so one dead node does not cost the whole group its update.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from ferry.proxy.lora import clocksync, fragmentation, multicast
from ferry.proxy.lora.airtime import EU868_RX2_DUTY_CYCLE, EU868_RX2_FREQUENCY, downlink_airtime
from ferry.proxy.lora.errors import FrameError, LoraError
from ferry.proxy.lora.netserver import Clock, MulticastGroup, NetworkServer, UplinkLike
from ferry.proxy.lora.scheduler import DutyCycle, Plan, loss_from_status, plan, top_up_for

Log = Callable[[str], None]
TOP_UP_MAX_LOSS = 0.5
STATUS_ASKS = 3


@dataclass(frozen=True)
class Device:
    dev_eui: str
    root_key: bytes  # GenAppKey (LoRaWAN 1.0.x) or AppKey (1.1)
    lorawan_1_1: bool = False


@dataclass
class Options:
    dr: int = 5
    frequency_hz: int = EU868_RX2_FREQUENCY
    duty_cycle: float = EU868_RX2_DUTY_CYCLE
    loss_estimate: float = 0.10  # until nodes report their own
    answer_timeout: float = 600.0  # per unicast step (class A: waits for an uplink)
    attempts: int = 3  # unicast resends to a silent node
    start_margin: float = 660.0  # SessionTime is this far after McClassCSessionReq is queued
    status_timeout: float = 40.0  # > 2^(BlockAckDelay+4) s, the nodes' answer spread
    max_rounds: int = 8
    frag_index: int = 0
    mc_group_index: int = 0
    descriptor: int = 0
    frag_size: int | None = None
    mc_addr: int | None = None
    mc_key: bytes | None = None
    block_ack_delay: int = 0


@dataclass
class NodeResult:
    dev_eui: str
    state: str = "pending"  # complete | incomplete | failed
    message: str = ""
    nb_received: int = 0
    missing: int = -1
    loss: float = 0.0  # over the fragments sent since its previous status answer
    sent_seen: int = 0  # fragments sent at its previous answer


@dataclass
class Report:
    plan: Plan
    fragments_sent: int = 0
    status_rounds: int = 0
    airtime: float = 0.0
    started: float = 0.0
    broadcast_started: float = 0.0  # SessionTime: the first fragment
    finished: float = 0.0
    nodes: dict[str, NodeResult] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.nodes) and all(n.state == "complete" for n in self.nodes.values())

    @property
    def wall_time(self) -> float:
        return self.finished - self.started


class Campaign:
    def __init__(self, ns: NetworkServer, clock: Clock, group_id: str, devices: list[Device],
                 opts: Options, *, log: Log | None = None,
                 progress: Callable[[int, int, str], None] | None = None) -> None:
        if not devices:
            raise LoraError("no LoRa devices in the group; list their DevEUIs in the target's "
                            "'devices' option")
        self.ns = ns
        self.clock = clock
        self.group_id = group_id
        self.devices = {d.dev_eui.lower(): d for d in devices}
        self.opts = opts
        self.log = log or (lambda _m: None)
        self.progress = progress or (lambda _d, _t, _m: None)
        self.answers: dict[str, list[object]] = {e: [] for e in self.devices}
        self.synced: set[str] = set()
        self.duty = DutyCycle(opts.duty_cycle, clock)

    # -- uplinks ------------------------------------------------------------------

    def _handle(self, up: UplinkLike) -> None:
        eui = up.dev_eui.lower()
        if eui not in self.devices:
            return
        try:
            if up.fport == clocksync.PORT:
                for msg in clocksync.parse_uplink(up.payload):
                    if isinstance(msg, clocksync.AppTimeReq):
                        # Synced once a request shows the node's clock within a second:
                        # an AppTimeAns can be lost, so having answered proves nothing.
                        gps = clocksync.unix_to_gps(up.received_at)
                        if abs(round(gps) - msg.device_time) <= 1:
                            self.synced.add(eui)
                        self.ns.send_unicast(eui, clocksync.PORT, clocksync.answer(msg, gps))
            elif up.fport == multicast.PORT:
                self.answers[eui].extend(multicast.parse_uplink(up.payload))
            elif up.fport == fragmentation.PORT:
                self.answers[eui].extend(fragmentation.parse_uplink(up.payload))
        except FrameError as err:
            self.log(f"{eui}: {err}")

    def _pump_until(self, deadline: float, done: Callable[[], bool] = lambda: False) -> None:
        while not done():
            left = deadline - self.clock.now()
            if left <= 0:
                return
            up = self.ns.receive(left)
            if up is not None:
                self._handle(up)

    def _take(self, eui: str, kind: type) -> object | None:
        for i, a in enumerate(self.answers[eui]):
            if isinstance(a, kind):
                return self.answers[eui].pop(i)
        return None

    def _unicast_step(self, active: list[str], what: str, port: int,
                      frame: Callable[[str], bytes], kind: type,
                      ok: Callable[[object], bool]) -> list[str]:
        """Send one request to every node and wait for answers; return the nodes that agreed."""
        pending = set(active)
        good: list[str] = []
        for _attempt in range(self.opts.attempts):
            if not pending:
                break
            for eui in sorted(pending):
                self.ns.send_unicast(eui, port, frame(eui))
            deadline = self.clock.now() + self.opts.answer_timeout

            def collect() -> bool:
                for eui in list(pending):
                    ans = self._take(eui, kind)
                    if ans is None:
                        continue
                    pending.discard(eui)
                    if ok(ans):
                        good.append(eui)
                    else:
                        self._fail(eui, f"{what} refused: {ans}")
                return not pending

            self._pump_until(deadline, collect)
        for eui in pending:
            self._fail(eui, f"no answer to {what} after {self.opts.attempts} attempts")
        return [e for e in active if e in good]

    def _fail(self, eui: str, message: str) -> None:
        node = self.report.nodes[eui]
        node.state, node.message = "failed", message
        self.log(f"{eui}: {message}")

    # -- the campaign -------------------------------------------------------------

    def run(self, image: bytes) -> Report:
        o = self.opts
        p = plan(len(image), o.dr, o.loss_estimate, frag_size=o.frag_size)
        self.report = Report(plan=p, started=self.clock.now())
        self.report.nodes = {e: NodeResult(e) for e in self.devices}
        enc = fragmentation.Encoder(image, p.frag_size)
        active = sorted(self.devices)

        # (1) clock sync: ask each node to send AppTimeReq; _handle answers it.
        self.progress(0, len(image), "clock sync")
        active = self._sync(active)
        # (2) multicast group with per-node encrypted McKey
        mc_key = o.mc_key or secrets.token_bytes(16)
        mc_addr = o.mc_addr if o.mc_addr is not None else int.from_bytes(
            secrets.token_bytes(4), "little")
        group = MulticastGroup(self.group_id, mc_addr, multicast.mc_app_s_key(mc_key, mc_addr),
                               multicast.mc_net_s_key(mc_key, mc_addr), o.dr, o.frequency_hz)
        self.ns.configure_multicast(group, active)

        def setup_frame(eui: str) -> bytes:
            d = self.devices[eui]
            ke = multicast.mc_ke_key(multicast.mc_root_key(d.root_key,
                                                           lorawan_1_1=d.lorawan_1_1))
            return multicast.mc_group_setup_req(multicast.McGroupSetup(
                o.mc_group_index, mc_addr, multicast.encrypt_mc_key(ke, mc_key), 0, 0xFFFFFFFF))

        self.progress(0, len(image), "multicast setup")
        active = self._unicast_step(
            active, "McGroupSetupReq", multicast.PORT, setup_frame, multicast.McGroupSetupAns,
            lambda a: isinstance(a, multicast.McGroupSetupAns) and not a.id_error)
        # (3) fragmentation session
        frag_req = fragmentation.frag_session_setup_req(fragmentation.FragSessionSetup(
            o.frag_index, p.m, p.frag_size, p.padding, o.descriptor, 1 << o.mc_group_index,
            fragmentation.FRAG_ALGO_XOR, o.block_ack_delay))
        active = self._unicast_step(
            active, "FragSessionSetupReq", fragmentation.PORT, lambda _e: frag_req,
            fragmentation.FragSessionSetupAns,
            lambda a: isinstance(a, fragmentation.FragSessionSetupAns) and a.ok)
        # (4) class C window: long enough for the planned fragments, their duty-cycle
        # pauses and a few status rounds, as a power of two seconds.
        per_frame = p.airtime / o.duty_cycle
        expected = 2 * p.initial * per_frame + o.max_rounds * o.status_timeout
        timeout_exp = min(15, max(0, math.ceil(math.log2(expected))))
        start_unix = self.clock.now() + o.start_margin
        session = multicast.McClassCSession(
            o.mc_group_index, round(clocksync.unix_to_gps(start_unix)), timeout_exp,
            o.frequency_hz, o.dr)
        frame = multicast.mc_class_c_session_req(session)
        active = self._unicast_step(
            active, "McClassCSessionReq", multicast.PORT, lambda _e: frame,
            multicast.McClassCSessionAns,
            lambda a: isinstance(a, multicast.McClassCSessionAns) and a.ok)
        if not active:
            return self._finish("no node completed the setup")
        end_unix = clocksync.gps_to_unix(session.session_time) + (1 << timeout_exp)
        # (5) wait for SessionTime (+1 s for clock error), then broadcast
        self._pump_until(clocksync.gps_to_unix(session.session_time) + 1.0)
        self.report.broadcast_started = self.clock.now()
        self._broadcast(enc, 1, p.initial, len(image), end_unix)
        # (6) status rounds and top-ups
        self._rounds(enc, active, p, len(image), end_unix)
        return self._finish("")

    def _sync(self, active: list[str]) -> list[str]:
        # Two transmissions: the second AppTimeReq, sent after the first answer, shows
        # whether the correction took.
        req = clocksync.force_device_resync_req(2)
        for _attempt in range(self.opts.attempts):
            missing = [e for e in active if e not in self.synced]
            if not missing:
                break
            for eui in missing:
                self.ns.send_unicast(eui, clocksync.PORT, req)
            self._pump_until(self.clock.now() + self.opts.answer_timeout,
                             lambda: all(e in self.synced for e in active))
        for eui in active:
            if eui not in self.synced:
                self._fail(eui, "no AppTimeReq after ForceDeviceResyncReq: clock not synced")
        return [e for e in active if e in self.synced]

    def _send_group(self, payload: bytes, end_unix: float) -> bool:
        air = downlink_airtime(len(payload), self.opts.dr)
        self._pump_until(self.duty.next_free)
        if self.clock.now() + air > end_unix:
            return False
        self.ns.send_multicast(self.group_id, fragmentation.PORT, payload)
        self.duty.record(air)
        self.report.airtime = self.duty.airtime
        return True

    def _broadcast(self, enc: fragmentation.Encoder, first: int, last: int, total: int,
                   end_unix: float) -> int:
        sent = 0
        for n in range(first, last + 1):
            frame = fragmentation.data_fragment(self.opts.frag_index, n, enc.fragment(n))
            if not self._send_group(frame, end_unix):
                self.log("class C window closed before all fragments went out")
                break
            sent += 1
            self.report.fragments_sent = n
            self.progress(min(n, enc.m) * enc.frag_size if n <= enc.m else total, total,
                          "fragments" if n <= enc.m else "parity")
        return sent

    def _rounds(self, enc: fragmentation.Encoder, active: list[str], p: Plan, total: int,
                end_unix: float) -> None:
        o = self.opts
        req = fragmentation.frag_session_status_req(o.frag_index, all_participants=True)
        loss = o.loss_estimate
        for round_no in range(o.max_rounds + 1):
            waiting = [e for e in active if self.report.nodes[e].state == "pending"]
            if not waiting:
                return
            for eui in waiting:
                while self._take(eui, fragmentation.FragSessionStatusAns) is not None:
                    pass
            answered: dict[str, fragmentation.FragSessionStatusAns] = {}

            def collect(waiting: list[str] = waiting,
                        answered: dict[str, fragmentation.FragSessionStatusAns] = answered
                        ) -> bool:
                for eui in waiting:
                    a = self._take(eui, fragmentation.FragSessionStatusAns)
                    if isinstance(a, fragmentation.FragSessionStatusAns):
                        answered[eui] = a
                return len(answered) == len(waiting)

            # A status request is a multicast frame and can be lost like any other; ask
            # again (2 bytes, cheap) before topping up blind for a silent node.
            for _ask in range(STATUS_ASKS):
                if not self._send_group(req, end_unix):
                    break
                self.report.status_rounds += 1
                self._pump_until(self.clock.now() + o.status_timeout, collect)
                if len(answered) == len(waiting):
                    break
            sent = self.report.fragments_sent
            worst = 0
            for eui in waiting:
                node = self.report.nodes[eui]
                a = answered.get(eui)
                if a is None:
                    worst = max(worst, node.missing if node.missing > 0 else p.m // 10 + 1)
                    continue
                # Loss over the last interval, so a node that joined late or came
                # out of a fade is judged on what it hears now.
                node.loss = loss_from_status(sent - node.sent_seen,
                                             a.nb_received - node.nb_received)
                node.nb_received, node.missing, node.sent_seen = a.nb_received, a.missing, sent
                if a.memory_error:
                    self._fail(eui, "node reports a memory error in the fragmentation session")
                elif a.missing == 0:
                    node.state = "complete"
                else:
                    worst = max(worst, a.missing)
                    # a node losing more than half gets its rest in the next round
                    loss = max(loss, min(node.loss, TOP_UP_MAX_LOSS))
            if worst == 0:
                continue
            if round_no == o.max_rounds:
                break  # that status round only confirmed the last top-up
            extra = top_up_for(worst, loss)
            self.log(f"top-up: worst node needs {worst}, sending {extra} parity (loss {loss:.2f})")
            first = self.report.fragments_sent + 1
            last = min(first + extra - 1, fragmentation.MAX_N)
            if first > last or self._broadcast(enc, first, last, total, end_unix) == 0:
                break

    def _finish(self, message: str) -> Report:
        self.report.finished = self.clock.now()
        for node in self.report.nodes.values():
            if node.state == "pending":
                node.state = "incomplete"
                node.message = message or (
                    f"still missing {node.missing} fragments" if node.missing > 0
                    else "never answered FragSessionStatusReq")
        return self.report
