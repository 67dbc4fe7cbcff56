"""One FUOTA campaign to one multicast group, from clock sync to the last top-up.

The steps follow TS005's class C flow: (1) clock sync (TS003), (2) McGroupSetup,
(3) FragSessionSetup, (4) McClassCSessionReq, all unicast and each waiting for the
node's answer (class A downlinks ride on uplinks, so waits are long in the field);
(5) at SessionTime the fragments go to the group, paced by the duty cycle; (6) status
rounds (FragSessionStatusReq to the group) and parity top-ups until every node has
rebuilt the block or the class C window closes. Before (3) each node's TS004 version
is read (PackageVersionReq): v2 nodes get the v2 FragSessionSetupReq (SessionCnt, MIC,
AckReception) and say themselves when the block is rebuilt (FragDataBlockReceivedReq).

When is a node done? A reference node (LoRaMac-node ``LmhpFragmentation.c`` +
``FragDecoder.c``) answers FragSessionStatusReq with NbFragReceived = the index N of the
last fragment it processed, and MissingFrag = the data fragments it lost, a number parity
recovery never lowers. So a v1 node that lost one data fragment answers MissingFrag 1
forever, rebuilt or not. What does change: once its decoder has finished it stops
processing fragments, so its N stops moving while ferry keeps sending. ferry counts a
v1 node done when its N is at least ``gap`` below the last fragment sent (all of those
lost has probability p^gap <= 1e-3 at the node's measured loss), and it has heard at
least MissingFrag parity fragments. MatrixError (lost more data fragments than its
decoder's FRAG_MAX_REDUNDANCY: the reference then calls the session finished) is a
failure, never "done". v2 nodes are done only on their FragDataBlockReceivedReq, and
failed if it says the MIC did not match.

A node that fails a setup step is dropped from the campaign and reported; the others
carry on, so one dead node does not cost the whole group its update.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from ferry.proxy.lora import clocksync, fragmentation, multicast, package
from ferry.proxy.lora.airtime import EU868_RX2_DUTY_CYCLE, EU868_RX2_FREQUENCY, downlink_airtime
from ferry.proxy.lora.errors import FrameError, LoraError
from ferry.proxy.lora.netserver import Clock, MulticastGroup, NetworkServer, UplinkLike
from ferry.proxy.lora.scheduler import (
    DutyCycle,
    NodeLimits,
    Plan,
    loss_from_status,
    plan,
    top_up_for,
)

Log = Callable[[str], None]
TOP_UP_MAX_LOSS = 0.5
STATUS_ASKS = 3
FALSE_DONE = 1e-4  # accepted chance that a v1 node's silent tail was loss, not completion
MIN_LOSS_FOR_GAP = 0.05
PRIOR_FRAMES = 20
CONFIRM_FIRST_SD = 2.5  # bench/lora.py: best p95 of fragments sent over 0..3


def _class_c_refusal(a: object) -> str:
    if not isinstance(a, multicast.McClassCSessionAns):
        return str(a)
    why = []
    if a.dr_error:
        why.append("data rate not supported")
    if a.freq_error:
        why.append("frequency not supported")
    if a.undefined:
        why.append("multicast group undefined, or SessionTime already past on the node's "
                   "clock (LoRaMac-node answers both with bit 4): raise start_margin above "
                   "the nodes' uplink interval")
    return "; ".join(why)


def done_gap(loss: float) -> int:
    """Fragments after a v1 node's last index that must go unheard to call it finished."""
    p = min(max(loss, MIN_LOSS_FOR_GAP), 0.9)
    return max(2, math.ceil(math.log(FALSE_DONE) / math.log(p)))


def posterior_gap(lost: float, heard: float) -> int:
    """The done gap for a node whose loss is known only from `lost` of `lost + heard` frames.

    The loss p itself is uncertain, so the false-done chance of a gap g is p^g averaged
    over p's Beta(lost + ½, heard + ½) posterior: E[p^g] = Π_{i<g} (a+i)/(a+b+i). That
    is the chance an unfinished node with this record lost all g frames, with nothing
    assumed about p beyond what it reported; it replaces the p^g at p's upper 95 %
    bound, which counts the uncertainty twice (at 20 % loss and M = 429 it asked for 7
    frames where 6 give 7e-5). Never below ``done_gap(MIN_LOSS_FOR_GAP)``.
    """
    a, b = max(lost, 0.0) + 0.5, max(heard, 0.0) + 0.5
    floor = done_gap(MIN_LOSS_FOR_GAP)
    risk, g = 1.0, 0
    while g < 64:
        risk *= (a + g) / (a + b + g)
        g += 1
        if risk <= FALSE_DONE and g >= floor:
            return g
    return g


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
    limits: NodeLimits = field(default_factory=NodeLimits)
    ts004_version: int | None = None  # None: ask each node (PackageVersionReq)
    session_cnt: int = 1  # v2 SessionCnt: above the last one the nodes accepted
    done_gap: int | None = None  # None: from each node's loss (done_gap())


