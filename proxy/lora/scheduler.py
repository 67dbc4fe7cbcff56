"""How many fragments, how big, and when: the FUOTA session plan and the duty cycle.

- Fragment size: the largest DataFragment the multicast DR carries (N max − 3).
- Node limits: a node's decoder is built for at most FRAG_MAX_NB fragments of at most
  FRAG_MAX_SIZE bytes and recovers at most FRAG_MAX_REDUNDANCY lost data fragments
  (LoRaMac-node ``FragDecoder.h``; the stock build is 21 / 50 / 5). A session over the
  first two is refused ("not enough memory"), so the plan stays inside the limits the
  target's options give, or refuses with the numbers before anything is sent.
- Redundancy: enough parity that a node losing a fraction p of the fragments rebuilds
  the block from the first broadcast in 95 % of cases. For M > SMALL_M the rule of thumb
  M·p/(1−p) + 3·sqrt(M·p) + 2 holds that; for small blocks the reference code's
  parity lines (floor(M/2) draws, so one or two columns at M = 5) recover far worse than
  an ideal code, so the 95th percentile of what the code itself needs is measured by a
  seeded Monte-Carlo run of ``redundancy.needed_p95`` instead.
- Top-up: after a FragSessionStatus round, send what the worst node is estimated to
  still need, scaled by 1/(1−p) for the loss it will see again.
- Duty cycle: after a frame of airtime t a sub-band with duty cycle d stays silent for
  t·(1/d − 1) (ETSI EN 300 220 "Toff"), so at 10 % a 394 ms DR5 frame costs 3.9 s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ferry.proxy.lora.airtime import DATA_FRAGMENT_OVERHEAD, downlink_airtime, max_fragment_size
from ferry.proxy.lora.errors import ImageTooLarge
from ferry.proxy.lora.fragmentation import MAX_N
from ferry.proxy.lora.netserver import Clock
from ferry.proxy.lora.redundancy import SMALL_M, needed_p95

MAX_LOSS = 0.9


@dataclass(frozen=True)
class NodeLimits:
    """A node build's FragDecoder limits (None: not known, not enforced by ferry)."""

    max_frag_size: int | None = None  # FRAG_MAX_SIZE
    max_nb_frag: int | None = None  # FRAG_MAX_NB
    max_redundancy: int | None = None  # FRAG_MAX_REDUNDANCY: lost data fragments it recovers


STOCK_LIMITS = NodeLimits(50, 21, 5)  # LoRaMac-node FragDecoder.h as shipped


@dataclass(frozen=True)
class Plan:
    dr: int
    frag_size: int
    m: int
    padding: int
    redundancy: int
    airtime: float  # seconds on air per DataFragment frame

    @property
    def initial(self) -> int:
        return self.m + self.redundancy


def _clamp(p: float) -> float:
    return min(max(p, 0.0), MAX_LOSS)


P95_Z = 1.645
LARGE_M_SLACK = 2  # lines beyond M a large block needs at p95 (Monte-Carlo, M = 100..429)


def redundancy_for(m: int, loss: float) -> int:
    """Parity so that 95 % of nodes with independent loss p rebuild from the first round.

    Large M: the least n with n(1−p) − 1.645·sqrt(n·p(1−p)) >= M + 2 (the node must
    receive M + 2 of n; binomial p95 by the normal approximation), minus M; checked
    against the Monte-Carlo of the real code at M = 100, 200, 429 (within one fragment).
    """
    p = _clamp(loss)
    if m <= SMALL_M:
        return needed_p95(m, round(p, 3))
    n = math.ceil(m / (1 - p))
    while n * (1 - p) - P95_Z * math.sqrt(n * p * (1 - p)) < m + LARGE_M_SLACK:
        n += 1
    return n - m


TOP_UP_Z = 0.5  # a small margin: a second round of a few frames is cheaper than padding
RANK_SLACK = 1  # independent lines beyond the count: the code is not quite ideal


def top_up_for(missing: float, loss: float, spread: float | None = None) -> int:
    """Parity fragments to send when a node is estimated to need `missing` more.

    k frames deliver Binomial(k, 1−p); k is the least with k(1−p) − z·sd ≥ missing + slack,
    sd combining the delivery's sqrt(k·p(1−p)) with ``spread``, the uncertainty of the
    estimate itself (default sqrt(missing)). z = 0.5 was the best p95 of total fragments
    over z in 0..2 (bench/lora.py, 20 % loss on a plan for 10 %): a large margin pads
    every session, a small one costs an occasional round of a few frames.
    """
    if missing <= 0:
        return 0
    p = _clamp(loss)
    unc = math.sqrt(missing) if spread is None else spread
    k = max(1, math.ceil(missing / (1 - p)))
    while k * (1 - p) - TOP_UP_Z * math.sqrt(unc * unc + k * p * (1 - p)) < missing + RANK_SLACK:
        k += 1
    return k


def plan(image_len: int, dr: int, loss: float, *, frag_size: int | None = None,
         limits: NodeLimits | None = None) -> Plan:
    lim = limits or NodeLimits()
    size = frag_size or max_fragment_size(dr)
    size = min(size, max_fragment_size(dr))
    if lim.max_frag_size is not None:
        size = min(size, lim.max_frag_size)
    m = -(-image_len // size)
    if m == 1 and image_len >= 2:
        # The reference parity generator draws floor(M/2) = 0 columns for M = 1, so a
        # one-fragment block has no usable parity; two half-size fragments do.
        size = -(-image_len // 2)
        m = 2
    if lim.max_nb_frag is not None and m > lim.max_nb_frag:
        raise ImageTooLarge(
            f"{image_len} bytes need {m} fragments of {size} B, more than the nodes' "
            f"frag_max_nb = {lim.max_nb_frag} (FRAG_MAX_NB x FRAG_MAX_SIZE = "
            f"{lim.max_nb_frag * size} B per session); the node firmware needs a build with "
            "larger FragDecoder limits, or a smaller image")
    red = redundancy_for(m, loss)
    if m + red > MAX_N:
        raise ImageTooLarge(
            f"{image_len} bytes at DR{dr} need {m} + {red} fragments, more than TS004's "
            f"{MAX_N}; use a faster data rate or a smaller image"
        )
    airtime = downlink_airtime(size + DATA_FRAGMENT_OVERHEAD, dr)
    return Plan(dr, size, m, m * size - image_len, red, airtime)


def loss_from_status(m: int, last_index: int, missing: int) -> float:
    """Loss a node saw on the data fragments: MissingFrag over the data fragments up to
    the last index it heard (NbFragReceived is an index, not a count)."""
    seen = min(last_index, m)
    if seen <= 0:
        return 0.0
    return _clamp(min(missing, seen) / seen)


class DutyCycle:
    """Earliest time the sub-band may carry the next frame."""

    def __init__(self, duty: float, clock: Clock) -> None:
        if not 0 < duty <= 1:
            raise ValueError("duty cycle must be in (0, 1]")
        self.duty = duty
        self.clock = clock
        self.next_free = 0.0
        self.airtime = 0.0

    def off_time(self, airtime: float) -> float:
        return airtime * (1 / self.duty - 1)

    def record(self, airtime: float) -> None:
        start = max(self.clock.now(), self.next_free)
        self.next_free = start + airtime + self.off_time(airtime)
        self.airtime += airtime
