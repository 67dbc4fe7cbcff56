"""TS004 FragAlgo 0 decoder, as a node runs it (Annex A.2: incremental GF(2) elimination).

Each received fragment becomes an equation "XOR of the blocks in row = payload". Rows
are kept in echelon form keyed by their highest column; a new row is reduced against
them until it is zero (nothing new) or has a fresh highest column (rank + 1). When the
rank reaches M, back-substitution from the lowest column up yields the blocks.
"""

from __future__ import annotations


def matrix_row(idx: int, m: int) -> int:
    """Columns of coded fragment number `idx` (N - M, from 1) as a bit set, per Annex A."""
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


class BlockDecoder:
    def __init__(self, nb_frag: int, frag_size: int, padding: int) -> None:
        self.m = nb_frag
        self.size = frag_size
        self.padding = padding
        self.rows: dict[int, tuple[int, int]] = {}  # highest column -> (row, data)
        self.received: set[int] = set()

    @property
    def rank(self) -> int:
        return len(self.rows)

    @property
    def missing(self) -> int:
        return self.m - self.rank

    @property
    def complete(self) -> bool:
        return self.rank == self.m

    def add(self, n: int, payload: bytes) -> bool:
        """Take fragment N; True if it raised the rank."""
        if n < 1 or len(payload) != self.size or n in self.received:
            return False
        self.received.add(n)
        if self.complete:
            return False
        row = (1 << (n - 1)) if n <= self.m else matrix_row(n - self.m, self.m)
        data = int.from_bytes(payload, "big")
        while row:
            top = row.bit_length() - 1
            have = self.rows.get(top)
            if have is None:
                self.rows[top] = (row, data)
                return True
            row ^= have[0]
            data ^= have[1]
        return False

    def block(self) -> bytes:
        if not self.complete:
            raise ValueError(f"block not complete: {self.missing} fragments missing")
        solved: list[int] = [0] * self.m
        for col in range(self.m):
            row, data = self.rows[col]
            rest = row & ~(1 << col)
            while rest:
                low = rest & -rest
                data ^= solved[low.bit_length() - 1]
                rest ^= low
            solved[col] = data
        out = b"".join(v.to_bytes(self.size, "big") for v in solved)
        return out[: len(out) - self.padding] if self.padding else out
