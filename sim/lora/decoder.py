"""TS004 FragAlgo 0 decoder as LoRaMac-node's ``FragDecoder.c`` runs it, quirks included.

Written from LoRaMac-node ``src/apps/LoRaMac/common/LmHandler/packages/FragDecoder.c``
and ``FragDecoder.h`` (not from ferry's encoder):

- ``FragNbRx`` is set to the index N of every fragment processed (an index, not a count).
- A fragment with N below ``FragNbLastRx`` is dropped as out of order; after the first
  parity fragment ``FragNbLastRx`` is M + 1, so late data fragments are dropped.
- ``FragNbLost`` counts DATA fragments (N <= M) skipped over, when a later one arrives
  (``FragFindMissingFrags``); recovering them from parity never lowers it.
- On a parity fragment: if ``FragNbLost > FRAG_MAX_REDUNDANCY`` the decoder sets
  ``MatrixError`` and returns FRAG_SESSION_FINISHED (0), block not rebuilt. If nothing
  was lost it returns finished at once. Otherwise the line (``FragGetParityMatrixRow``:
  seed 1 + 1001·n, floor(M/2) PRBS-23 draws, ``(x >> 1) + (fb << 22)``) is reduced by
  the data it has and by the stored rows of the lost-fragment matrix (pivot = first lost
  ordinal set); a line that reduces to zero carries no information. When the stored rows
  number ``FragNbLost`` the lost fragments are solved and the session is finished.
- Once finished, ``LmhpFragmentation.c`` stops calling the decoder, so ``FragNbRx``
  freezes: that is what a server can see of completion in TS004 v1.
"""

from __future__ import annotations

from dataclasses import dataclass

ONGOING = -1
FINISHED = 0


def matrix_row(idx: int, m: int) -> int:
    """Columns of parity line `idx` (N - M, from 1) as a bit set (bit c = fragment c + 1)."""
    power_of_two = m > 0 and (m & (m - 1)) == 0
    modulus = m + (1 if power_of_two else 0)
    state = 1 + 1001 * idx
    row = 0
    draws = m // 2
    while draws > 0:
        draws -= 1
        col = 1 << 16
        while col >= m:
            feedback = (state & 0x1) ^ ((state & 0x20) >> 5)
            state = (state >> 1) + (feedback << 22)
            col = state % modulus
        row |= 1 << col
    return row


@dataclass(frozen=True)
class Limits:
    """FragDecoder.h build limits (None: no limit in this build)."""

    max_nb: int | None = None  # FRAG_MAX_NB
    max_size: int | None = None  # FRAG_MAX_SIZE
    max_redundancy: int | None = None  # FRAG_MAX_REDUNDANCY


STOCK = Limits(21, 50, 5)  # FragDecoder.h as LoRaMac-node ships it


class RefDecoder:
    """One session's FragDecoder state."""

    def __init__(self, nb_frag: int, frag_size: int, padding: int, limits: Limits) -> None:
        self.m = nb_frag
        self.size = frag_size
        self.padding = padding
        self.max_red = limits.max_redundancy
        self.nb_rx = 0  # FragNbRx
        self.last_rx = 0  # FragNbLastRx
        self.lost = 0  # FragNbLost
        self.matrix_error = False
        self.data: list[int | None] = [None] * nb_frag
        self.lost_cols: list[int] = []  # 0-based data index of lost ordinal k
        self.rows: dict[int, tuple[int, int]] = {}  # pivot ordinal -> (ordinal bits, data)
        self.rebuilt = False

    def _find_missing(self, counter: int) -> None:
        i = self.last_rx
        while i < counter - 1:
            if i < self.m:
                self.lost += 1
                self.lost_cols.append(i)
            i += 1
        self.last_rx = counter if i < self.m else self.m + 1

    def process(self, n: int, payload: bytes) -> int:
        """FragDecoderProcess: ONGOING, or >= 0 when the session is finished."""
        self.nb_rx = n
        if n < self.last_rx:
            return ONGOING  # "Drop frame out of order"
        value = int.from_bytes(payload, "big")
        if n <= self.m:
            self.data[n - 1] = value
            self._find_missing(n)
            return ONGOING
        if self.max_red is not None and self.lost > self.max_red:
            self.matrix_error = True
            return FINISHED
        self._find_missing(n)
        if self.lost == 0:
            self.rebuilt = True
            return FINISHED
        line = matrix_row(n - self.m, self.m)
        ordinal = {c: k for k, c in enumerate(self.lost_cols)}
        bits = 0
        while line:
            low = line & -line
            col = low.bit_length() - 1
            line ^= low
            if col in ordinal:
                bits |= 1 << ordinal[col]
            else:
                value ^= self.data[col] or 0
        while bits:
            pivot = (bits & -bits).bit_length() - 1
            have = self.rows.get(pivot)
            if have is None:
                self.rows[pivot] = (bits, value)
                break
            bits ^= have[0]
            value ^= have[1]
        if len(self.rows) == self.lost:
            self._solve()
            self.rebuilt = True
            return self.lost
        return ONGOING

    def _solve(self) -> None:
        solved: dict[int, int] = {}
        for pivot in sorted(self.rows, reverse=True):
            bits, value = self.rows[pivot]
            rest = bits & ~(1 << pivot)
            while rest:
                low = rest & -rest
                value ^= solved[low.bit_length() - 1]
                rest ^= low
            solved[pivot] = value
        for k, col in enumerate(self.lost_cols):
            self.data[col] = solved[k]

    def block(self) -> bytes:
        out = b"".join((v or 0).to_bytes(self.size, "big") for v in self.data)
        return out[: len(out) - self.padding] if self.padding else out