@dataclass
class NodeResult:
    dev_eui: str
    state: str = "pending"  # complete | incomplete | failed
    message: str = ""
    version: int = 1  # TS004 version from PackageVersionAns
    last_index: int = 0  # NbFragReceived: N of the last fragment it processed
    missing: int = -1  # MissingFrag: data fragments it lost (parity does not lower it)
    loss: float = 0.0  # data fragments lost / data fragments up to its last index
    sent_seen: int = 0  # fragments sent when it last answered
    need: int = 0  # parity ferry last planned for it (for a round it stays silent)
    awaited_block_req: bool = False  # v2: a round went by waiting for its Req already


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
    session_cnt: int = 0  # the v2 SessionCnt this campaign used
    bursts: list[int] = field(default_factory=list)  # fragments per broadcast: first, top-ups

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
        self._last_version: dict[str, int] = {}
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
                for ans in fragmentation.parse_uplink(up.payload):
                    if isinstance(ans, fragmentation.FragDataBlockReceivedReq):
                        # the node resends until it hears this (STM32CubeWL: every 1.5 s)
                        self.ns.send_unicast(eui, fragmentation.PORT,
                                             fragmentation.frag_data_block_received_ans(
                                                 ans.frag_index))
                        self._block_received(eui, ans)
                        continue
                    if isinstance(ans, package.PackageVersionAns) and \
                            ans.package_identifier == fragmentation.PACKAGE_IDENTIFIER:
                        self._last_version[eui] = ans.package_version
                    self.answers[eui].append(ans)
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

    def _block_received(self, eui: str, msg: fragmentation.FragDataBlockReceivedReq) -> None:
        report: Report | None = getattr(self, "report", None)
        node = report.nodes.get(eui) if report else None
        if node is None or node.state != "pending" or msg.frag_index != self.opts.frag_index:
            return
        if msg.mic_error:
            self._fail(eui, "rebuilt a block whose MIC does not match "
                       "(FragDataBlockReceivedReq): the block is corrupt, do not boot it")
        else:
            node.state = "complete"
            node.message = "FragDataBlockReceivedReq: block rebuilt, MIC verified"

    def _unicast_step(self, active: list[str], what: str, port: int,
                      frame: Callable[[str], bytes], kind: type,
                      ok: Callable[[object], bool],
                      refusal: Callable[[object], str] | None = None) -> list[str]:
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
                        why = refusal(ans) if refusal else str(ans)
                        self._fail(eui, f"{what} refused: {why}")
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
        p = plan(len(image), o.dr, o.loss_estimate, frag_size=o.frag_size, limits=o.limits)
        self.report = Report(plan=p, started=self.clock.now(), session_cnt=o.session_cnt)
        self.report.nodes = {e: NodeResult(e) for e in self.devices}
        enc = fragmentation.Encoder(image, p.frag_size)
        active = sorted(self.devices)
        red = o.limits.max_redundancy
        lp = min(max(o.loss_estimate, 0.0), 0.9)
        if red is not None and p.m * lp + 1.645 * math.sqrt(p.m * lp * (1 - lp)) > red:
            self.log(f"warning: at {lp:.0%} loss a node often loses more than {red} of the "
                     f"{p.m} data fragments, its FRAG_MAX_REDUNDANCY: those nodes end with "
                     "MatrixError, whatever parity follows")

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

        # TS004 version per node: the setup frame and the completion signal depend on it
        active = self._versions(active)
        self.progress(0, len(image), "multicast setup")
        active = self._unicast_step(
            active, "McGroupSetupReq", multicast.PORT, setup_frame, multicast.McGroupSetupAns,
            lambda a: isinstance(a, multicast.McGroupSetupAns) and not a.id_error)
        # (3) fragmentation session
        active = self._unicast_step(
            active, "FragSessionSetupReq", fragmentation.PORT,
            lambda e: self._frag_setup_frame(e, image, p), fragmentation.FragSessionSetupAns,
            lambda a: isinstance(a, fragmentation.FragSessionSetupAns) and a.ok,
            lambda a: self._setup_refusal(a, p))
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
            lambda a: isinstance(a, multicast.McClassCSessionAns) and a.ok, _class_c_refusal)
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

    def _versions(self, active: list[str]) -> list[str]:
        o = self.opts
        if o.ts004_version is not None:
            for eui in active:
                self.report.nodes[eui].version = o.ts004_version
            return active
        def ok(a: object) -> bool:
            return (isinstance(a, package.PackageVersionAns)
                    and a.package_identifier == fragmentation.PACKAGE_IDENTIFIER
                    and a.package_version in fragmentation.SUPPORTED_VERSIONS)

        def refusal(a: object) -> str:
            if isinstance(a, package.PackageVersionAns):
                return (f"package {a.package_identifier} version {a.package_version}; ferry "
                        f"speaks TS004 (package 3) versions 1 and 2")
            return str(a)

        active = self._unicast_step(active, "PackageVersionReq (TS004)", fragmentation.PORT,
                                    lambda _e: package.package_version_req(),
                                    package.PackageVersionAns, ok, refusal)
        for eui in active:
            self.report.nodes[eui].version = self._last_version.get(eui, 1)
            self.log(f"{eui}: TS004 v{self.report.nodes[eui].version}")
        return active

    def _frag_setup_frame(self, eui: str, image: bytes, p: Plan) -> bytes:
        o = self.opts
        version = self.report.nodes[eui].version
        mic = 0
        if version == 2:
            mic = fragmentation.data_block_mic(self.devices[eui].root_key, image,
                                               o.session_cnt, o.frag_index, o.descriptor)
        return fragmentation.frag_session_setup_req(fragmentation.FragSessionSetup(
            o.frag_index, p.m, p.frag_size, p.padding, o.descriptor, 1 << o.mc_group_index,
            fragmentation.FRAG_ALGO_XOR, o.block_ack_delay, version, o.session_cnt, mic))

    def _setup_refusal(self, a: object, p: Plan) -> str:
        if not isinstance(a, fragmentation.FragSessionSetupAns):
            return str(a)
        why = "; ".join(a.problems())
        if a.not_enough_memory:
            why += (f". ferry asked for {p.m} fragments of {p.frag_size} B "
                    f"({p.m * p.frag_size} B): set the target options frag_max_nb / "
                    "frag_max_size to the node build's FRAG_MAX_NB / FRAG_MAX_SIZE (stock "
                    "LoRaMac-node: 21 / 50) so ferry plans within them")
        if a.session_cnt_replay:
            why += f" (ferry sent SessionCnt {self.opts.session_cnt}; raise option session_cnt)"
        return why

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
        """Send fragments first..last; stop early once no node is waited for (v2 nodes
        say it themselves, FragDataBlockReceivedReq, while the stream runs)."""
        sent = 0
        for n in range(first, last + 1):
            if not any(x.state == "pending" for x in self.report.nodes.values()):
                self.log(f"every node done after fragment {n - 1}: stopping the burst")
                break
            frame = fragmentation.data_fragment(self.opts.frag_index, n, enc.fragment(n))
            if not self._send_group(frame, end_unix):
                self.log("class C window closed before all fragments went out")
                break
            sent += 1
            self.report.fragments_sent = n
            if n == first:
                self.report.bursts.append(0)
            self.report.bursts[-1] += 1
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
                return all(e in answered or self.report.nodes[e].state != "pending"
                           for e in waiting)

            # A status request is a multicast frame and can be lost like any other; ask
            # again (2 bytes, cheap) before topping up blind for a silent node.
            for _ask in range(STATUS_ASKS):
                if not self._send_group(req, end_unix):
                    break
                self.report.status_rounds += 1
                self._pump_until(self.clock.now() + o.status_timeout, collect)
                if collect():
                    break
            sent = self.report.fragments_sent
            worst, confirm, sure_need = 0, 0, False
            for eui in waiting:
                node = self.report.nodes[eui]
                if node.state != "pending":
                    continue  # a v2 node's FragDataBlockReceivedReq came in meanwhile
                a = answered.get(eui)
                if a is None:
                    # silent (its answer or our request lost): what it needed last time,
                    # or a tenth of the block if it never answered
                    worst = max(worst, node.need if node.missing >= 0
                                else top_up_for(p.m // 10 + 1, loss))
                    sure_need = True
                    continue
                need, spread, gap_short = self._judge(node, a, sent, p.m)
                # a v1 node whose last index is within the gap and whose need is within
                # CONFIRM_FIRST_SD of nothing may well be finished: its parity losses are
                # known only on average, so most such nodes are
                maybe_done = gap_short > 0 and need <= CONFIRM_FIRST_SD * max(spread, 1.0)
                if node.state == "pending":
                    # a node losing more than half gets its rest in the next round
                    loss = max(loss, min(node.loss, TOP_UP_MAX_LOSS))
                    node.need = max(top_up_for(need, min(self._loss_belief(node, p.m),
                                                         TOP_UP_MAX_LOSS), spread), gap_short)
                    worst = max(worst, node.need)
                    confirm = max(confirm, gap_short)
                    sure_need = sure_need or (node.need > 0 and not maybe_done)
            if worst == 0 and confirm == 0:
                if any(self.report.nodes[e].state == "pending" for e in waiting):
                    # v2 nodes that look finished: their FragDataBlockReceivedReq decides
                    self._pump_until(self.clock.now() + o.status_timeout,
                                     lambda w=waiting: all(  # type: ignore[misc]
                                         self.report.nodes[e].state != "pending" for e in w))
                continue
            if round_no == o.max_rounds:
                break  # that status round only confirmed the last top-up
            # Confirm first: when every node still waited for may be finished, send
            # only the frames that prove it; a node that was not finished shows it by
            # its index moving, and gets its top-up in the next round (one status round
            # of wall time instead of a top-up sized for a need it mostly no longer has)
            extra = max(worst, confirm) if sure_need or confirm == 0 else confirm
            self.log(f"top-up: {worst} parity for the neediest node, {confirm} to confirm a "
                     f"finished v1 node; sending {extra} (loss up to {loss:.2f})")
            first = self.report.fragments_sent + 1
            last = min(first + extra - 1, fragmentation.MAX_N)
            if first > last or self._broadcast(enc, first, last, total, end_unix) == 0:
                break

    def _loss_belief(self, node: NodeResult, m: int) -> float:
        """The node's loss: its data-fragment loss, shrunk towards the planned loss by
        PRIOR_FRAMES pseudo-frames, so 2 lost of M = 2 reads as ~0.3, not 1.0."""
        seen = min(node.last_index, m)
        lost = node.loss * seen
        p = (lost + PRIOR_FRAMES * self.opts.loss_estimate) / (seen + PRIOR_FRAMES)
        return max(p, MIN_LOSS_FOR_GAP)

    def _judge(self, node: NodeResult, a: fragmentation.FragSessionStatusAns, sent: int,
               m: int) -> tuple[float, float, int]:
        """Read one FragSessionStatusAns.

        Returns the independent fragments the node still needs (an estimate), that
        estimate's standard deviation, and the frames still to send so a finished v1
        node can be told from one whose last fragments were lost.
        """
        node.last_index, node.missing, node.sent_seen = a.last_index, a.missing, sent
        node.loss = loss_from_status(m, a.last_index, a.missing)
        if a.matrix_error:
            limit = self.opts.limits.max_redundancy
            self._fail(node.dev_eui, (
                f"MatrixError: lost {a.missing} data fragments, more than its decoder can "
                "recover" + (f" (frag_max_redundancy {limit})" if limit is not None else
                             " (FRAG_MAX_REDUNDANCY)") + "; the reference calls that session "
                "finished, but the block is not rebuilt"))
            return 0, 0, 0
        # fragments after its last index it never heard: data ones count as lost too
        tail_data = max(0, min(sent, m) - a.last_index)
        lost = a.missing + tail_data
        p_hat = self._loss_belief(node, m)
        # the gap is judged over the whole posterior of the node's loss, not at its
        # estimate: an optimistic p is what would call a node with a lost tail done
        seen = min(a.last_index, m)
        lost_seen = min(a.missing, seen) + PRIOR_FRAMES * self.opts.loss_estimate
        gap_needed = self.opts.done_gap or posterior_gap(
            lost_seen, seen + PRIOR_FRAMES - lost_seen)
        gap = sent - a.last_index
        parity_heard_max = max(0, a.last_index - m)
        frozen = a.last_index > m and gap >= gap_needed and parity_heard_max >= a.missing
        if frozen and node.version == 1:
            node.state = "complete"
            node.message = (f"rebuilt (NbFragReceived stopped at {a.last_index} while "
                            f"fragments ran to {sent}; lost {a.missing} data fragments)")
            return 0, 0, 0
        if frozen and not node.awaited_block_req:
            node.awaited_block_req = True
            return 0, 0, 0  # v2: give its FragDataBlockReceivedReq a round to arrive
        # of the parity up to its last index it heard about (1 − p); the rest is the need
        need = max(0.0, lost - parity_heard_max * (1 - p_hat))
        spread = math.sqrt(parity_heard_max * p_hat * (1 - p_hat) + tail_data)
        confirm = max(0, gap_needed - gap) if node.version == 1 else 0
        if need == 0 and confirm == 0:
            need = 1
        return need, spread, confirm

    def _finish(self, message: str) -> Report:
        self.report.finished = self.clock.now()
        for node in self.report.nodes.values():
            if node.state == "pending":
                node.state = "incomplete"
                node.message = message or (
                    "never answered FragSessionStatusReq" if node.missing < 0 else
                    f"no sign it rebuilt the block: last fragment heard N={node.last_index}, "
                    f"lost {node.missing} data fragments")
        return self.report
